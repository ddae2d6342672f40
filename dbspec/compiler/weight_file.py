"""One entry point for a weight file that starts an adapter (`adapter.init_weights`, kohya
`--network_weights`): a `.safetensors` file's header, or a torch.save file (any other name: `.pt`, `.ckpt`,
`.pth`, `.bin`) read by compiler/pickle_weights.py (refused when it names a global the run's weights_only
load refuses), both as tensor name -> TensorInfo, plus the bytes of one tensor (the plan reads scalar
alphas)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import attrs

from dbspec.compiler.pickle_weights import read_start_file
from dbspec.compiler.safetensors_header import TensorInfo, read_raw_header, read_safetensors_header
from dbspec.util.torch_files import is_torch_file


def kohya_torch_loads(path: str | os.PathLike) -> bool:
    """kohya's loader for a weights file by its name (load_weights, create_network_from_weights): torch.load
    for any name but `.safetensors`, whose file goes to safetensors' load_file."""
    return not str(path).endswith(".safetensors")


def read_weights_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape of a .safetensors or torch.save file; ModelFileError when unreadable."""
    return read_start_file(path).infos() if is_torch_file(path) else read_safetensors_header(path)


@attrs.frozen(kw_only=True)
class RawWeights:
    """A weight file's tensors as safetensors' JSON header spells them (`{"dtype", "shape"}` per name, no
    `__metadata__`) and a reader of one tensor's bytes (C order, little-endian)."""

    header: dict[str, dict]
    tensor_bytes: Callable[[str], bytes]


def read_raw_weights(path: str | os.PathLike) -> RawWeights:
    path = Path(path)
    if is_torch_file(path):
        weights = read_start_file(path)
        header = {n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in weights.tensors.items()}
        return RawWeights(header=header, tensor_bytes=weights.tensor_bytes)
    header, data_bytes = read_raw_header(path)
    header.pop("__metadata__", None)
    data_start = path.stat().st_size - data_bytes

    def tensor_bytes(name: str) -> bytes:
        begin, end = header[name].get("data_offsets", (0, 0))
        with path.open("rb") as f:
            f.seek(data_start + begin)
            return f.read(end - begin)

    return RawWeights(header=header, tensor_bytes=tensor_bytes)
