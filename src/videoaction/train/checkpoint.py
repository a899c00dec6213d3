"""Training checkpoints: atomic directories, a ``latest`` pointer, keep-last-K plus best, exact resume state.

Layout of a run directory::

    DIR/config.json                         resolved run config (re-create the run with --config)
    DIR/metrics.jsonl                       one record per logged step
    DIR/checkpoints/step_0000500/
        config.json  model.safetensors  ema.safetensors      (Policy.save_pretrained: load_policy reads it)
        train_state.safetensors             optimizer tensors
        train_state.json                    step, data order, scheduler, EMA step, best metric, optimizer groups
        rng_rank{r}.safetensors             RNG states of rank r (torch, CUDA, loss generator; python/numpy in
                                            the safetensors metadata)
    DIR/checkpoints/latest -> step_0000500  symlink (or a one-line pointer file where symlinks are unsupported)
    DIR/checkpoints/best   -> step_...      same, for the best evaluation metric

A checkpoint is written into ``.tmp_step_XXXXXXX`` and renamed into place; the pointer is replaced with
``os.replace``. A kill at any moment leaves the previous ``latest`` intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_bytes, atomic_write_json, load_state_dict, save_state_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
TRAIN_STATE_JSON = "train_state.json"
TRAIN_STATE_TENSORS = "train_state.safetensors"


class CheckpointError(VideoActionError):
    """A run or checkpoint directory that is missing, incomplete or does not match the run."""


def step_name(step: int) -> str:
    return f"step_{step:07d}"


# ------------------------------------------------------------------------------------------ pointers
def write_pointer(root: Path, name: str, target: str) -> None:
    """Point ``root/name`` at the sibling directory ``target`` atomically (symlink, else pointer file)."""
    link = root / name
    tmp = root / f".{name}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()
        if link.is_symlink():
            link.unlink()
        atomic_write_bytes(link, (target + "\n").encode())


def read_pointer(root: Path, name: str) -> Path | None:
    link = Path(root) / name
    if link.is_symlink():
        target = Path(root) / os.readlink(link)
    elif link.is_file():
        target = Path(root) / link.read_text().strip()
    else:
        return None
    return target if target.is_dir() else None


def resolve_checkpoint(path) -> Path:
    """A run dir, its ``checkpoints`` dir, a ``latest``/``best`` pointer or a step dir -> the step directory."""
    path = Path(path)
    if path.is_file() and path.name in (LATEST, BEST):  # pointer file
        target = read_pointer(path.parent, path.name)
        if target is None:
            raise CheckpointError(f"{path}: pointer names a missing checkpoint")
        return target
    if (path / "model.safetensors").is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        target = read_pointer(root, LATEST)
        if target is not None:
            return target
    raise CheckpointError(f"{path}: no checkpoint here (expected a step directory with model.safetensors, or a run "
                          f"directory with {CHECKPOINTS}/{LATEST})")


def list_checkpoints(run_dir) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith("step_"))


# ------------------------------------------------------------------------------------------ optimizer state
def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------ RNG state
def capture_rng(generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    if generator is not None:
        tensors["generator"] = generator.get_state()
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": json.dumps([py[0], list(py[1]), py[2]]),
            "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]])}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str], generator: torch.Generator | None) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and "generator" in tensors:
        generator.set_state(tensors["generator"].to(generator.get_state().device))
    version, state, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_rank_rng(directory: Path, rank: int, generator: torch.Generator | None) -> None:
    tensors, meta = capture_rng(generator)
    save_state_dict(tensors, Path(directory) / f"rng_rank{rank}.safetensors", metadata=meta)


def load_rank_rng(directory: Path, rank: int, generator: torch.Generator | None) -> bool:
    """Restore rank ``rank``'s RNG states; False when the checkpoint has none for it (other world size)."""
    from safetensors import safe_open

    path = Path(directory) / f"rng_rank{rank}.safetensors"
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    restore_rng(load_state_dict(path), meta, generator)
    return True


# ------------------------------------------------------------------------------------------ save / load
def begin_checkpoint(run_dir, step: int, prefix: str = "") -> Path:
    """Fresh temporary directory for the checkpoint of ``step`` (main process only)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_{prefix}{step_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_train_state(tmp: Path, optimizer_state: dict, state: dict[str, Any]) -> None:
    tensors, opt_meta = flatten_optimizer(optimizer_state)
    save_state_dict(tensors, tmp / TRAIN_STATE_TENSORS)
    atomic_write_json(tmp / TRAIN_STATE_JSON, {**state, "optimizer": opt_meta})


def commit_checkpoint(tmp: Path, name: str, update_latest: bool = True) -> Path:
    """Rename the finished temp dir into place and move ``latest`` to it (main process only)."""
    root = tmp.parent
    final = root / name
    if final.exists():  # e.g. a resumed run saving the step it resumed from: replace it
        trash = root / f".trash_{name}_{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if update_latest:
        write_pointer(root, LATEST, name)
    return final


def prune_checkpoints(run_dir, keep_last: int) -> list[Path]:
    """Delete step checkpoints except the last ``keep_last``, ``latest`` and ``best``; remove stale temp dirs."""
    root = Path(run_dir) / CHECKPOINTS
    keep = set(list_checkpoints(run_dir)[-max(keep_last, 1):])
    for name in (LATEST, BEST):
        target = read_pointer(root, name)
        if target is not None:
            keep.add(target)
    removed = []
    for path in list_checkpoints(run_dir):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for path in root.glob(".t*_*"):
        if path.is_dir() and (path.name.startswith(".tmp_") or path.name.startswith(".trash_")):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def read_train_state(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(train_state.json without the optimizer, optimizer state dict) of a step directory."""
    path = Path(ckpt) / TRAIN_STATE_JSON
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAIN_STATE_JSON} (a weights-only checkpoint cannot be resumed; "
                              f"use --init to start a new run from it)")
    state = json.loads(path.read_text())
    opt_meta = state.pop("optimizer")
    optimizer = unflatten_optimizer(load_state_dict(Path(ckpt) / TRAIN_STATE_TENSORS), opt_meta)
    return state, optimizer
