"""Simulated environments, each described by one :class:`~videoaction.envs.spec.EnvSpec` in its own module.

``make_env(spec_string, seed, **kw)`` builds any registered environment: ``pusht``, ``pusht-m``, PushT visual
variants (``pusht:bg-color`` / ``pusht-bg-color``, ``bg-objects``, ``goal-color``), ``metaworld:<task>``. All return
dict observations ``{"image": uint8 (H, W, 3), "state": float32 (D,)}`` and ``info["is_success"]``; the spec says
which state dims are the standard observation. See :mod:`videoaction.envs.spec` for the registry and how to add
an environment.
"""

from __future__ import annotations

from videoaction.envs.spec import (EnvSpec, MetricSpec, ObservationProtocol, ObservationProtocolError,
                                   UnknownEnvError, check_observation_protocol, expand_env, get_env_spec, make_env,
                                   register_env, registered_envs, valid_specs)

__all__ = ["EnvSpec", "MetricSpec", "ObservationProtocol", "ObservationProtocolError", "UnknownEnvError",
           "check_observation_protocol", "expand_env", "get_env_spec", "make_env", "register_env", "registered_envs",
           "valid_specs"]
