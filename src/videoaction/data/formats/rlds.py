"""Open X-Embodiment RLDS datasets (TFDS folders of TFRecord shards), read without TensorFlow.

Folder: ``dataset_info.json`` (name, splits), ``features.json`` (the TFDS feature tree) and shards
``<name>-<split>.tfrecord-XXXXX-of-YYYYY``. Each record is one episode as a ``tf.train.Example`` whose keys are the
flattened feature paths: ``steps/observation/image`` (one encoded JPEG/PNG per step), ``steps/action`` (T * A
floats), ``steps/language_instruction`` (one string per step), ``steps/is_first`` ..., ``episode_metadata/*``.
Store keys drop ``steps/`` and join the rest with dots (``observation.image``, ``action``, ``is_first``); text
features become per-episode metadata (``language`` = the first step's ``language_instruction``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import EpisodeSource, FormatError
from videoaction.data.formats.tfrecord import iter_records, parse_example, read_record

DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
          "uint16": np.uint16, "bool": np.bool_}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").is_file() and any(path.glob("*.tfrecord*"))


def _flatten_features(node: dict, prefix: str, out: dict) -> None:
    """Walk TFDS's features.json into {flat path: (kind, shape, dtype, encoding)}."""
    if "featuresDict" in node:
        for name, child in node["featuresDict"]["features"].items():
            _flatten_features(child, f"{prefix}{name}/" if prefix or name else name, out)
        return
    if "sequence" in node:  # steps: a Dataset / Sequence of a nested feature
        _flatten_features(node["sequence"]["feature"], prefix, out)
        return
    key = prefix.rstrip("/")
    if "image" in node:
        img = node["image"]
        shape = tuple(int(d) for d in img["shape"]["dimensions"])
        dtype = img.get("dtype", "uint8")  # depth images are uint16 PNGs
        if dtype not in DTYPES:
            raise FormatError("features.json", "unsupported image dtype", key=key, found=dtype)
        out[key] = ("image", shape, np.dtype(DTYPES[dtype]), img.get("encodingFormat", "png"))
    elif "tensor" in node:
        t = node["tensor"]
        shape = tuple(int(d) for d in t.get("shape", {}).get("dimensions", []))
        dtype = t.get("dtype", "float32")
        if dtype not in DTYPES:
            raise FormatError("features.json", "unsupported tensor dtype", key=key, found=dtype)
        out[key] = ("tensor", shape, np.dtype(DTYPES[dtype]), None)
    elif "text" in node:
        out[key] = ("text", (), None, None)
    else:
        raise FormatError("features.json", "unsupported feature type", key=key, found=sorted(node))


def store_key(path: str) -> str:
    return path[len("steps/"):].replace("/", ".") if path.startswith("steps/") else path.replace("/", ".")


class RldsSource(EpisodeSource):
    format_name = "rlds"

    def __init__(self, path, split: str = "train", **_):
        self.path = root = Path(path)
        try:
            info = json.loads((root / "dataset_info.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise FormatError(root, f"unreadable ({exc})", key="dataset_info.json") from None
        if not (root / "features.json").is_file():
            raise FormatError(root, "missing feature description", key="features.json",
                              expected="TFDS features.json next to dataset_info.json")
        try:
            feats: dict = {}
            _flatten_features(json.loads((root / "features.json").read_text()), "", feats)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FormatError(root, f"unexpected features.json layout ({type(exc).__name__}: {exc})",
                              key="features.json") from None
        name = info.get("name", "")
        shards = sorted(root.glob(f"{name}-{split}.tfrecord*" if name else f"*-{split}.tfrecord*"))
        if not shards:
            raise FormatError(root, "no TFRecord shards for this split", key=f"{name}-{split}.tfrecord-*",
                              found=sorted(p.name for p in root.glob("*.tfrecord*"))[:5])
        self.features = {k: v for k, v in feats.items() if k.startswith("steps/")}
        self.text_keys = [k for k, v in self.features.items() if v[0] == "text"]
        self.specs = {store_key(k): (v[1], v[2]) for k, v in self.features.items() if v[0] != "text"}
        self.columns = {store_key(k): k for k in self.features}
        self.image_keys = tuple(store_key(k) for k, v in self.features.items()  # RGB cameras (not depth)
                                if v[0] == "image" and v[1][-1:] == (3,) and v[2] == np.uint8)
        self.index: list[tuple[Path, int]] = []
        lengths, language = [], []
        count_key = next((k for k, v in self.features.items() if v[0] != "image"), None)
        for shard in shards:  # one pass over the records builds the episode index
            for offset, data in iter_records(shard):
                ex = parse_example(data, shard)
                lengths.append(self._length(ex, shard, offset, count_key))
                text = ex.get("steps/language_instruction") or [b""]
                language.append(text[0].decode("utf-8", "replace") if text else "")
                self.index.append((shard, offset))
        if not self.index:
            raise FormatError(root, "the shards hold no episodes")
        self.lengths = np.array(lengths, dtype=np.int64)
        self.meta = {"language": language}
        self.attrs = {"dataset": name, "split": split, "version": info.get("version")}
        self.fps = None
        self._cache: tuple[int, dict] | None = None

    def _length(self, ex: dict, shard: Path, offset: int, count_key: str | None) -> int:
        key = count_key or next(iter(self.features))
        if key not in ex:
            raise FormatError(shard, "episode lacks a feature", key=f"{key} (record at {offset})")
        shape = self.features[key][1]
        n = len(ex[key]) // max(1, int(np.prod(shape))) if self.features[key][0] != "image" else len(ex[key])
        return int(n)

    def _episode(self, episode: int) -> dict:
        if self._cache is None or self._cache[0] != episode:
            shard, offset = self.index[episode]
            self._cache = (episode, parse_example(read_record(shard, offset), shard))
        return self._cache[1]

    def read(self, episode: int, key: str) -> np.ndarray:
        ex = self._episode(episode)
        path = self.columns[key]
        kind, shape, dtype, _ = self.features[path]
        n = int(self.lengths[episode])
        where = f"{path} (episode {episode})"
        if path not in ex:
            raise FormatError(self.index[episode][0], "episode lacks a feature", key=where)
        if kind == "image":
            import imagecodecs

            try:
                frames = np.stack([imagecodecs.imread(b) for b in ex[path]]) if ex[path] else np.empty((0, *shape))
            except Exception as exc:
                raise FormatError(self.index[episode][0], f"undecodable image ({exc})", key=where) from None
            if frames.ndim == 3:
                frames = frames[..., None]
            return self.check_array(frames, key, where, n)
        values = np.asarray(ex[path])
        if values.size != n * int(np.prod(shape)):
            raise FormatError(self.index[episode][0], "feature has the wrong number of values", key=where,
                              expected=f"{n} x {shape}", found=f"{values.size} values")
        return self.check_array(values.reshape(n, *shape).astype(dtype), key, where, n)
