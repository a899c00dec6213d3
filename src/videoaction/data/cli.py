"""`videoaction data info PATH` (what a store or a foreign dataset holds) and `videoaction data convert SRC DST`."""

from __future__ import annotations

import argparse
import json

import numpy as np

from videoaction.data.store import EpisodeStore


def store_info(store: EpisodeStore) -> dict:
    lengths = store.episode_lengths
    info = {
        "path": str(store.path),
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "episode_length": ({"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
                           if len(lengths) else None),
        "data": {},
        "meta": {},
        "attrs": store.attrs,
    }
    for key in store.keys:
        arr = store.array(key)
        info["data"][key] = {"shape": [store.n_steps, *arr.shape[1:]], "dtype": str(arr.dtype),
                             "chunks": list(arr.chunks), "compressor": str(arr.compressor)}
    for name in store.meta_keys:
        col = store.meta_column(name)
        entry: dict = {"dtype": str(col.dtype)}
        if col.dtype == object or col.dtype.kind in "US":
            values, counts = np.unique(col.astype(str), return_counts=True)
            entry["distinct"] = int(len(values))
            entry["top"] = {str(v): int(c) for v, c in sorted(zip(values, counts), key=lambda t: -t[1])[:5]}
        elif col.dtype == bool:
            entry["true_fraction"] = float(col.mean()) if len(col) else None
        elif len(col):
            entry.update(min=col.min().item(), max=col.max().item())
        info["meta"][name] = entry
    return info


def print_info(info: dict) -> None:
    print(f"store    {info['path']}")
    print(f"episodes {info['episodes']}   steps {info['steps']}")
    if info["episode_length"]:
        el = info["episode_length"]
        print(f"episode length  min {el['min']}  mean {el['mean']:.1f}  max {el['max']}")
    print("data:")
    for key, d in info["data"].items():
        print(f"  {key:<14} {str(tuple(d['shape'])):<22} {d['dtype']:<8} chunks {tuple(d['chunks'])}")
    if info["meta"]:
        print("per-episode metadata:")
        for name, m in info["meta"].items():
            rest = {k: v for k, v in m.items() if k != "dtype"}
            print(f"  {name:<14} {m['dtype']:<8} {json.dumps(rest, default=str)}")
    if info["attrs"]:
        print("attributes:")
        for k, v in info["attrs"].items():
            text = json.dumps(v, default=str)
            print(f"  {k}: {text if len(text) < 100 else text[:97] + '...'}")


def add_convert_parser(sub) -> None:
    from videoaction.data.formats import FORMATS

    p = sub.add_parser("convert", help="convert a dataset (LeRobot, robomimic, LIBERO, UMI, CALVIN, RLDS, store) "
                       "into an episode store or a LeRobot dataset; resumable")
    p.add_argument("src", help="dataset to read (folder or file)")
    p.add_argument("dst", help="output: a zarr store folder (--to store) or a LeRobot dataset folder (--to lerobot)")
    p.add_argument("--from", dest="src_format", choices=[*FORMATS, "store"], default=None,
                   help="source format (default: detected from the path)")
    p.add_argument("--to", choices=["store", *[n for n, spec in FORMATS.items() if spec.writer]], default="store")
    p.add_argument("--episodes", metavar="FILE", help="convert only these episode indices (JSON list or one per "
                   "line, like UVA's used_episode_indices_file)")
    p.add_argument("--fps", type=float, help="frame rate when the source does not record one (default 10)")
    p.add_argument("--lerobot-version", choices=["v3.0", "v2.1"], default="v3.0")
    p.add_argument("--vcodec", choices=["libsvtav1", "h264", "hevc"], help="video codec of --to lerobot "
                   "(default libsvtav1, LeRobot's; h264 encodes faster on a CPU)")
    p.add_argument("--allow-pickle", action="store_true", help="CALVIN: load lang_annotations/auto_lang_ann.npy, "
                   "a pickled dict (only for files you trust)")
    p.add_argument("--split", help="CALVIN: 'episodes' (ep_start_end_ids.npy) or 'language' (annotated windows); "
                   "RLDS: the split to read (default train)")
    p.add_argument("--filter-key", help="robomimic / LIBERO: only the demos listed in mask/<filter_key>")
    p.add_argument("--absolute-actions", action="store_true", help="LIBERO: UVA's absolute convention (10-d "
                   "pos + rot6d + gripper actions, vertically flipped images)")
    p.add_argument("--action-rot6d", action="store_true", help="robomimic: absolute pose actions -> 10-d "
                   "(pos, 6-d rotation, gripper), as Diffusion Policy's abs_action loaders")
    p.add_argument("--action-latency-steps", type=int, help="UMI: action = the pose this many steps later")
    p.add_argument("--obs-latency-steps", type=int, help="UMI: state = the pose this many steps later")
    p.add_argument("--no-progress", action="store_true")


def run_convert(args) -> int:
    from videoaction.data.formats import read_episode_list
    from videoaction.data.formats.convert import convert

    options = {k: v for k, v in (("allow_pickle", args.allow_pickle or None), ("split", args.split),
                                  ("filter_key", args.filter_key), ("absolute_actions", args.absolute_actions or None),
                                  ("action_rot6d", args.action_rot6d or None),
                                  ("action_latency_steps", args.action_latency_steps),
                                  ("obs_latency_steps", args.obs_latency_steps)) if v is not None}
    target = {"version": args.lerobot_version, "vcodec": args.vcodec} if args.to == "lerobot" else {}
    episodes = read_episode_list(args.episodes) if args.episodes else None
    summary = convert(args.src, args.dst, src_format=args.src_format, to=args.to, episodes=episodes, fps=args.fps,
                      progress=not args.no_progress, target_options=target, **options)
    print(f"wrote {summary['dst']}: {summary['episodes']} episodes ({summary['frames']} frames converted now, "
          f"resumed at episode {summary['resumed_at']}), {summary['frames_per_s']:.0f} frames/s")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="videoaction data", description="Inspect and convert datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    p_info = sub.add_parser("info", help="episodes, keys, shapes, dtypes, episode lengths, metadata")
    p_info.add_argument("path", help="an episode store, or a dataset in a supported format (LeRobot, UMI, ...)")
    p_info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    if args.action == "convert":
        return run_convert(args)
    info = store_info(EpisodeStore.open(args.path))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_info(info)
    return 0
