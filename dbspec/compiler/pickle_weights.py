"""Read torch's pickle weight files (`.pt` / `.ckpt` / `.pth`) without torch and without running their code.

`torch.save` (torch >= 1.6) writes a zip: `<archive>/data.pkl` (the pickled object, each tensor a call of
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` whose storage is a persistent id
`("storage", <storage class>, <key>, <device>, <numel>)`), `<archive>/data/<key>` (each storage's raw
bytes), `byteorder` and `version`. The unpickler below resolves globals from a fixed table of what
torch.save emits and imports nothing: any other global (a Lightning callback in an old SD `.ckpt`) becomes
an inert stub, so reading a file never runs its code. Only the pickle is read up front; a tensor's bytes
are read on demand (the plan reads a few scalar alphas).
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import attrs

from dbspec.compiler.safetensors_header import MAX_HEADER_BYTES, ModelFileError, TensorInfo
from dbspec.util.torch_files import LEGACY_MAGIC

_RESAVE = "re-save it with a torch >= 1.6 `torch.save`, or convert it to .safetensors"
# what zipfile raises on a damaged or unusual archive (encrypted: RuntimeError; another compression:
# NotImplementedError)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
    KeyError,
)
# torch's typed storage classes (torch.save of torch >= 1.6 names these) -> safetensors dtype spelling
_STORAGES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
}  # fmt: skip
# torch dtypes _rebuild_tensor_v3 names beside an UntypedStorage (dtypes without a typed storage class)
_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "bool": "BOOL", "complex64": "C64", "complex128": "C128", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
}  # fmt: skip
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
    "U32": 4, "U64": 8, "BOOL": 1, "C64": 8, "C128": 16, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip


class TorchOnlyError(ModelFileError):
    """A file torch.load reads that dbspec will not start an adapter from: torch's legacy serialization
    (unread without torch), or a pickle naming globals the run's torch.load(weights_only=True) refuses."""


@attrs.frozen(kw_only=True)
class _DType:
    name: str  # safetensors spelling


@attrs.frozen(kw_only=True)
class _StorageType:
    dtype: str | None  # None: UntypedStorage, the tensor's dtype comes with it


@attrs.frozen(kw_only=True)
class _Storage:
    dtype: str | None
    key: str  # `<archive>/data/<key>`


@attrs.frozen(kw_only=True)
class PickledTensor:
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # storage_offset, in elements
    key: str  # the storage's zip member under `<archive>/data/`

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(dtype=self.dtype, shape=self.shape)


class _Inert:
    """Whatever a global outside torch.save's table builds (a Lightning callback, a numpy scalar): nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def _tensor(storage, offset, size, stride, *rest, dtype: str | None = None) -> PickledTensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    kind = dtype or storage.dtype
    if int(offset) < 0 or any(int(s) < 0 for s in stride) or any(int(d) < 0 for d in size):
        raise pickle.UnpicklingError("a tensor with a negative offset, size or stride")
    if kind is None:
        raise pickle.UnpicklingError("a tensor of an untyped storage without a dtype")
    return PickledTensor(
        dtype=kind, shape=tuple(size), stride=tuple(stride), offset=int(offset), key=storage.key
    )


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError(f"a tensor of dtype {dtype!r}, which dbspec does not know")
    return _tensor(storage, offset, size, stride, dtype=dtype.name)


def _rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
    return data  # a Parameter is its tensor here


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args) if callable(func) else _Inert()  # a tensor subclass (nn.Buffer...): its tensor


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.storage", "UntypedStorage"): _StorageType(dtype=None),
    ("torch", "UntypedStorage"): _StorageType(dtype=None),
    **{("torch", name): _StorageType(dtype=dtype) for name, dtype in _STORAGES.items()},
    **{("torch", name): _DType(name=dtype) for name, dtype in _DTYPES.items()},
}


# globals torch.load(weights_only=True) allows beside those above (torch/_weights_only_unpickler.py), read
# here as inert stubs: a file naming only these loads in the run
_WEIGHTS_ONLY_TOO = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("builtins", "slice"), ("collections", "Counter"), ("torch", "Size"), ("torch", "device"),
    ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("_codecs", "encode"),
    ("torch.serialization", "_get_layout"), ("torch", "strided"),
}  # fmt: skip


class _Unpickler(pickle.Unpickler):
    """torch.save's pickle with a fixed table of globals; imports nothing, runs none of the file's code."""

    def __init__(self, file, archive: str):
        super().__init__(file)
        self.archive = archive
        self.foreign: set[str] = set()  # globals the run's weights_only load refuses

    def find_class(self, module: str, name: str):
        found = _GLOBALS.get((module, name))
        if found is None and (module, name) not in _WEIGHTS_ONLY_TOO:
            self.foreign.add(f"{module}.{name}")
        return _Inert if found is None else found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        kind = pid[1]
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"a storage of a type dbspec does not know ({pid[1]!r})")
        return _Storage(dtype=kind.dtype, key=f"{self.archive}/data/{pid[2]}")


@attrs.frozen(kw_only=True)
class PickleWeights:
    path: str
    tensors: dict[str, PickledTensor]
    big_endian: bool
    foreign: tuple[str, ...]  # globals outside torch.save's table (a Lightning callback): sorted

    def infos(self) -> dict[str, TensorInfo]:
        return {name: t.info for name, t in self.tensors.items()}

    def tensor_bytes(self, name: str) -> bytes:
        """The tensor's elements in C order, little-endian (its storage offset and strides honoured: a
        view of a larger storage reads only its own elements). Costs one Python step per element of a
        non-contiguous view; the plan reads scalars."""
        t = self.tensors[name]
        size = ITEMSIZE.get(t.dtype)
        if size is None:
            raise ModelFileError(
                self.path, f"tensor `{name}` is of dtype {t.dtype}, which dbspec cannot read"
            )
        numel = math.prod(t.shape)
        span = (sum((d - 1) * s for d, s in zip(t.shape, t.stride)) + 1) if numel else 0
        try:
            with zipfile.ZipFile(self.path) as z, z.open(t.key) as f:
                f.seek(t.offset * size)
                raw = f.read(span * size)
        except (OSError, *_ZIP_ERRORS) as e:
            raise ModelFileError(self.path, f"tensor `{name}`: its storage cannot be read ({e})") from e
        if len(raw) < span * size:
            raise ModelFileError(self.path, f"tensor `{name}` is truncated (the file is corrupt)")
        if _contiguous(t.shape, t.stride):
            out = raw[: numel * size]
        else:
            starts = (
                sum(i * s for i, s in zip(index, t.stride)) * size
                for index in itertools.product(*(range(d) for d in t.shape))
            )
            out = b"".join(raw[i : i + size] for i in starts)
        return _swap(out, size, t.dtype) if self.big_endian else out


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def _swap(raw: bytes, size: int, dtype: str) -> bytes:
    part = size // 2 if dtype.startswith("C") else size  # a complex number is two floats
    return b"".join(raw[i : i + part][::-1] for i in range(0, len(raw), part))


def read_pickle_weights(path: str | os.PathLike) -> PickleWeights:
    """The state dict of a torch.save zip file: the tensors of its `state_dict` (kohya's and Lightning's full
    checkpoints: `{"state_dict": ..., "epoch": ...}`), else of the top-level dict (a LoRA file); values that
    are no tensor (epoch, global_step) are left out. ModelFileError when the file is no torch
    zip file, torch's legacy format, or corrupt."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(LEGACY_MAGIC))
        if head == LEGACY_MAGIC:
            raise TorchOnlyError(
                path,
                "torch's legacy (pre-1.6, non-zip) serialization, which dbspec reads only through torch; "
                f"{_RESAVE}",
            )
        with zipfile.ZipFile(path) as z:
            archive, data = _read_pickle(path, z)
            order = f"{archive}/byteorder"  # absent in files of torch < 1.10: little-endian
            big = order in z.namelist() and z.read(order).strip() == b"big"
    except ModelFileError:
        raise
    except _ZIP_ERRORS as e:
        raise ModelFileError(path, f"not a torch.save zip file ({e}): truncated or corrupt; {_RESAVE}") from e
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from e
    unpickler = _Unpickler(io.BytesIO(data), archive)
    try:
        obj = unpickler.load()
    # any failure of a hostile or corrupt pickle is the file's, never an internal error
    except Exception as e:
        raise ModelFileError(path, f"its data.pkl cannot be read ({type(e).__name__}: {e}); {_RESAVE}") from e
    return PickleWeights(
        path=str(path),
        tensors=_state_dict(path, obj),
        big_endian=big,
        foreign=tuple(sorted(unpickler.foreign)),
    )


def read_start_file(path: str | os.PathLike) -> PickleWeights:
    """A torch.save file an adapter starts from: read_pickle_weights, and TorchOnlyError when it names a
    global the run's torch.load(weights_only=True) refuses."""
    weights = read_pickle_weights(path)
    if weights.foreign:
        raise TorchOnlyError(
            path,
            f"its pickle names `{weights.foreign[0]}`, which the run's torch.load(weights_only=True) refuses "
            "(it runs no code of a file); save the state dict alone (torch.save(dict_of_tensors)) or "
            "convert it to .safetensors",
        )
    return weights


def _read_pickle(path: Path, z: zipfile.ZipFile) -> tuple[str, bytes]:
    pickles = [i for i in z.infolist() if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelFileError(path, f"a zip without torch.save's `<archive>/data.pkl`; {_RESAVE}")
    if pickles[0].file_size > MAX_HEADER_BYTES:
        raise ModelFileError(path, f"its data.pkl is {pickles[0].file_size} bytes: corrupt or hostile")
    return pickles[0].filename.split("/")[0], z.read(pickles[0])


def _state_dict(path: Path, obj) -> dict[str, PickledTensor]:
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    inner = obj.get("state_dict")  # a pickle's dict, not a config: a missing key is no typo
    state = inner if isinstance(inner, dict) else obj  # as runtime/models.py and runtime/weight_files.py
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, PickledTensor)}
