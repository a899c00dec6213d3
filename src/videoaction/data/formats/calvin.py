"""CALVIN split folders (``training/`` or ``validation/``): one ``episode_XXXXXXX.npz`` per *frame*.

Frame keys: ``actions`` (7, absolute), ``rel_actions`` (7), ``robot_obs`` (15), ``scene_obs`` (24), ``rgb_static``
(200, 200, 3), ``rgb_gripper`` (84, 84, 3), ``depth_*``. Episodes are the inclusive frame ranges of
``ep_start_end_ids.npy``; with ``split="language"`` they are the annotated windows of
``lang_annotations/auto_lang_ann.npy`` (``info.indx``) with their instruction (``language.ann``).
Store keys: ``action`` (from ``actions``), ``rel_action`` and every other frame key under its own name.

``auto_lang_ann.npy`` is a pickled Python dict: loading it runs pickle, so it needs ``allow_pickle=True``
(``--allow-pickle``), given only for files you trust.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import EpisodeSource, FormatError

RENAME = {"actions": "action", "rel_actions": "rel_action"}
LANG_FILE = "lang_annotations/auto_lang_ann.npy"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "ep_start_end_ids.npy").is_file()


def _frame_file(root: Path, i: int) -> Path:
    return root / f"episode_{i:07d}.npz"


class CalvinSource(EpisodeSource):
    format_name = "calvin"
    lazy_frames = True  # one file per frame: a sample reads only its frames

    def __init__(self, path, allow_pickle: bool = False, split: str = "episodes", **_):
        self.path = root = Path(path)
        if split not in ("episodes", "language"):
            raise FormatError(root, "unknown CALVIN split", expected="episodes or language", found=split)
        try:
            ids = np.load(root / "ep_start_end_ids.npy", allow_pickle=False)
        except ValueError as exc:
            raise FormatError(root, f"unreadable ({exc})", key="ep_start_end_ids.npy") from None
        if ids.ndim != 2 or ids.shape[1] != 2 or ids.dtype.kind not in "iu":
            raise FormatError(root, "wrong shape or dtype", key="ep_start_end_ids.npy",
                              expected="(N, 2) integer inclusive frame ranges", found=f"{ids.shape} {ids.dtype}")
        language = self._language(allow_pickle, required=(split == "language"))
        if split == "language":
            ranges = [(int(s), int(e)) for s, e in language[1]]
            texts = list(language[0])
        else:
            ranges = [(int(s), int(e)) for s, e in sorted(ids.tolist())]
            texts = [self._first_annotation(s, e, language) for s, e in ranges]
        self.ranges = ranges
        self.lengths = np.array([e - s + 1 for s, e in ranges], dtype=np.int64)
        first = self._load_frame(ranges[0][0])
        self.specs = {RENAME.get(k, k): (tuple(v.shape), v.dtype) for k, v in first.items()}
        self.inverse = {RENAME.get(k, k): k for k in first}
        self.image_keys = tuple(k for k, (s, d) in self.specs.items() if len(s) == 3 and s[-1] == 3 and d == np.uint8)
        self.meta = {"language": texts, "frame_start": [s for s, _ in ranges]}
        self.attrs = {"split": split}
        self.fps = 30.0

    def _language(self, allow_pickle: bool, required: bool):
        f = self.path / LANG_FILE
        if not f.is_file():
            if required:
                raise FormatError(self.path, "missing language annotations", key=LANG_FILE)
            return None
        if not allow_pickle:
            if required:
                raise FormatError(self.path, "CALVIN's language file is a pickled Python dict and loading it runs "
                                  "pickle; pass --allow-pickle (allow_pickle=True) if you trust this file",
                                  key=LANG_FILE)
            return None
        try:
            ann = np.load(f, allow_pickle=True).item()
            return list(ann["language"]["ann"]), [tuple(x) for x in ann["info"]["indx"]]
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise FormatError(self.path, f"unexpected annotation layout ({type(exc).__name__}: {exc})", key=LANG_FILE,
                              expected="{'language': {'ann': [...]}, 'info': {'indx': [(start, end), ...]}}") from None

    @staticmethod
    def _first_annotation(start: int, end: int, language) -> str:
        if language is None:
            return ""
        for text, (s, e) in zip(*language):
            if start <= s and e <= end:
                return str(text)
        return ""

    def _load_frame(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of frame ``i`` (only ``keys`` when given: an npz member is read only when accessed)."""
        f = _frame_file(self.path, i)
        if not f.is_file():
            raise FormatError(self.path, "frame file missing", key=f.name)
        try:
            with np.load(f, allow_pickle=False) as z:
                missing = [k for k in (keys or []) if k not in z.files]
                if missing:
                    raise FormatError(self.path, "frame lacks a key", key=f"{f.name}:{missing[0]}",
                                      expected=f"keys {sorted(self.inverse.values())}", found=sorted(z.files))
                return {k: z[k] for k in (keys or z.files)}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise FormatError(self.path, f"unreadable frame ({type(exc).__name__}: {exc}); truncated file?",
                              key=f.name) from None

    def read_rows(self, episode: int, key: str, rows: np.ndarray) -> np.ndarray:
        s, e = self.ranges[episode]
        raw = self.inverse[key]
        frames = [self._load_frame(s + int(r), [raw])[raw] for r in rows]
        return self.check_array(np.stack(frames), key, raw, len(rows))

    def read(self, episode: int, key: str) -> np.ndarray:
        s, e = self.ranges[episode]
        return self.read_rows(episode, key, np.arange(e - s + 1))
