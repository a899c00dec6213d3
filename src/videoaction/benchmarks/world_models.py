"""`videoaction bench --world-models`: HMA-tiny (discrete, continuous) vs UVA-tiny vs copy-last-frame as video
world models on held-out episodes of three scripted embodiments (PushT, PushT-M, Metaworld), one protocol for all.

Stages (each resumable: a re-run with the same ``--out`` skips what is finished):

1. demonstrations of every embodiment (the scripted experts);
2. tokenizers, not part of any model's budget: one LFQ tokenizer (HMA's discrete ids) and one small autoencoder
   (HMA's continuous latents, the same 8 x 8 grid) fitted on the frames of all embodiments at ``image_size``, as
   HMA shares one tokenizer across embodiments; UVA-tiny's own autoencoder (4 x 4 latents) fitted on each
   embodiment's frames, as UVA is trained. Each model's tokenizer ceiling is reported beside its scores;
3. token datasets (``encode --format hma``, ids and latents) and UVA's latent caches;
4. training side by side, the same CPU budget per family: HMA-disc and HMA-cont are one model each for all
   embodiments (``minutes``); UVA-tiny has no embodiment conditioning, so it is one model per embodiment
   (``minutes / n_embodiments`` each). HMA uses UVA's frame timing: frame stride 4, 4 prompt + 4 predicted frames;
5. :mod:`videoaction.eval.world_model_compare` on the same held-out clips (the project's episode split, so no model
   trained on them): PSNR / SSIM against the real frames at one resolution, ΔPSNR, seconds per frame and each
   tokenizer's ceiling; and the playground's predicted frames per second with the HMA-disc model on PushT.

``OUT/world_models.json`` holds everything; ``OUT/world_models.md`` the table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from videoaction.benchmarks.targets import METAWORLD_EASY, _demos_job, _latents_job, _pool, _threads
from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_json

UVA_PRESET = "uva-tiny"


@dataclass
class WorldModelSizes:
    minutes: float = 30.0  # training wall-clock per family (UVA: split equally over its per-embodiment models)
    embodiments: tuple[str, ...] = ("pusht", "pusht-m", "metaworld")
    episodes: tuple[int, ...] = (100, 40, 30)  # demonstrations per embodiment (Metaworld: per task)
    tasks: tuple[tuple[str, tuple[str, ...]], ...] = (("metaworld", METAWORLD_EASY),)  # (embodiment, its tasks)
    playground: str | None = "pusht"  # the embodiment whose simulator the playground drives (None: not measured)
    image_size: int = 64
    lfq_steps: int = 1500
    ae_steps: int = 800  # HMA-cont's shared autoencoder
    uva_ae_steps: int = 600  # UVA-tiny's per-embodiment autoencoders (as bench --targets)
    hma_ae_stride: int = 8  # HMA-cont's shared autoencoder: the LFQ tokenizer's grid (8 x 8 at 64 px)
    val_ratio: float = 0.1  # held-out share of every store's episodes (every model holds out the same ones)
    eval_windows: int = 16  # clips per embodiment
    batch_size: int = 16
    threads: int | None = 1  # torch threads per process
    workers: int = 2  # processes side by side
    seed: int = 0
    smoke: bool = False  # shrink the networks (tests)


QUICK = WorldModelSizes(minutes=0.3, episodes=(4, 4, 2), tasks=(("metaworld", ("drawer-open",)),), lfq_steps=4,
                        ae_steps=4,
                        uva_ae_steps=4, val_ratio=0.34, eval_windows=3, batch_size=4, smoke=True)


# ----------------------------------------------------------------------------------------------- workers
def _lfq_job(stores: list[str], out: str, sizes: WorldModelSizes) -> dict:
    from videoaction.nn.tokenizer.lfq import tiny_lfq_config
    from videoaction.train.lfq_tokenizer import train_lfq

    _threads(sizes.threads)
    cfg_path = Path(out) / "lfq.json"
    if cfg_path.is_file() and "report" in json.loads(cfg_path.read_text()):
        return {"path": out, "reused": True, **json.loads(cfg_path.read_text())["report"]}
    report = train_lfq(stores, out, tiny_lfq_config(base_channels=8 if sizes.smoke else 32), steps=sizes.lfq_steps,
                       batch_size=sizes.batch_size, image_size=sizes.image_size, seed=sizes.seed, progress=False,
                       log=None)
    return {"path": out, **report}


def _ae_job(stores: list[str], out: str, sizes: WorldModelSizes, steps: int, stride: int | None = None) -> dict:
    """The small autoencoder on ``stores``: UVA-tiny's configuration, at ``stride`` when given."""
    from videoaction.config import get_preset
    from videoaction.train.tokenizer import train_tokenizer

    _threads(sizes.threads)
    cfg_path = Path(out) / "tokenizer.json"
    if cfg_path.is_file():
        info = json.loads(cfg_path.read_text())
        return {"path": out, "reused": True, "psnr_val": info.get("psnr_val")}
    res: list = []
    cfg = get_preset(UVA_PRESET).model.tokenizer
    cfg = replace(cfg, stride=stride) if stride else cfg
    train_tokenizer(stores, out, cfg, steps=steps,
                    batch_size=sizes.batch_size, image_size=sizes.image_size, seed=sizes.seed, progress=False,
                    log=None, result=res)
    return {"path": out, "psnr_val": res[0].psnr_val}


def _tokens_job(store: str, out: str, tokenizer: str, name: str, sizes: WorldModelSizes) -> dict:
    from videoaction.data.hma_tokens import encode_store, is_complete

    _threads(sizes.threads)
    if not is_complete(out):
        encode_store(store, out, tokenizer, image_size=sizes.image_size, crop_ratio=1.0, name=name, progress=False,
                     log=lambda m: None)
    return {"path": out}


def _train_job(cfg, minutes: float, threads) -> dict:
    from videoaction.eval.curves import train_with_curve
    from videoaction.train.trainer import TrainOptions

    _threads(threads)
    log_path = Path(cfg.out) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        with open(log_path, "a") as f:
            f.write(msg + "\n")

    point = train_with_curve(cfg, minutes, 1, TrainOptions(progress=False, log=log), log=log)[-1]
    return {"checkpoint": point["checkpoint"], "step": point["step"], "minutes": minutes}


def _eval_job(family: str, checkpoint: str, stores: dict, tokens: dict | None, tokenizer: str, sizes) -> dict:
    """Scores of one trained model on every embodiment it knows (HMA: all; UVA: ``stores`` holds its one)."""
    from videoaction.data.hma_tokens import TokenDataset
    from videoaction.data.store import EpisodeStore
    from videoaction.eval import world_model_compare as W
    from videoaction.eval.video_eval import held_out_episodes
    from videoaction.generate import build_decoder
    from videoaction.models.base import load_policy

    _threads(sizes.threads)
    proto = W.ClipProtocol(image_size=sizes.image_size)
    policy = load_policy(checkpoint)
    out = {}
    for name, path in stores.items():
        store = EpisodeStore.open(path)
        wins = W.clip_windows(store, held_out_episodes(store.n_episodes, policy.cfg.dataset), proto,
                              sizes.eval_windows)
        real = W.ground_truth(store, wins, proto)
        if family == "uva":
            res = W.uva_clips(policy, store, wins, proto, real, seed=sizes.seed)
        else:
            decode = build_decoder(tokenizer, family == "hma-disc", policy.mcfg.latent_scale)
            res = W.hma_clips(policy, TokenDataset(tokens[name], name=name), name, wins, proto, real, decode,
                              seed=sizes.seed)
        res.pop("frames")
        out[name] = {**res, "ceiling_psnr": W.tokenizer_ceiling(tokenizer, real, proto),
                     "copy_last": W.copy_last(real, proto), "windows": [list(w) for w in wins]}
    return out


def _playground_job(checkpoint: str, store: str, domain: str, tokenizer: str, sizes, steps: int = 40) -> dict:
    """Predicted frames per second of the playground with the HMA-disc model (in process: simulator steps, one
    model step, decoding and PNG encoding; no browser or HTTP), from a held-out episode of ``domain``."""
    from videoaction.data.store import EpisodeStore
    from videoaction.eval.video_eval import held_out_episodes
    from videoaction.models.base import load_policy
    from videoaction.playground import Playground

    _threads(sizes.threads)
    policy = load_policy(checkpoint)
    episode = held_out_episodes(EpisodeStore.open(store).n_episodes, policy.cfg.dataset)[0]
    pg = Playground(policy, store, episode=episode, domain=domain, env=domain, tokenizer=tokenizer)
    keys = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"]
    pg.step("none")  # warm-up
    t0 = time.perf_counter()
    views = [pg.step(keys[(i // 10) % 4]) for i in range(steps)]
    seconds = time.perf_counter() - t0
    return {"fps": steps / seconds, "ms_per_step": 1000 * seconds / steps, "steps": steps,
            "embodiment": domain, "sim_steps_per_frame": policy.mcfg.domain(domain).stride,
            "psnr_vs_simulator": float(sum(v["psnr"] for v in views) / steps)}


# ----------------------------------------------------------------------------------------------- configs
def hma_config(variant: str, tokens: dict, action_dims: dict, out: str, sizes: WorldModelSizes,
               tokenizer: str | None = None):
    from videoaction.config import get_preset
    from videoaction.eval.world_model_compare import ClipProtocol
    from videoaction.models.hma.config import DomainConfig

    proto = ClipProtocol(image_size=sizes.image_size)  # UVA's frame timing, which the scoring uses
    cfg = get_preset(f"hma-tiny-{variant[:4]}")
    m = cfg.model
    m.domains = tuple(DomainConfig(n, action_dims[n], proto.stride) for n in tokens)
    m.window, m.num_prompt_frames = proto.n_prompt + proto.n_future, proto.n_prompt
    m.tokenizer = tokenizer  # recorded for generate / the playground
    cfg.data = ",".join(f"{n}={p}" for n, p in tokens.items())
    cfg.out, cfg.seed, cfg.log_every = out, sizes.seed, 50
    cfg.optim.batch_size = sizes.batch_size
    cfg.dataset.val_ratio = sizes.val_ratio
    if sizes.smoke:
        m.d_model, m.num_layers, m.num_heads = 32, 1, 2
        m.diff_head = replace(m.diff_head, width=32, depth=1)
    return cfg


def uva_config(latents: str, tokenizer: str, out: str, sizes: WorldModelSizes):
    from videoaction.benchmarks.targets import TargetSizes, run_config

    cfg = run_config(UVA_PRESET, latents, out, TargetSizes(batch_size=sizes.batch_size, seed=sizes.seed,
                                                           smoke=sizes.smoke), tokenizer)
    cfg.dataset.val_ratio = sizes.val_ratio
    return cfg


# ----------------------------------------------------------------------------------------------- stages
def run_world_models(out: Path, sizes: WorldModelSizes | None = None, log=print) -> dict:
    """Every stage; writes and returns ``OUT/world_models.json``'s content."""
    from videoaction.data.store import EpisodeStore

    sizes = sizes or WorldModelSizes()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(sizes.embodiments)
    t: dict = {}
    summary: dict = {"sizes": asdict(sizes), "stage_s": t}

    t0 = time.perf_counter()
    log(f"1/5 demonstrations: {', '.join(names)}")
    with _pool(min(sizes.workers, len(names))) as pool:
        futs = {n: pool.submit(_demos_job, n, str(out / "demos" / f"{n}.zarr"), k, sizes.seed,
                               dict(sizes.tasks).get(n), sizes.threads)
                for n, k in zip(names, sizes.episodes)}
        demos = {n: f.result() for n, f in futs.items()}
    stores = {n: d["path"] for n, d in demos.items()}
    action_dims = {n: int(EpisodeStore.open(p).spec("action")[0][0]) for n, p in stores.items()}
    t["demos"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("2/5 tokenizers on the frames of every embodiment: LFQ (HMA-disc) and the small autoencoder (UVA, HMA-cont)")
    with _pool(sizes.workers) as pool:
        f_lfq = pool.submit(_lfq_job, list(stores.values()), str(out / "lfq"), sizes)
        f_ae = pool.submit(_ae_job, list(stores.values()), str(out / "ae"), sizes, sizes.ae_steps, sizes.hma_ae_stride)
        f_own = {n: pool.submit(_ae_job, [stores[n]], str(out / f"ae-{n}"), sizes, sizes.uva_ae_steps) for n in names}
        lfq, ae = f_lfq.result(), f_ae.result()
        uva_tok = {n: f.result() for n, f in f_own.items()}
    summary["tokenizers"] = {"lfq": lfq, "ae": ae, **{f"ae-{n}": uva_tok[n] for n in names}}
    t["tokenizers"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("3/5 token datasets (ids, latents) and UVA latent caches")
    with _pool(sizes.workers) as pool:
        futs = {(kind, n): pool.submit(_tokens_job, stores[n], str(out / "tokens" / kind / n), tok, n, sizes)
                for kind, tok in (("disc", lfq["path"]), ("cont", ae["path"])) for n in names}
        futs.update({("latents", n): pool.submit(_latents_job, UVA_PRESET, stores[n], uva_tok[n]["path"],
                                                 str(out / "latents" / f"{n}.zarr"), sizes.threads) for n in names})
        data = {k: f.result()["path"] for k, f in futs.items()}
    t["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_uva = sizes.minutes / len(names)
    jobs = {"hma-disc": (hma_config("discrete", {n: data[("disc", n)] for n in names}, action_dims,
                                    str(out / "runs" / "hma-disc"), sizes, lfq["path"]), sizes.minutes),
            "hma-cont": (hma_config("continuous", {n: data[("cont", n)] for n in names}, action_dims,
                                    str(out / "runs" / "hma-cont"), sizes, ae["path"]), sizes.minutes)}
    for n in names:
        cfg = uva_config(data[("latents", n)], uva_tok[n]["path"], str(out / "runs" / f"uva-{n}"), sizes)
        jobs[f"uva/{n}"] = (cfg, per_uva)
    log(f"4/5 training, {sizes.workers} side by side: HMA-disc and HMA-cont {sizes.minutes:g} min each (all "
        f"embodiments), UVA-tiny {per_uva:g} min per embodiment")
    with _pool(sizes.workers) as pool:
        futs = {k: pool.submit(_train_job, cfg, minutes, sizes.threads) for k, (cfg, minutes) in jobs.items()}
        runs = {k: f.result() for k, f in futs.items()}
    summary["runs"] = runs
    t["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("5/5 the same held-out clips for every model")
    with _pool(sizes.workers) as pool:
        futs = {"hma-disc": pool.submit(_eval_job, "hma-disc", runs["hma-disc"]["checkpoint"], stores,
                                        {n: data[("disc", n)] for n in names}, lfq["path"], sizes),
                "hma-cont": pool.submit(_eval_job, "hma-cont", runs["hma-cont"]["checkpoint"], stores,
                                        {n: data[("cont", n)] for n in names}, ae["path"], sizes)}
        for n in names:
            futs[f"uva/{n}"] = pool.submit(_eval_job, "uva", runs[f"uva/{n}"]["checkpoint"], {n: stores[n]}, None,
                                           uva_tok[n]["path"], sizes)
        play = sizes.playground if sizes.playground in stores else None
        if play:
            f_play = pool.submit(_playground_job, runs["hma-disc"]["checkpoint"], stores[play], play, lfq["path"],
                                 sizes)
        scores = {k: f.result() for k, f in futs.items()}
        if play:
            summary["playground"] = f_play.result()
    t["evaluation"] = time.perf_counter() - t0
    summary["scores"] = {n: {"copy-last-frame": scores["hma-disc"][n]["copy_last"],
                             "uva-tiny": _strip(scores[f"uva/{n}"][n]),
                             "hma-tiny-disc": _strip(scores["hma-disc"][n]),
                             "hma-tiny-cont": _strip(scores["hma-cont"][n])} for n in names}
    summary["windows"] = {n: scores["hma-disc"][n]["windows"] for n in names}
    for n in names:  # every model was scored on the same clips
        if any(scores[k][n]["windows"] != summary["windows"][n] for k in ("hma-cont", f"uva/{n}")):
            raise VideoActionError(f"{n}: the models were scored on different clips (their held-out episodes "
                                   f"differ); check dataset.val_ratio / split_seed")
    summary["table"] = table(summary)
    atomic_write_json(out / "world_models.json", summary)
    (out / "world_models.md").write_text(markdown(summary))
    return summary


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("copy_last", "windows")}


def table(summary: dict) -> list[dict]:
    rows = []
    for emb, models in summary["scores"].items():
        for model, m in models.items():
            rows.append({"embodiment": emb, "model": model, "psnr": m["psnr"], "ssim": m["ssim"],
                         "delta_psnr": m.get("delta_psnr", 0.0), "s_per_frame": m.get("s_per_frame", 0.0),
                         "ceiling_psnr": m.get("ceiling_psnr"), "steps": _steps(summary, model, emb)})
    return rows


def _steps(summary: dict, model: str, emb: str):
    key = {"uva-tiny": f"uva/{emb}", "hma-tiny-disc": "hma-disc", "hma-tiny-cont": "hma-cont"}.get(model)
    return summary["runs"][key]["step"] if key else None


def markdown(summary: dict) -> str:
    s = summary["sizes"]
    lines = [f"HMA-tiny vs UVA-tiny vs copy-last-frame, {s['eval_windows']} held-out clips per embodiment, 4 prompt "
             f"frames then 4 predicted, 4 steps apart, scored against the real frames at {s['image_size']} px. "
             f"Budget per family {s['minutes']:g} min.", "",
             "| embodiment | model | PSNR (dB) | SSIM | ΔPSNR (dB) | s / frame | tokenizer ceiling (dB) | steps |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["table"]:
        ceil = "" if r["ceiling_psnr"] is None else f"{r['ceiling_psnr']:.2f}"
        lines.append(f"| {r['embodiment']} | {r['model']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['delta_psnr']:+.2f} "
                     f"| {r['s_per_frame']:.4f} | {ceil} | {r['steps'] or ''} |")
    if "playground" in summary:
        p = summary["playground"]
        lines += ["", f"Playground (HMA-tiny-disc on {p['embodiment']}, in process): {p['fps']:.1f} predicted "
                      f"frames / s ({p['ms_per_step']:.0f} ms per step of {p['sim_steps_per_frame']} simulator steps); mean "
                      f"PSNR to the simulator's frame {p['psnr_vs_simulator']:.1f} dB over {p['steps']} steps."]
    return "\n".join(lines) + "\n"


def print_world_models(summary: dict) -> None:
    print(markdown(summary))


