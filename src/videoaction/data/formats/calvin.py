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
        self._episode_cache: tuple[int, dict] | None = None

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

    def _load_frame(self, i: int) -> dict[str, np.ndarray]:
        f = _frame_file(self.path, i)
        if not f.is_file():
            raise FormatError(self.path, "frame file missing", key=f.name)
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(self.path, f"unreadable frame ({type(exc).__name__}: {exc}); truncated file?",
                              key=f.name) from None

    def _episode(self, episode: int) -> dict[str, np.ndarray]:
        if self._episode_cache is not None and self._episode_cache[0] == episode:
            return self._episode_cache[1]
        s, e = self.ranges[episode]
        frames = [self._load_frame(i) for i in range(s, e + 1)]
        out = {}
        for key, raw in self.inverse.items():
            if any(raw not in fr for fr in frames):
                raise FormatError(self.path, "frame lacks a key", key=raw, expected=f"in every frame {s}..{e}")
            out[key] = self.check_array(np.stack([fr[raw] for fr in frames]), key, raw, e - s + 1)
        self._episode_cache = (episode, out)
        return out

    def read(self, episode: int, key: str) -> np.ndarray:
        return self._episode(episode)[key]
