"""TFRecord framing and the ``tf.train.Example`` protobuf, without TensorFlow.

A record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`` (little endian);
masked = ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2**32. ``data`` is a serialised ``tf.train.Example``::

    message Example  { Features features = 1; }
    message Features { map<string, Feature> feature = 1; }
    message Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    message BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

The message classes are built at run time from that definition with ``protobuf``'s descriptor_pb2.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from videoaction.data.formats.base import FormatError

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(path: Path, check_crc: bool = True) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of every record; named errors for truncated files and CRC mismatches."""
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise FormatError(path, "truncated record header", key=f"offset {offset}",
                                  expected="12 bytes", found=f"{len(header)} bytes")
            length, length_crc = struct.unpack("<QI", header)
            if check_crc and masked_crc(header[:8]) != length_crc:
                raise FormatError(path, "record length CRC mismatch (corrupt or not a TFRecord file)",
                                  key=f"offset {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise FormatError(path, "truncated record", key=f"offset {offset}", expected=f"{length + 4} bytes",
                                  found=f"{len(data) + len(footer)} bytes")
            if check_crc and masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise FormatError(path, "record data CRC mismatch (corrupt file)", key=f"offset {offset}")
            yield offset, data


def read_record(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        length, _ = struct.unpack("<QI", f.read(12))
        data = f.read(length)
    if len(data) < length:
        raise FormatError(path, "truncated record", key=f"offset {offset}")
    return data


def write_records(path: Path, payloads: list[bytes]) -> None:
    with open(path, "wb") as f:
        for data in payloads:
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data)))


@lru_cache(maxsize=1)
def example_class():
    """The ``tf.train.Example`` message class, built from its definition at run time."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="videoaction_tf_example.proto", package="tensorflow",
                                             syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto

    for name, ftype in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        m = fdp.message_type.add(name=name)
        fld = m.field.add(name="value", number=1, type=ftype, label=F.LABEL_REPEATED)
        if ftype != F.TYPE_BYTES:
            fld.options.packed = True
    feat = fdp.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for number, (fname, tname) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                             ("int64_list", "Int64List")), start=1):
        feat.field.add(name=fname, number=number, type=F.TYPE_MESSAGE, type_name=f".tensorflow.{tname}",
                       label=F.LABEL_OPTIONAL, oneof_index=0)
    feats = fdp.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature",
                    label=F.LABEL_OPTIONAL)
    feats.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, type_name=".tensorflow.Features.FeatureEntry",
                    label=F.LABEL_REPEATED)
    ex = fdp.message_type.add(name="Example")
    ex.field.add(name="features", number=1, type=F.TYPE_MESSAGE, type_name=".tensorflow.Features",
                 label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def parse_example(data: bytes, where: Path) -> dict[str, np.ndarray | list[bytes]]:
    """feature name -> float32 / int64 array or list of bytes."""
    ex = example_class()()
    try:
        ex.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError
        raise FormatError(where, f"record is not a tf.train.Example ({exc})") from None
    out: dict = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "bytes_list":
            out[name] = list(feat.bytes_list.value)
        elif kind == "float_list":
            out[name] = np.asarray(feat.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[name] = np.asarray(feat.int64_list.value, dtype=np.int64)
        else:
            out[name] = np.zeros(0, dtype=np.float32)
    return out


def build_example(features: dict) -> bytes:
    """Serialise ``{name: list[bytes] | float array | int array}`` as a tf.train.Example."""
    ex = example_class()()
    for name, value in features.items():
        feat = ex.features.feature[name]
        if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], bytes)):
            feat.bytes_list.value.extend(value)
        else:
            arr = np.asarray(value).reshape(-1)
            if arr.dtype.kind == "f":
                feat.float_list.value.extend(arr.astype(np.float32).tolist())
            else:
                feat.int64_list.value.extend(arr.astype(np.int64).tolist())
    return ex.SerializeToString()
