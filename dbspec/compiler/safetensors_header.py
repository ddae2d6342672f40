"""Read `.safetensors` headers without torch and without touching tensor data.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`), then the raw tensor bytes. Reading
the header is enough for tensor names, shapes and dtypes, so a multi-GB checkpoint costs one small read.
The JSON-config and fingerprint helpers beside it serve the same torch-free model inspection (modelinfo.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

# Same limit as the safetensors library: a larger header means a corrupt or hostile file.
MAX_HEADER_BYTES = 100_000_000
# A header is {name: {shape: [...]}}, 3 levels; json.loads recurses per level, so a deeper
# one is refused first.
_MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_BRACKET_RUN = re.compile(rb"([\[{]+)|([\]}]+)")
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16,
    "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


class ModelFileError(Exception):
    """A model file that cannot be read or is corrupt; `reason` says why in words a user can act on."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@attrs.frozen(kw_only=True)
class TensorInfo:
    dtype: str  # safetensors spelling: "F16", "BF16", "F32", "I64", ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # () -> 1, a scalar

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("F") or self.dtype == "BF16"


@attrs.frozen(kw_only=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]  # the optional "__metadata__" table (modelspec.*, ss_*, ...)


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape, read from the header only."""
    return read_safetensors(path).tensors


def read_safetensors(path: str | os.PathLike) -> SafetensorsHeader:
    """Tensors and `__metadata__` of one file; raises ModelFileError when the header is
    truncated or corrupt."""
    header, data_bytes = read_raw_header(Path(path))
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(path, '"__metadata__" is not a table of strings')
    tensors = {name: _tensor_info(path, name, entry, data_bytes) for name, entry in header.items()}
    return SafetensorsHeader(tensors=tensors, metadata=metadata)


def read_raw_header(path: Path) -> tuple[dict, int]:
    """The parsed JSON header and the number of data bytes after it."""
    try:
        with path.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelFileError(
                    path, f"truncated: {file_size} bytes, too short for a safetensors header"
                )
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES or n > file_size - 8:
                raise ModelFileError(
                    path,
                    f"header length {n} exceeds the file size {file_size} (truncated "
                    "download or not safetensors)",
                )
            raw = f.read(n)
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from e
    _check_nesting(path, raw)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(
            path, f"header is not valid JSON ({e}); the file is corrupt or not safetensors"
        ) from e
    except RecursionError:  # _check_nesting should have caught it; a corrupt file is never an internal error
        raise ModelFileError(
            path, "header nests too deeply; the file is corrupt or not safetensors"
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "header is not a JSON object")
    return header, file_size - 8 - n


def _check_nesting(path: Path, raw: bytes) -> None:
    """Refuse a header nested much deeper than _MAX_JSON_DEPTH before json.loads recurses into it.

    Strings go first (metadata values often hold JSON text), then everything but brackets, then empty
    pairs (a few levels: the limit is approximate, real headers are 3 deep); depth changes by whole runs
    of brackets, so the Python loop is per run and C-speed passes do the rest.
    """
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    for _ in range(2):
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    depth = 0
    for run in _BRACKET_RUN.finditer(brackets):
        depth += len(run.group(1) or b"") - len(run.group(2) or b"")
        if depth > _MAX_JSON_DEPTH:
            raise ModelFileError(
                path,
                f"header nests more than {_MAX_JSON_DEPTH} levels deep; the file is corrupt "
                "or not safetensors",
            )


def _tensor_info(path: str | os.PathLike, name: str, entry: object, data_bytes: int) -> TensorInfo:
    def bad(why: str) -> ModelFileError:
        return ModelFileError(path, f"tensor {name!r}: {why}")

    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise bad("entry lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise bad(f"data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"data_offsets {offsets!r} are out of order")
    if end > data_bytes:
        raise bad(f"data ends at byte {end} but the file holds {data_bytes} data bytes (truncated download?)")
    info = TensorInfo(dtype=dtype, shape=tuple(shape))
    bits = _DTYPE_BITS.get(dtype)  # dtypes newer than this table are accepted unchecked
    if bits is not None and end - begin != (info.numel * bits + 7) // 8:
        raise bad(f"{end - begin} data bytes do not match {dtype} {list(shape)}")
    return info


def read_sharded_index(index_path: str | os.PathLike) -> tuple[Path, ...]:
    """The shard files named by a `*.safetensors.index.json` (`weight_map`: tensor -> file), in order."""
    index_path = Path(index_path)
    index = read_json_object(index_path)
    weight_map = index["weight_map"] if "weight_map" in index else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ModelFileError(index_path, 'no "weight_map" table of tensor -> file')
    shards = tuple(index_path.parent / name for name in sorted(set(weight_map.values())))
    for shard in shards:
        if not shard.is_file():
            raise ModelFileError(index_path, f"shard {shard.name} is missing (incomplete download?)")
    return shards


def count_params(tensors: Iterable[tuple[str, TensorInfo]]) -> int:
    """Elements of floating-point tensors: integer buffers (position_ids, step counters)
    are not parameters."""
    return sum(t.numel for name, t in tensors if t.is_float and not name.endswith("position_ids"))


def dominant_dtype(tensors: Iterable[tuple[str, TensorInfo]]) -> str:
    """The floating dtype holding the most elements ("" when there is none)."""
    totals: dict[str, int] = {}
    for _, t in tensors:
        if t.is_float:
            totals[t.dtype] = totals.get(t.dtype, 0) + t.numel
    return max(sorted(totals), key=totals.__getitem__) if totals else ""


def merged_tensors(headers: Iterable[Mapping[str, TensorInfo]]) -> list[tuple[str, TensorInfo]]:
    """(name, info) pairs of several shards, ready for count_params / dominant_dtype."""
    return [item for header in headers for item in header.items()]


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON config (model_index.json, config.json, shard index) as a dict, or a
    ModelFileError saying why not."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ModelFileError(path, "not a JSON object")
    return value


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a weight file: a hub blob's name is its content hash; others use size and mtime."""
    real = Path(path).resolve()
    if real.parent.name == "blobs":
        return "blob:" + real.name
    stat = real.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
