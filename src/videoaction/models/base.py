"""The interface every model family implements, and the registry that finds a family by name.

Training, evaluation, serving and benchmarks only talk to this interface, so a new family (VPP, HMA, ...)
plugs in by subclassing :class:`Policy` and adding one line to :data:`FAMILIES`.

Observation convention for ``predict_action`` (raw, un-normalised, batched):

* image keys: uint8 ``(B, T_obs, H, W, 3)`` frames as the environment renders them, oldest first (``image``, and
  one key per further camera of ``history_layout.cameras``, e.g. ``wrist_image``);
* low-dim keys (e.g. ``agent_pos``): float32 ``(B, T_obs, D)``;
* optional ``language``: a list of B strings.

``T_obs`` is :meth:`Policy.observation_spec`'s leading dimension. The reply holds un-normalised actions:
``action`` ``(B, n_action_steps, A)`` (what to execute) and ``action_pred`` ``(B, horizon, A)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from videoaction.data.normalizer import Normalizer
from videoaction.data.transforms import preprocess_frames
from videoaction.errors import VideoActionError
from videoaction.models.observation import (HISTORY_ACTION, LANGUAGE, STATE, HistoryLayout, select_batch,
                                            select_observation)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"

# family name -> "module:Class"; imported lazily so that `videoaction --help` stays fast.
FAMILIES: dict[str, str] = {
    "uva": "videoaction.models.uva.policy:UVAPolicy",
    "dp": "videoaction.models.dp.policy:DiffusionPolicy",
    "hma": "videoaction.models.hma.policy:HMAPolicy",
    "vpp": "videoaction.models.vpp.policy:VPPPolicy",
}


@dataclass(frozen=True)
class ObsSpec:
    """Shape (history dimension included, batch excluded) and dtype of one observation key."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    terms: dict[str, float]  # detached named parts (e.g. video_loss, action_loss) for logging


class Policy(nn.Module):
    """Base class of all model families. Subclasses set ``family`` and implement the abstract methods."""

    family: ClassVar[str] = ""
    config_class: ClassVar[type] = object  # the family's RunConfig subclass

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg  # the full resolved RunConfig (model, dataset, ...)

    # --- what the policy reads (see videoaction.models.observation) ----------------------------------
    @property
    def history_layout(self) -> HistoryLayout:
        """Which of the last ``n_obs_steps`` observations (and which keys) the policy conditions on."""
        raise NotImplementedError

    @property
    def n_obs_steps(self) -> int:
        """Observations per call: the longest history in :meth:`observation_spec`."""
        return max((spec.shape[0] for spec in self.observation_spec().values()), default=1)

    @property
    def action_chunk_start(self) -> int:
        """Window position (in training windows) of the first predicted action ``action_pred[:, 0]``."""
        raise NotImplementedError

    @property
    def execute_from(self) -> int:
        """Index into ``action_pred`` of the first executed action; ``action_chunk_start + execute_from`` is the
        window position of the newest observation (the action for the step being decided)."""
        return self.history_layout.positions[-1] - self.action_chunk_start

    def aligned_padding(self) -> tuple[int, int] | None:
        """``(pad_before, pad_after)`` with which training windows cover every step a rollout reaches
        (:func:`videoaction.config.aligned_padding`); None for a family without a history layout."""
        from videoaction.config import aligned_padding

        try:
            layout = self.history_layout
        except NotImplementedError:
            return None
        ds = self.cfg.dataset
        return aligned_padding(ds.frames, ds.horizon, layout.positions[-1], self.n_action_steps)

    def build_normalizer(self, action_dim: int, state_dim: int = 0) -> Normalizer:
        """The policy's normaliser (``action``, and ``state`` when ``state_dim``) in the dataset config's modes;
        identity until :meth:`set_normalizer` copies fitted statistics in."""
        ds = self.cfg.dataset
        dims, modes = {"action": action_dim}, {"action": ds.action_norm}
        if state_dim:
            dims["state"], modes["state"] = state_dim, ds.state_norm
        return Normalizer(dims, modes)

    def preprocess(self, frames) -> torch.Tensor:
        """uint8 frames (B, F, H, W, 3) -> (B, F, 3, S, S) in [-1, 1] (the dataset's evaluation transform)."""
        return preprocess_frames(frames, self.cfg.dataset)

    def _normalised_low_dim(self, sel: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        if STATE in sel:
            out[STATE] = self.normalizer.normalize("state", sel[STATE].to(self.device, torch.float32))
        if HISTORY_ACTION in sel:  # NaN (no action executed yet) stays NaN: the family maps it to its token
            out[HISTORY_ACTION] = self.normalizer.normalize("action", sel[HISTORY_ACTION].to(self.device,
                                                                                          torch.float32))
        return out

    def history_inputs(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Raw observation -> model inputs of the history: ``image`` (B, n_history, 3, S, S) in [-1, 1], normalised
        ``state`` / ``history_action`` (as the layout needs), ``language``."""
        sel = select_observation(obs, self.history_layout)
        out: dict[str, Any] = {cam: self.preprocess(sel[cam].to(self.device)) for cam in self.history_layout.cameras}
        out.update(self._normalised_low_dim(sel))
        if LANGUAGE in sel:
            out[LANGUAGE] = sel[LANGUAGE]
        return out

    def batch_history_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Training batch -> the same model inputs as :meth:`history_inputs` (``latent`` instead of ``image`` for
        a latent store; one key per camera of ``history_layout.cameras``)."""
        sel = select_batch(batch, self.history_layout)
        out: dict[str, Any] = {k: v.to(self.device, torch.float32) for k, v in sel.items()
                               if k not in (STATE, HISTORY_ACTION, LANGUAGE)}
        out.update(self._normalised_low_dim(sel))
        if LANGUAGE in sel:
            out[LANGUAGE] = sel[LANGUAGE]
        return out

    def action_clip_bound(self) -> torch.Tensor:
        """(A,) bound for clipping denoised normalised actions: the training data's range in normalised units
        (min-max: 1; mean-std: the largest |z-score| seen per dim; identity: the largest |value|)."""
        return self.normalizer.normalized_bound("action")

    # --- training -----------------------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                     mode: str | None = None) -> LossOutput:
        """Loss of one batch. ``mode``: a family's training mode for this batch (UVA: a task mode such as
        ``"video_model"`` for action-free batches); None = the family's own choice."""
        raise NotImplementedError

    def set_normalizer(self, normalizer) -> None:
        """Copy fitted statistics into ``self.normalizer`` (same fields and dims)."""
        own = self.normalizer.fields
        for name, field in normalizer.fields.items():
            if name in own:
                if own[name].dim != field.dim:
                    raise VideoActionError(f"normaliser field {name!r}: the model expects dimension {own[name].dim}, "
                                           f"the data has {field.dim}")
                own[name].load_state_dict(field.state_dict())
                own[name].mode = field.mode

    def compile_targets(self) -> list[nn.Module]:
        """Modules that ``optim.compile`` compiles in place for training: the repeated, fixed-shape parts (transformer
        blocks, denoiser networks). In-place compilation keeps state-dict keys, so checkpoints do not change. A
        family that names none cannot be trained with ``optim.compile``."""
        return []

    @classmethod
    def train_entry(cls) -> Callable | None:
        """The family's own training function ``(cfg, opts: TrainOptions) -> TrainResult`` for data the shared
        trainer (episode stores) does not read; None = :func:`videoaction.train.trainer.train`."""
        return None

    @classmethod
    def video_eval_entry(cls) -> Callable | None:
        """The family's own held-out video evaluation ``(policy, data, out_dir=, n_windows=, seed=, progress=)
        -> dict`` with ``metrics``, ``table`` and ``notes`` (as :func:`videoaction.eval.evaluate_video` returns);
        None = that function."""
        return None

    # --- inference ----------------------------------------------------------------------------
    def predict_action(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def observation_spec(self) -> dict[str, ObsSpec]:
        """What one (unbatched) observation must hold for ``predict_action``; by default from
        :attr:`history_layout`: ``image`` (T, S, S, 3) uint8 at ``model.obs_image_size`` (any size is resized),
        ``state`` (T, Ds) and ``history_action`` (T, A) float32 when the layout uses them."""
        lay = self.history_layout
        t, size = lay.n_obs_steps, int(self.cfg.model.obs_image_size)
        spec = {cam: ObsSpec((t, size, size, 3), "uint8") for cam in lay.cameras}
        if lay.state_dim:
            spec[STATE] = ObsSpec((t, lay.state_dim), "float32")
        if lay.action_dim:
            spec[HISTORY_ACTION] = ObsSpec((t, lay.action_dim), "float32")
        return spec

    @property
    def action_dim(self) -> int:
        raise NotImplementedError

    @property
    def n_action_steps(self) -> int:
        raise NotImplementedError

    @property
    def horizon(self) -> int:
        raise NotImplementedError

    def metadata(self) -> dict:
        """Facts a robot-side client needs (served on connect)."""
        return {
            "model_family": self.family,
            "observation": {k: v.to_json() for k, v in self.observation_spec().items()},
            "action_dim": self.action_dim,
            "action_horizon": self.horizon,
            "n_action_steps": self.n_action_steps,
        }

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory, config_dict: Mapping[str, Any] | None = None, ema: nn.Module | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (+ ``ema.safetensors``) atomically into ``directory``."""
        from videoaction.utils.io import atomic_write_json, save_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = dict(config_dict) if config_dict is not None else _as_dict(self.cfg)
        cfg["family"] = self.family
        save_state_dict(self.state_dict(), directory / MODEL_FILE)
        if ema is not None:
            save_state_dict(ema.state_dict(), directory / EMA_FILE)
        atomic_write_json(directory / CONFIG_FILE, cfg)

    @classmethod
    def _build_from_state(cls, run: Any, state: Mapping[str, torch.Tensor], source: str) -> "Policy":
        """The model a checkpoint's weights will be loaded into (override to build parts from the weights)."""
        return cls(run)

    @classmethod
    def from_checkpoint(cls, directory, cfg: Mapping[str, Any], prefer_ema: bool = True,
                        map_location: str | torch.device = "cpu") -> "Policy":
        """Build the model from the stored run config and load its weights strictly."""
        from videoaction.config import from_dict
        from videoaction.utils.io import load_state_dict

        directory = Path(directory)
        run = from_dict(cls.config_class, cfg, where=str(directory / CONFIG_FILE))
        weights = directory / (EMA_FILE if prefer_ema and (directory / EMA_FILE).is_file() else MODEL_FILE)
        state = load_state_dict(weights, map_location="cpu")
        model = cls._build_from_state(run, state, str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise VideoActionError(f"{weights}: weights do not match the {cls.family} model in its config: "
                                   f"{len(missing)} missing {sorted(missing)[:10]}, "
                                   f"{len(unexpected)} unexpected {sorted(unexpected)[:10]}")
        return model.to(map_location).eval()


def _as_dict(config: Any) -> dict:
    from videoaction.config import to_dict

    return to_dict(config) if dataclasses.is_dataclass(config) else dict(config)


def family_class(name: str) -> type[Policy]:
    if name not in FAMILIES:
        raise VideoActionError(f"unknown model family {name!r}; known families: {sorted(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def read_checkpoint_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise VideoActionError(f"{directory}: not a checkpoint directory (no {CONFIG_FILE})")
    with open(path) as f:
        cfg = json.load(f)
    if "family" not in cfg:
        raise VideoActionError(f"{path}: missing key 'family' (expected one of {sorted(FAMILIES)})")
    return cfg


def resolve_checkpoint_dir(directory) -> Path:
    """A checkpoint directory as given, or a training run directory (``DIR``, ``DIR/checkpoints``) -> the step
    directory its ``checkpoints/latest`` pointer names (a symlink, or a file holding the directory name)."""
    directory = Path(directory)
    if (directory / MODEL_FILE).is_file():
        return directory
    if directory.is_file() and directory.name in ("latest", "best"):
        return directory.parent / directory.read_text().strip()
    for root in (directory / "checkpoints", directory):
        pointer = root / "latest"
        if pointer.is_symlink() or pointer.is_dir():
            return pointer
        if pointer.is_file():
            return root / pointer.read_text().strip()
    return directory


def load_policy(directory, prefer_ema: bool = True, map_location: str | torch.device = "cpu") -> Policy:
    """Load any family's policy from a checkpoint directory (EMA weights when present and preferred); a training
    run directory loads its latest checkpoint."""
    directory = resolve_checkpoint_dir(directory)
    cfg = read_checkpoint_config(directory)
    cls = family_class(cfg["family"])
    return cls.from_checkpoint(directory, cfg, prefer_ema=prefer_ema, map_location=map_location)
