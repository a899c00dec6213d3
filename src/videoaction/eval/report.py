"""Self-contained HTML report of a run: ``report.html`` plus its mp4 / png files in one directory.

Sections: headline table (model next to baselines), success per task and per seed, rollout videos, predicted-vs-real
video grids, training curves (from a run's ``metrics.jsonl``), the run config, versions and protocol.
No external CSS / JS / fonts: the directory can be copied or zipped as is.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_bytes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.ok{color:#0a7d27;font-weight:600}.bad{color:#b3261e}
.media{display:flex;flex-wrap:wrap;gap:12px}.media figure{margin:0}
video,img.frame{image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.8em;color:#555}img{max-width:100%}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
.note{color:#555;font-size:.9em}
"""

# Marks how many images / videos actually decoded (body data-images-loaded / data-videos-loaded = "ok/total"),
# so a headless browser check can tell a broken media file from a working one.
MEDIA_CHECK_JS = """
window.addEventListener('load',function(){var b=document.body;
var im=Array.prototype.slice.call(document.images);
b.dataset.imagesLoaded=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length+'/'+im.length;
var vs=Array.prototype.slice.call(document.querySelectorAll('video'));var n=0;
function upd(){b.dataset.videosLoaded=n+'/'+vs.length;}
vs.forEach(function(v){if(v.readyState>=1&&v.videoWidth>0){n++;}else{v.addEventListener('loadedmetadata',
function(){if(v.videoWidth>0){n++;upd();}});}});upd();});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    if v is None:
        return "–"
    return str(v)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, cls: str = "") -> str:
    """A <table> from a list of dicts (columns: union of keys in order unless given)."""
    if not rows:
        return "<p class='note'>(no rows)</p>"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{_e(c)}</th>" for i, c in enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(columns):
            v = r.get(c)
            klass = "l" if i == 0 or isinstance(v, str) else ""
            if isinstance(v, bool):
                klass += " ok" if v else " bad"
            text = v[5:] if isinstance(v, str) and v.startswith("html:") else _e(_fmt(v))
            cells.append(f"<td class='{klass.strip()}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metric_labels(res: Mapping[str, Any]) -> dict[str, str]:
    """Metric key -> column label, in order: the environment's (results' ``metric_labels``, from its EnvSpec), or
    for results without them every scalar headline metric under its own name."""
    if res.get("metric_labels"):
        return dict(res["metric_labels"])
    m = res.get("metrics", {})
    return {k: k.replace("_", " ") for k, v in m.items()
            if k != "n_episodes" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _headline_rows(runs: Sequence[Mapping[str, Any]], baselines: Mapping[str, Mapping[str, Any]] | None) -> list[dict]:
    """One row per evaluated policy; baselines grouped under the model row of the same environment."""
    named = [(r.get("name") or r.get("policy") or "model", r) for r in runs]
    base = list((baselines or {}).items())
    envs = list(dict.fromkeys([r.get("env") for _, r in named] + [r.get("env") for _, r in base]))
    rows = []
    for env in envs:
        for name, res in [x for x in named if x[1].get("env") == env] + [x for x in base if x[1].get("env") == env]:
            m = res.get("metrics", {})
            row = {"policy": name, "env": env, "episodes": m.get("n_episodes")}
            row.update({label: m.get(k) for k, label in _metric_labels(res).items() if k in m})
            obs = res.get("observation") or {}
            if obs.get("privileged_state"):
                row["observation"] = "privileged state"
            rows.append(row)
    return rows


def _episode_rows(task_res: Mapping[str, Any], columns: Mapping[str, str] | None = None) -> list[dict]:
    """Per-episode rows; ``columns``: the environment's extra per-episode keys -> labels (results'
    ``episode_columns``)."""
    rows = []
    for ep in task_res.get("episodes", []):
        row = {"seed": ep["seed"], "success": bool(ep["success"]), "steps": ep["steps"]}
        row.update({label: ep[k] for k, label in (columns or {}).items() if ep.get(k) is not None})
        row["max reward"] = ep.get("max_reward")
        if ep.get("video"):
            row["video"] = f"html:<a href='{_e(ep['video'])}'>mp4</a>"
        rows.append(row)
    return rows


def _copy_media(rel: str, src_root: Path | None, out_dir: Path) -> str | None:
    """Make sure ``out_dir/rel`` exists (copy from ``src_root`` when the results live elsewhere)."""
    dst = out_dir / rel
    if dst.is_file():
        return rel
    if src_root is not None and (src_root / rel).is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_root / rel, dst)
        return rel
    return None


def _find_metrics_files(run_dir: Path) -> list[Path]:
    if (run_dir / "metrics.jsonl").is_file():
        return [run_dir / "metrics.jsonl"]
    return sorted(p for p in run_dir.glob("*/metrics.jsonl"))[:4] + sorted(run_dir.glob("*/*/metrics.jsonl"))[:4]


def read_metrics_jsonl(path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (one JSON object per line; malformed / truncated lines are skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.append(rec)
    return out


def plot_training_curves(records: Sequence[Mapping[str, Any]], path, title: str = "") -> Path | None:
    """PNG of every numeric series (loss first) against ``step``; log-scale y for losses. None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys(k for r in records for k in r)
            if k != "step" and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                   for r in records)]
    def rank(k: str) -> tuple:
        return (k != "loss", "loss" not in k, k not in ("dp_score", "success_rate"), k != "lr", k)

    skip = {"epoch", "time", "wall_s", "elapsed_s", "samples", "samples_per_s", "ema_decay", "lr_scale", "n_episodes",
            "mode", "mask_ratio"}
    keys = sorted((k for k in keys if k not in skip), key=rank)[:6]
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, lw=1.2, marker="o" if len(xs) < 30 else None, ms=3)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ("loss" in k or k == "lr") and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{_e(anchor)}'><h2>{_e(title)}</h2>{body}</section>"


def _normalise_extra(extra_sections) -> list[tuple[str, str]]:
    """Accept [(title, html)], [{"title", "html"}] or [{"title", "table": rows}] ({"text": ...} is escaped)."""
    out = []
    for s in extra_sections or []:
        if isinstance(s, (tuple, list)) and len(s) == 2:
            out.append((str(s[0]), str(s[1])))
        elif isinstance(s, Mapping) and "title" in s:
            body = ""
            if "text" in s:
                body += f"<p>{_e(s['text'])}</p>"
            if "table" in s:
                body += html_table(s["table"])
            if "html" in s:
                body += str(s["html"])
            out.append((str(s["title"]), body))
        else:
            raise VideoActionError(f"extra_sections: expected (title, html) or a dict with 'title', got {s!r}")
    return out


def write_report(out_dir, results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, run_dir=None,
                 extra_sections: Iterable = (), baselines: Mapping[str, Mapping[str, Any]] | None = None,
                 video_results: Mapping[str, Any] | None = None,
                 title: str | None = None, media_root=None, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` (+ PNG curves) and return its path.

    ``results``: :func:`~videoaction.eval.runner.evaluate_policy` output, or a list of them (several envs), or
    None for a video-only report;
    ``baselines``: name -> results of baseline policies (shown in the headline table); ``video_results``:
    :func:`~videoaction.eval.video_eval.evaluate_video` output; ``run_dir``: a training run directory (its
    ``metrics.jsonl`` files become curves, its ``config.json`` the config section); ``media_root``: where the
    results' relative video/grid paths live if not in ``out_dir`` (they are copied); ``extra_sections``: see
    :func:`_normalise_extra`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(media_root) if media_root is not None else None
    parts: list[str] = []
    if results is None:
        runs: list[dict] = []
    elif isinstance(results, Mapping):
        runs = [dict(results)]
    else:
        runs = [dict(r) for r in results]
    res = runs[0] if runs else {}
    envs = ", ".join(dict.fromkeys(str(r.get("env")) for r in runs)) or (video_results or {}).get("data", "")
    heading = title or f"videoaction report — {envs}"
    toc: list[tuple[str, str]] = []

    def add(t: str, body: str, anchor: str) -> None:
        toc.append((anchor, t))
        parts.append(_section(t, body, anchor))

    if runs or baselines:
        body = html_table(_headline_rows(runs, baselines), cls="headline")
        defs = {k: v for r in runs for k, v in (r.get("metric_definitions") or {}).items()}
        if defs:
            items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in defs.items())
            body += f"<ul class='note'>{items}</ul>"
        add("Headline", body, "headline")
    if video_results:
        vm = video_results.get("table") or []
        body = html_table(vm, cls="video-metrics")
        for note in video_results.get("notes", []):
            body += f"<p class='note'>{_e(note)}</p>"
        add("Video and dynamics metrics (held-out episodes)", body, "video-metrics")
    body, figs = "", []
    for r in runs:
        tasks = r.get("tasks") or {}
        label = f"{r.get('name') or r.get('policy') or 'model'} — " if len(runs) > 1 else ""
        if len(tasks) > 1:
            body += f"<h3>{_e(label)}per task</h3>" + html_table(
                [{"task": k, **dict(t["metrics"])} for k, t in tasks.items()], cls="per-task")
        for task, t in tasks.items():
            body += f"<h3>{_e(label + task)}</h3>" + html_table(_episode_rows(t, r.get("episode_columns")),
                                                                cls="per-episode")
            for ep in t["episodes"]:
                rel = ep.get("video") and _copy_media(ep["video"], src, out)
                if rel:
                    ok = "success" if ep["success"] else "failure"
                    poster = _copy_media(str(Path(rel).with_suffix(".png")), src, out)
                    pattr = f" poster='{_e(poster)}'" if poster else ""
                    figs.append(f"<figure><video controls loop muted playsinline preload='metadata' width='256'{pattr} "
                                f"src='{_e(rel)}'></video><figcaption>{_e(task)} seed {ep['seed']} — {ok}, "
                                f"{ep['steps']} steps</figcaption></figure>")
    if body:
        add("Success per task and seed", body, "episodes")
    if figs:
        add("Rollout videos", f"<div class='media'>{''.join(figs)}</div>", "rollouts")
    if video_results and video_results.get("grids"):
        figs = []
        for g in video_results["grids"]:
            rel = _copy_media(g["path"], src, out)
            if rel:
                figs.append(f"<figure><img class='frame' src='{_e(rel)}' alt='{_e(g.get('caption', rel))}'>"
                            f"<figcaption>{_e(g.get('caption', ''))}</figcaption></figure>")
        if figs:
            legend = ("<p class='note'>Each grid: top row = history frames | real future; below = history | "
                      "predicted future (true actions), then shuffled actions, then copy-last-frame.</p>")
            add("Predicted vs real video", legend + f"<div class='media'>{''.join(figs)}</div>", "video-grids")
    run_cfg = dict(config) if config else None
    if run_dir is not None:
        run = Path(run_dir)
        imgs = []
        for i, mf in enumerate(_find_metrics_files(run)):
            recs = read_metrics_jsonl(mf)
            label = str(mf.parent.relative_to(run)) if mf.parent != run else run.name
            png = plot_training_curves(recs, out / f"curves_{i}.png", title=label) if recs else None
            if png:
                imgs.append(f"<figure><img src='{png.name}' alt='training curves {_e(label)}'>"
                            f"<figcaption>{_e(mf)}</figcaption></figure>")
        if imgs:
            add("Training curves", "".join(imgs), "curves")
        if run_cfg is None and (run / "config.json").is_file():
            run_cfg = json.loads((run / "config.json").read_text())
    if run_cfg is None and res.get("checkpoint_config"):
        run_cfg = res["checkpoint_config"]
    for t, body in _normalise_extra(extra_sections):
        add(t, body, "extra-" + "".join(c if c.isalnum() else "-" for c in t.lower()))
    if run_cfg:
        add("Config", f"<pre>{_e(json.dumps(run_cfg, indent=2, default=str))}</pre>", "config")
    keys = ("env", "policy", "checkpoint", "observation", "seeds", "protocol", "versions", "timing", "created_utc")
    per_run = [{k: r[k] for k in keys if k in r} for r in runs]
    facts: dict[str, Any] = {"runs": per_run} if len(per_run) > 1 else (per_run[0] if per_run else {})
    if video_results:
        facts["video_eval"] = {k: v for k, v in video_results.items() if k not in ("table", "grids", "notes")}
    files = sorted(p.name for p in out.glob("*.json"))
    links = ("<p>Raw results: " + ", ".join(f"<a href='{_e(f)}'>{_e(f)}</a>" for f in files) + "</p>") if files else ""
    if facts or links:
        add("Protocol, seeds and versions", links + f"<pre>{_e(json.dumps(facts, indent=2, default=str))}</pre>",
            "facts")
    nav = " · ".join(f"<a href='#{_e(a)}'>{_e(t)}</a>" for a, t in toc)
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(heading)}</title>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style>"
           f"<script>{MEDIA_CHECK_JS}</script></head>"
           f"<body><h1>{_e(heading)}</h1><p class='note'>{nav}</p>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    atomic_write_bytes(path, doc.encode())
    return path
