"""One description per environment (:class:`EnvSpec`) and the registry every other layer reads.

The evaluation runner, demo generation, metric summaries, the eval CLI and the report never branch on an
environment's name: they look its spec up (:func:`get_env_spec`) and read max steps, seeds, metrics, the observation
protocol, the render set-up and the demo expert from it. An environment module defines its gymnasium env, builds an
:class:`EnvSpec` and calls :func:`register_env` at import; adding one is that file plus one line in
:data:`BUILTIN_ENV_MODULES` (imported lazily, on the first lookup).

Spec strings: ``name`` (``pusht``), ``name:variant`` (``pusht:bg-color``, ``metaworld:reach``), the dash form
``name-variant`` for specs with ``dash_variants`` (``pusht-bg-color``), and multi-task strings that a spec's
``expand`` splits into one spec string per task (``metaworld:reach,drawer-open``, ``metaworld:MT10``).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from videoaction.errors import VideoActionError

# Modules that register the built-in environments (imported on the first registry lookup).
BUILTIN_ENV_MODULES: tuple[str, ...] = (
    "videoaction.envs.pusht",
    "videoaction.envs.metaworld",
    "videoaction.envs.libero",
    "videoaction.envs.robosuite_tasks",
    "videoaction.envs.calvin",
)


class UnknownEnvError(VideoActionError):
    """An environment name or variant that no registered spec knows."""


class ObservationProtocolError(VideoActionError):
    """A policy asks for observations the environment's protocol does not give it (e.g. privileged state)."""


@dataclass(frozen=True)
class ObservationProtocol:
    """What a policy may see. Environments return ``image_keys`` (uint8 HWC frames) and the full ``state_key``
    vector; the standard low-dim observation is ``state[:proprio_dims]`` (``proprio_doc`` says what those dims are).
    The rest of the state (object / goal poses, up to ``privileged_state_dims``) is privileged: only runs labelled
    ``privileged_state`` may condition on it."""

    image_keys: tuple[str, ...] = ("image",)
    state_key: str | None = "state"
    proprio_dims: int = 0
    proprio_doc: str = ""
    privileged_state_dims: int = 0
    # dataset key -> this environment's observation key, for the names the benchmark's datasets use for the same
    # camera (LIBERO hdf5 ``eye_in_hand_rgb`` -> ``wrist_image``): a policy trained on such a store and asking for
    # ``eye_in_hand_rgb`` is given ``wrist_image``. Declared once, here; see :func:`observation_key_map`.
    key_aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """Which metrics an environment reports beyond ``success_rate`` and how.

    ``tracked_info``: per-step ``info`` keys recorded per episode as ``initial_<k>`` (at reset), ``max_<k>`` and
    ``final_<k>`` (over the steps); ``summarize(episodes) -> dict``: extra per-task metrics from episode records;
    ``headline``: keys of ``summarize`` recomputed over every task's episodes for the run's headline numbers;
    ``labels``: metric key -> column label in reports, in column order (``success_rate`` included);
    ``episode_columns``: per-episode key -> column label; ``definitions``: metric key -> one-line definition.
    """

    tracked_info: tuple[str, ...] = ()
    summarize: Callable[[Sequence[Mapping[str, Any]]], dict] | None = None
    headline: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: {"success_rate": "success rate"})
    episode_columns: Mapping[str, str] = field(default_factory=dict)
    definitions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvSpec:
    """Everything the framework needs to know about one environment.

    ``build(variant, **kw) -> gym.Env`` makes one instance (``variant`` = the part after ``name:``, "" if none);
    ``expand(variant) -> [variant, ...]`` splits a multi-task variant into single tasks (None: never split);
    ``instruction(variant) -> str``: the task's language instruction; ``setup()``: per-process set-up to run before
    the simulator is imported (e.g. the headless OpenGL backend); ``demo``: ``"module:function"`` recording one
    scripted demonstration, ``function(cfg: DemoConfig, task: str, seed: int) -> (data, meta)``; ``demo_tasks(names)
    -> [task, ...]`` the tasks ``videoaction demos NAME --tasks ...`` runs (None: the spec name itself).
    """

    name: str
    build: Callable[..., Any]
    gym_id: str
    family: str = ""  # results' env_family (PushT and PushT-M share "pusht"); defaults to name
    description: str = ""
    variants: tuple[str, ...] = ()  # named variants, for help and error messages
    dash_variants: bool = False  # "name-variant" means "name:variant"
    variant_hint: str = ""  # e.g. "<task>": shown in valid_specs(); a non-empty hint means a variant is required
    expand: Callable[[str], list[str]] | None = None
    instruction: Callable[[str], str] | None = None
    observation: ObservationProtocol = ObservationProtocol()
    max_steps: int = 300
    seed_start: int = 100_000  # evaluation seeds start, start + 1, ... (demos use 0, 1, ...)
    metrics: MetricSpec = MetricSpec()
    render_backend: str = ""
    setup: Callable[[], None] | None = None
    packages: tuple[str, ...] = ()  # distributions whose versions every result records
    demo: str | None = None
    demo_tasks: Callable[[Sequence[str] | None], list[str]] | None = None
    # what the env's actions mean with its default options (videoaction.envs.action_conventions; "" undeclared);
    # an env instance's ``action_convention`` attribute overrides it when an option (abs_action) changes it (an env
    # whose spec declares a convention must carry the attribute: subprocess envs are asked for it)
    action_convention: str = ""
    # batched observation {key: (B, ...)} -> (B, 6) end-effector position + axis-angle (relative action conversion)
    ee_pose: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def env_family(self) -> str:
        return self.family or self.name

    def prepare_process(self) -> None:
        """Run the spec's per-process set-up (idempotent)."""
        if self.setup is not None:
            self.setup()

    def default_seeds(self, n_episodes: int, start: int | None = None) -> list[int]:
        s = self.seed_start if start is None else int(start)
        return list(range(s, s + int(n_episodes)))

    def demo_recorder(self) -> Callable:
        if not self.demo:
            raise UnknownEnvError(f"environment {self.name!r} has no scripted demonstrations; environments with "
                                  f"demos: {', '.join(demo_env_names())}")
        module, _, fn = self.demo.partition(":")
        return getattr(importlib.import_module(module), fn)


_REGISTRY: dict[str, EnvSpec] = {}
_LOADED = False
_LOAD_ERRORS: dict[str, str] = {}  # built-in module -> why it could not be imported (a missing optional package)


def register_env(spec: EnvSpec, replace: bool = False) -> EnvSpec:
    """Add ``spec`` to the registry and register ``spec.gym_id`` with gymnasium (``gym.make(id, variant=...)``)."""
    import gymnasium as gym

    name = spec.name.lower()
    if ":" in name or not name:
        raise VideoActionError(f"register_env: bad environment name {spec.name!r} (non-empty, no ':')")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not spec:
        raise VideoActionError(f"register_env: environment {name!r} is already registered")
    _REGISTRY[name] = spec
    if spec.gym_id not in gym.registry or replace:
        gym.register(id=spec.gym_id, entry_point=functools.partial(_gym_entry, name))
    return spec


def unregister_env(name: str) -> None:
    """Remove a spec (and its gymnasium id); for tests that register temporary environments."""
    import gymnasium as gym

    spec = _REGISTRY.pop(name.lower(), None)
    if spec is not None:
        gym.registry.pop(spec.gym_id, None)


def _gym_entry(name: str, variant: str = "", **kw):
    return _REGISTRY[name].build(variant, **kw)


def _load_builtins() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in BUILTIN_ENV_MODULES:
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                _LOAD_ERRORS[mod] = f"{type(exc).__name__}: {exc}"


def registered_envs() -> dict[str, EnvSpec]:
    _load_builtins()
    return dict(_REGISTRY)


def valid_specs() -> list[str]:
    """Every accepted spec string form, for help and error messages."""
    out = []
    for name, spec in registered_envs().items():
        out.append(f"{name}:{spec.variant_hint}" if spec.variant_hint else name)
        out += [f"{name}:{v}" for v in spec.variants]
    return out


def demo_env_names() -> list[str]:
    return [n for n, s in registered_envs().items() if s.demo]


def resolve(spec_string: str) -> tuple[EnvSpec, str]:
    """``spec_string`` -> (its EnvSpec, the variant: the part after ``name:`` or after ``name-`` in dash form)."""
    _load_builtins()
    text = str(spec_string).strip()
    head, sep, variant = text.partition(":")
    key = head.lower()
    if key in _REGISTRY:
        return _REGISTRY[key], variant.strip()
    if not sep:
        for name in sorted(_REGISTRY, key=len, reverse=True):  # longest first: pusht-m-goal-color -> pusht-m
            if _REGISTRY[name].dash_variants and head.startswith(name + "-"):  # (case-sensitive)
                return _REGISTRY[name], head[len(name) + 1:]
    missing = "".join(f"; not available: {m} ({e})" for m, e in _LOAD_ERRORS.items())
    raise UnknownEnvError(f"unknown environment {spec_string!r}; valid: {', '.join(valid_specs())}{missing}")


def get_env_spec(name_or_spec_string: str) -> EnvSpec:
    """The EnvSpec of a name or spec string (``pusht``, ``pusht-bg-color``, ``metaworld:reach``, ...)."""
    return resolve(name_or_spec_string)[0]


def expand_env(spec_string: str) -> list[str]:
    """Multi-task spec string -> one spec string per task (``metaworld:a,b`` -> ``metaworld:a``, ``metaworld:b``)."""
    spec, variant = resolve(spec_string)
    if spec.expand is None or not variant:
        return [spec_string]
    return [f"{spec.name}:{v}" for v in spec.expand(variant)]


def make_env(spec_string: str, seed: int | None = None, **kw):
    """Build the environment of ``spec_string``; ``seed`` seeds the first reset (``env.reset()`` then uses it)."""
    spec, variant = resolve(spec_string)
    if spec.variant_hint and not variant:
        raise UnknownEnvError(f"{spec.name} needs a variant, e.g. '{spec.name}:{spec.variant_hint}'; valid: "
                              f"{', '.join(valid_specs())}")
    spec.prepare_process()
    env = spec.build(variant, **kw)
    if seed is not None:
        env.reset(seed=seed)
    return env


def check_observation_protocol(spec: EnvSpec, policy_obs_spec: Mapping[str, Any] | None, privileged: bool = False,
                               runner_keys: Sequence[str] = ("history_action",)) -> dict:
    """Check what a policy asks for against ``spec``'s observation protocol; return the record results keep:
    ``{"keys": [...], "state_dims": k, "privileged_state": bool}`` (None for an undeclared callable).

    ``policy_obs_spec``: key -> ObsSpec (or shape tuple), history dimension first. A state wider than
    ``proprio_dims`` is refused unless ``privileged`` (the run is labelled ``privileged_state``). ``runner_keys``:
    keys the rollout itself provides (history actions). None (a plain callable without ``observation_spec``): the
    callable is given the full observation, recorded as such.
    """
    proto = spec.observation
    env_keys = [*proto.image_keys, *([proto.state_key] if proto.state_key else [])]
    if policy_obs_spec is None:  # undeclared: whether it uses the privileged dims is unknown (None), not claimed
        return {"keys": env_keys, "state_dims": proto.privileged_state_dims, "privileged_state": None,
                "note": "a callable without observation_spec() is given the full observation"}
    keys, state_dims = [], 0
    for key, v in policy_obs_spec.items():
        shape = tuple(getattr(v, "shape", v))
        key = proto.key_aliases.get(key, key)
        if key in proto.image_keys or key in runner_keys:
            keys.append(key)
            continue
        if key != proto.state_key:
            raise ObservationProtocolError(f"the policy asks for observation {key!r}; environment {spec.name!r} "
                                           f"provides {env_keys + list(runner_keys)}")
        dims = int(shape[-1])
        if dims > proto.privileged_state_dims:
            raise ObservationProtocolError(f"the policy asks for {dims} {key!r} dims; environment {spec.name!r} has "
                                           f"{proto.privileged_state_dims}")
        if dims > proto.proprio_dims and not privileged:
            raise ObservationProtocolError(
                f"the policy asks for {dims} {key!r} dims, but the standard observation of {spec.name!r} is "
                f"{key}[:{proto.proprio_dims}] ({proto.proprio_doc}); the other dims are privileged (object / goal "
                "poses). Use a run labelled privileged_state (a preset whose name contains 'privileged_state', or "
                "eval --privileged-state), or train with dataset.state_dims <= "
                f"{proto.proprio_dims}")
        keys.append(key)
        state_dims = dims
    return {"keys": keys, "state_dims": state_dims, "privileged_state": state_dims > proto.proprio_dims}


def observation_key_map(spec: EnvSpec, policy_keys: Sequence[str]) -> dict[str, str]:
    """{policy key: environment key} for the policy keys the environment gives under another name (its
    ``key_aliases``); keys the environment gives as they are need no entry."""
    proto = spec.observation
    env_keys = {*proto.image_keys, *([proto.state_key] if proto.state_key else [])}
    return {k: proto.key_aliases[k] for k in policy_keys if k not in env_keys and k in proto.key_aliases}


__all__ = ["BUILTIN_ENV_MODULES", "EnvSpec", "MetricSpec", "ObservationProtocol", "ObservationProtocolError",
           "UnknownEnvError", "check_observation_protocol", "demo_env_names", "expand_env", "get_env_spec",
           "make_env", "observation_key_map", "register_env", "registered_envs", "resolve", "unregister_env",
           "valid_specs"]
