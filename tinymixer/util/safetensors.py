"""The safetensors format, read and written with NumPy alone (no PyTorch, no ``safetensors`` package).

A file is: 8 bytes, the length N of a header (unsigned 64-bit, little-endian); N bytes of JSON, mapping each tensor's
name to ``{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`` (byte offsets into the data that follows,
which the tensors tile without gaps or overlaps) plus an optional ``"__metadata__"`` of strings; then the data, every
tensor C-ordered and little-endian. timm publishes its models so (``model.safetensors`` on its hub).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .files import atomic_open

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U8": "u1", "BOOL": "?"}  # BF16: read as uint16 and widened to float32 below
MAX_HEADER = 100 << 20  # a header larger than 100 MB is not a real file's


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file; the message says what is wrong with it."""


def read_safetensors(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a safetensors file as a NumPy array (bfloat16 widened to float32), and its metadata."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise SafetensorsError(f"{path} is not a safetensors file: {len(data)} bytes, shorter than its header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER, len(data) - 8):
        raise SafetensorsError(f"{path} is not a safetensors file (or is truncated): its header would be {n} bytes")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path} is not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{path}: the header's __metadata__ is not a JSON object")
    body = memoryview(data)[8 + n:]
    arrays, spans = {}, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: the header's entry for {name!r} is malformed: {entry!r}") from None
        whole = [v for v in (*shape, begin, end) if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
        if len(whole) != len(shape) + 2 or not isinstance(dtype, str):
            raise SafetensorsError(f"{path}: the header's entry for {name!r} is malformed (shape and offsets must "
                                   f"be whole numbers >= 0, dtype a name): {entry!r}")
        if dtype not in DTYPES and dtype != "BF16":
            raise SafetensorsError(f"{path}: {name!r} has the unsupported dtype {dtype!r}")
        item = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize
        if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * item:
            raise SafetensorsError(f"{path}: {name!r} ({dtype} {list(shape)}) does not fit its bytes {begin}-{end} of "
                                   f"{len(body)}: the file is truncated or corrupted")
        spans.append((begin, end))
        raw = np.frombuffer(body[begin:end], dtype="<u2" if dtype == "BF16" else DTYPES[dtype])
        if dtype == "BF16":  # the top half of a float32's bits
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        arrays[name] = raw.reshape(shape).astype(raw.dtype.newbyteorder("="), copy=True)
    spans.sort()
    if any(a_end != b_begin for (_, a_end), (b_begin, _) in zip(spans, spans[1:], strict=False)) or (
            spans and (spans[0][0] != 0 or spans[-1][1] != len(body))):
        raise SafetensorsError(f"{path}: the tensors do not tile the data (gaps, overlaps or trailing bytes)")
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def write_safetensors(path: Path | str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
                      ) -> Path:
    """Write arrays (float64/32/16, integer or bool) as a safetensors file, atomically."""
    names = {np.dtype(v).str.lstrip("<>|="): k for k, v in DTYPES.items()}
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    chunks, offset = [], 0
    for name, value in arrays.items():
        if name == "__metadata__":
            raise SafetensorsError("a tensor cannot be named __metadata__: the format keeps that name for metadata")
        value = np.asarray(value, order="C")  # (not ascontiguousarray: it would make a 0-d array 1-d)
        key = value.dtype.newbyteorder("<").str.lstrip("<>|=")
        if key not in names:
            raise SafetensorsError(f"cannot write {name!r}: dtype {value.dtype} has no safetensors name")
        raw = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": names[key], "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header padded to 8 bytes, as the reference writer does
    with atomic_open(path) as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    return Path(path)
