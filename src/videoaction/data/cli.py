"""`videoaction data info PATH`: what a store holds (episodes, keys, shapes, dtypes, lengths, metadata)."""

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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="videoaction data", description="Inspect episode stores.")
    sub = parser.add_subparsers(dest="action", required=True)
    p_info = sub.add_parser("info", help="episodes, keys, shapes, dtypes, episode lengths, metadata")
    p_info.add_argument("path")
    p_info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    info = store_info(EpisodeStore.open(args.path))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_info(info)
    return 0
