"""Typed run configs, named presets, strict (de)serialisation and command-line overrides (through tyro).

A *run config* describes one experiment completely: data windowing, model, optimisation and run control.
Each model family subclasses :class:`RunConfig` with its own ``model`` field and registers named presets
(``uva-tiny``, ``uva-base``, ``dp-tiny``, ...). Every field can be overridden on the command line
(``--model.width 256``, ``--optim.lr 3e-4``); unknown or mistyped flags are an error naming them. A run
writes its resolved config as JSON, and ``--config FILE`` re-creates the run from it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from videoaction.errors import ConfigError

# Modules that define presets: each exposes ``PRESETS: dict[str, Callable[[], RunConfig]]``.
PRESET_MODULES = ["videoaction.models.uva.config", "videoaction.models.dp.config", "videoaction.models.hma.config"]
PRESET_MODULES.append("videoaction.models.vpp.config")


@dataclass
class FrameConfig:
    """Which steps of a ``horizon``-step window become history / future frames for video models.

    Frame i is at ``offset + i * stride`` (UVA: offset 3, stride 4, 4 + 4 frames -> [3,7,11,15 | 19,23,27,31]).
    With ``random_history`` (UVA's ``different_history_freq``) the history indices are replaced by a random
    non-decreasing tuple from ``{0..h_last}`` ending at ``h_last`` (the last history index), drawn per sample.
    """

    n_history: int = 4
    n_future: int = 4
    offset: int = 3
    stride: int = 4
    random_history: bool = False

    @property
    def last_history(self) -> int:
        """Window position of the newest history frame (UVA: 15); random histories end there too."""
        return self.offset + self.stride * (self.n_history - 1)

    @property
    def n_obs_steps(self) -> int:
        """Consecutive observations a policy needs at inference: ``last_history + 1`` (UVA: 16, DP-C: 2)."""
        return self.last_history + 1


def aligned_padding(frames: FrameConfig, horizon: int, first_action: int, n_action_steps: int) -> tuple[int, int]:
    """``(pad_before, pad_after)`` that make training windows cover every step a rollout asks about.

    ``pad_before = frames.last_history``: the earliest window has its newest history frame at episode step 0 and
    every earlier position edge-padded with the first frame -- exactly the ``[o0, o0, ...]`` history a rollout
    feeds at its first step. ``pad_after = horizon - first_action - n_action_steps``: the latest window executes
    the episode's last ``n_action_steps`` actions (``first_action``: window position of the first executed action;
    Diffusion Policy's ``Ta - 1`` for its 16-step window).
    """
    return frames.last_history, max(0, horizon - first_action - n_action_steps)


@dataclass
class DatasetConfig:
    """How training samples are cut from an episode store (keys default to Diffusion Policy's)."""

    image_key: str = "img"
    # several cameras: store keys in a fixed order (the first is the main camera; empty = just ``image_key``)
    image_keys: tuple[str, ...] = ()
    # observation / batch names of those cameras (rollouts, serving); empty = "image" for the first camera and the
    # store key itself for the others (see ``camera_keys``)
    camera_names: tuple[str, ...] = ()
    state_key: str | None = "state"
    action_key: str = "action"
    state_dims: int | None = 2  # use the first k dims of the state as proprioception (PushT: agent xy)
    language_key: str | None = None  # per-episode metadata column with an instruction
    latent_key: str = "latent"  # a latent store (``videoaction encode``) holds frames under this key instead
    horizon: int = 32
    pad_before: int = 1
    pad_after: int = 7
    frames: FrameConfig = field(default_factory=FrameConfig)
    image_size: int = 64  # model input resolution (square)
    crop_ratio: float = 1.0  # random crop of this fraction per side in training (centre crop at eval), then resize
    random_shift: int = 0  # pixels of random shift (pad + crop), same for all frames of a sample
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    val_ratio: float = 0.05
    max_train_episodes: int | None = None
    split_seed: int = 42
    episodes_file: str | None = None  # only these episode indices (JSON list or one per line), like UVA's
    # used_episode_indices_file; train/val are split among them
    action_norm: str = "minmax"  # minmax | meanstd | identity
    state_norm: str = "minmax"
    # what the actions mean (videoaction.envs.action_conventions: abs_rot6d10, delta_axis_angle7, rel_rot6d10 ...);
    # "" = taken from the store's ``action_convention`` attribute at training (format readers write it); evaluation
    # converts the policy's chunks into the environment's convention
    action_convention: str = ""
    # "relative": the state / action keys hold per robot an absolute end-effector pose + gripper (position 3,
    # axis-angle 3, width 1; the UMI reader's ``state`` / ``action``) and every window is expressed relative to the
    # pose at its last history step, rotation as 6-d (10 dims per robot; videoaction.data.relative); one robot sets
    # action_convention to rel_rot6d10 so evaluation converts back. "abs": the stored vectors as they are
    pose_repr: str = "abs"


def store_image_keys(ds: DatasetConfig) -> tuple[str, ...]:
    """The store keys of the cameras, main camera first: ``image_keys`` or, when empty, ``(image_key,)``."""
    return tuple(ds.image_keys) if ds.image_keys else (ds.image_key,)


def camera_keys(ds: DatasetConfig) -> tuple[str, ...]:
    """Observation / batch key of each camera of :func:`store_image_keys`: ``camera_names`` when given, else
    ``"image"`` for the main camera and the store key for the others (``("img", "wrist_image")`` ->
    ``("image", "wrist_image")``). One camera is always ``("image",)``."""
    stores = store_image_keys(ds)
    names = tuple(ds.camera_names) if ds.camera_names else ("image", *stores[1:])
    if len(names) != len(stores) or len(set(names)) != len(names) or len(set(stores)) != len(stores):
        raise ConfigError(f"dataset.camera_names {list(names)} must name each of dataset.image_keys {list(stores)} "
                          "once (distinct names, same count)")
    if names[0] != "image":
        raise ConfigError(f"dataset.camera_names: the main camera is observed as 'image', found {names[0]!r}")
    return names


def camera_latent_key(camera: str, latent_key: str = "latent") -> str:
    """Key of a camera's latents in a latent store and a batch: ``latent`` for the main camera (``image``),
    ``latent_<camera>`` for the others (``latent_wrist_image``)."""
    return latent_key if camera == "image" else f"{latent_key}_{camera}"


@dataclass
class OptimConfig:
    batch_size: int = 32
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_steps: int = 500
    scheduler: str = "cosine"  # any diffusers get_scheduler name
    grad_clip: float = 1.0  # 0 disables (the reference clips nothing)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    ema: bool = True
    ema_power: float = 0.75
    ema_max: float = 0.9999
    num_workers: int = 0
    # torch.compile the policy's compile_targets() in place (pays on GPUs; on a CPU it measured no gain)
    compile: bool = False


@dataclass
class RunConfig:
    """One experiment. Families subclass it and override ``model`` with their own config type."""

    family: str = ""
    preset: str = ""
    data: str = ""  # episode store (or latent store) to train on
    out: str = ""  # run directory
    steps: int = 1000
    time_limit_min: float = 0.0  # stop (and save) after this many minutes of training; 0 = no limit
    save_every: int = 500
    log_every: int = 10
    eval_every: int = 0  # 0 = no periodic rollouts
    keep_last: int = 2
    resume: bool = False
    init: str | None = None  # checkpoint directory to initialise weights from (e.g. stage 1 for stage 2)
    seed: int = 0
    device: str = "auto"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: Any = None


# ----------------------------------------------------------------------------------------------- serialisation
def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """Plain dict -> dataclass ``cls``, strictly: unknown keys and wrong types are a :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, found {len(value)}")
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        item = args[0] if args else Any
        out = [_convert(item, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {args}, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, found {value!r}")
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- presets
def all_presets() -> dict[str, Callable[[], RunConfig]]:
    presets: dict[str, Callable[[], RunConfig]] = {}
    for module in PRESET_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # family not built yet
            raise
        presets.update(getattr(mod, "PRESETS", {}))
    return presets


def get_preset(name: str) -> RunConfig:
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(presets)}")
    cfg = presets[name]()
    cfg.preset = name
    return cfg


def run_config_class(family: str) -> type[RunConfig]:
    """The RunConfig subclass of a family (the type of any of its presets)."""
    for name, make in all_presets().items():
        cfg = make()
        if cfg.family == family:
            return type(cfg)
    raise ConfigError(f"no presets registered for model family {family!r}")


def load_run_config(path) -> RunConfig:
    """Re-create a run's config from the JSON it wrote (``DIR/config.json``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    family = data.get("family")
    if not family:
        raise ConfigError(f"{path}: missing key 'family'")
    return from_dict(run_config_class(family), data, where=str(path))


def parse_overrides(default: Any, args: list[str], prog: str = "videoaction") -> Any:
    """Apply command-line flags to a config instance with tyro (``--optim.lr 3e-4``, ``--steps 100``)."""
    import tyro

    return tyro.cli(type(default), default=default, args=args, prog=prog)
