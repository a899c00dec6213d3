"""Dataset formats the field uses, one registry entry each: how to recognise, read and (optionally) write them.

``FORMATS[name]`` is a :class:`FormatSpec`; :func:`open_source` opens any supported dataset as an
:class:`EpisodeSource`, and :func:`open_foreign` wraps it in the episode-store read interface for training
(``EpisodeStore.open`` calls it for paths that are not a native store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from videoaction.data.formats import calvin, lerobot, libero, rlds, robomimic, umi
from videoaction.data.formats.convert import LeRobotTarget
from videoaction.data.formats.base import (EpisodeSource, FormatError, FormatSpec, SourceStore,
                                           read_episode_list)

FORMATS: dict[str, FormatSpec] = {
    "lerobot": FormatSpec("lerobot", "LeRobot dataset folder, v2.1 or v3.0 (parquet + mp4, meta/info.json)",
                          lerobot.detect, lerobot.LeRobotSource, writer=LeRobotTarget),
    "libero": FormatSpec("libero", "LIBERO hdf5 (robomimic layout + problem_info language)", libero.detect,
                         libero.LiberoSource, options=("absolute_actions", "filter_key")),
    "robomimic": FormatSpec("robomimic", "robomimic / Diffusion Policy hdf5 (data/demo_i/{obs, actions})",
                            robomimic.detect, robomimic.RobomimicSource, options=("filter_key", "action_rot6d")),
    "umi": FormatSpec("umi", "UMI replay buffer (.zarr.zip, JPEG-XL frames, robot0_eef_* keys)", umi.detect,
                      umi.UmiSource, options=("action_latency_steps", "obs_latency_steps")),
    "calvin": FormatSpec("calvin", "CALVIN split folder (episode_XXXXXXX.npz + ep_start_end_ids.npy)",
                         calvin.detect, calvin.CalvinSource, options=("allow_pickle", "split")),
    "rlds": FormatSpec("rlds", "Open X-Embodiment RLDS (TFRecord shards + dataset_info.json / features.json)",
                       rlds.detect, rlds.RldsSource, options=("split",)),
}
# libero is checked before robomimic: a LIBERO file is also a valid robomimic file.


def detect_format(path: str | Path) -> str | None:
    """The registry name of the dataset at ``path``, or None (e.g. a native zarr episode store)."""
    path = Path(path)
    for name, spec in FORMATS.items():
        try:
            if spec.detect(path):
                return name
        except OSError:
            continue
    return None


def open_source(path: str | Path, fmt: str | None = None, **options) -> EpisodeSource:
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "no dataset at this path")
    name = fmt or detect_format(path)
    if name is None:
        raise FormatError(path, "unrecognised dataset format", expected=f"one of {sorted(FORMATS)}")
    if name not in FORMATS:
        raise FormatError(path, "unknown format name", expected=f"one of {sorted(FORMATS)}", found=name)
    spec = FORMATS[name]
    unknown = set(options) - set(spec.options)
    if unknown:
        raise FormatError(path, f"options not understood by the {name} reader", expected=list(spec.options),
                          found=sorted(unknown))
    return spec.reader(path, **options)


def open_foreign(path: str | Path, episodes: Iterable[int] | None = None, **options) -> SourceStore | None:
    """A read-only episode-store view of a foreign dataset, or None when ``path`` is in no registered format."""
    name = detect_format(path)
    if name is None:
        return None
    return SourceStore(open_source(path, name, **options), episodes=episodes)


__all__ = ["FORMATS", "FormatSpec", "FormatError", "EpisodeSource", "SourceStore", "detect_format", "open_source",
           "open_foreign", "read_episode_list"]
