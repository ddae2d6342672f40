"""compiler/pickle_weights.py: torch.save's zip files read without torch (the test writes them with torch):
names, dtypes and shapes as read_safetensors_header gives them, a tensor's bytes (its storage offset and
strides honoured), kohya's full checkpoint's `state_dict`, and the files it cannot read named with what to do.
Reading never imports a module the file names (a stub stands in)."""

from __future__ import annotations

import collections
import sys
import zipfile

import pytest
import torch

from dbspec.compiler.pickle_weights import TorchOnlyError, read_pickle_weights
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import read_raw_weights, read_weights_header


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_dtypes_shapes_and_values_match_torch(tmp_path):
    big = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(
        bf16=torch.randn(3, 5).to(torch.bfloat16),
        fp16=torch.randn(7).half(),
        fp32=torch.randn(2, 3, 1, 1),
        alpha=torch.tensor(4.0),  # 0-d, as kohya saves an alpha
        param=torch.nn.Parameter(torch.randn(3, 2)),
        rows=big[1:3],  # a view at an offset into a larger storage
        cols=big[:, 2:4],  # a non-contiguous view
        transposed=big.t(),
        ints=torch.arange(5, dtype=torch.int64),
        f8=torch.randn(4).to(torch.float8_e4m3fn),  # _rebuild_tensor_v3 beside an UntypedStorage
    )
    path = tmp_path / "w.pt"
    torch.save(state, path)
    weights = read_pickle_weights(path)
    expected_dtypes = {
        "bf16": "BF16", "fp16": "F16", "fp32": "F32", "alpha": "F32", "param": "F32", "rows": "F32",
        "cols": "F32", "transposed": "F32", "ints": "I64", "f8": "F8_E4M3",
    }  # fmt: skip
    header = read_weights_header(path)
    assert {k: v.dtype for k, v in header.items()} == expected_dtypes
    assert {k: v.shape for k, v in header.items()} == {k: tuple(v.shape) for k, v in state.items()}
    for name, tensor in state.items():
        assert weights.tensor_bytes(name) == _bytes(tensor), name


def test_a_scalar_alpha_reads_through_the_raw_reader(tmp_path):
    from dbspec.compiler.lora_file import _scalar

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        path = tmp_path / f"{dtype}.ckpt"
        torch.save({"m.alpha": torch.tensor(0.5, dtype=dtype)}, path)
        raw = read_raw_weights(path)
        assert _scalar(path, "m.alpha", raw.header["m.alpha"], raw) == 0.5


def test_a_full_checkpoint_reads_its_state_dict_and_never_imports_what_it_names(tmp_path):
    """kohya's / Lightning's `{"state_dict": ..., "epoch", "global_step"}`; an object of a module that is not
    imported (a callback) reads as an inert stub and the module stays unimported."""
    module = type(sys)("dbspec_fake_lightning")
    exec("class Callback:\n    def __init__(self):\n        self.best = 1\n", module.__dict__)
    module.Callback.__module__ = "dbspec_fake_lightning"
    sys.modules["dbspec_fake_lightning"] = module
    try:
        inner = {"model.w": torch.ones(2, 3, dtype=torch.float16)}
        torch.save(
            {"state_dict": inner, "epoch": 3, "global_step": 7, "callbacks": {"c": module.Callback()}},
            tmp_path / "full.ckpt",
        )
    finally:
        del sys.modules["dbspec_fake_lightning"]
    weights = read_pickle_weights(tmp_path / "full.ckpt")
    assert {k: (v.dtype, v.shape) for k, v in weights.infos().items()} == {"model.w": ("F16", (2, 3))}
    assert "dbspec_fake_lightning" not in sys.modules
    assert weights.foreign == ("dbspec_fake_lightning.Callback",)
    # the run's torch.load(weights_only=True) refuses it: an adapter does not start from it
    with pytest.raises(TorchOnlyError, match="dbspec_fake_lightning.Callback.*weights_only"):
        read_weights_header(tmp_path / "full.ckpt")
    torch.save({"state_dict": inner, "epoch": 3, "global_step": 7}, tmp_path / "kohya.ckpt")
    assert set(read_weights_header(tmp_path / "kohya.ckpt")) == {"model.w"}


def test_nested_dict_beside_top_level_tensors_is_left_out(tmp_path):
    torch.save({"a": torch.zeros(1), "extra": {"b": torch.zeros(2)}}, tmp_path / "n.pth")
    assert set(read_weights_header(tmp_path / "n.pth")) == {"a"}


def test_the_legacy_format_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchOnlyError) as exc:
        read_weights_header(path)
    assert exc.value.path == str(path) and "legacy" in exc.value.reason and ".safetensors" in exc.value.reason


@pytest.mark.parametrize("damage", ["truncated", "not_zip", "zip_without_pickle", "bad_pickle"])
def test_a_corrupt_file_is_a_model_file_error(tmp_path, damage):
    path = tmp_path / "w.pt"
    torch.save({"a.alpha": torch.tensor(1.0)}, path)
    whole = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "not_zip":
        path.write_bytes(b"<html>404</html>")
    elif damage == "zip_without_pickle":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("w/other.txt", "x")
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("w/data.pkl", b"\x80\x02c__builtin__\nnope")
    with pytest.raises(ModelFileError) as exc:
        read_weights_header(path)
    assert exc.value.path == str(path) and exc.value.reason


def test_a_file_is_told_torch_or_safetensors_by_its_first_bytes(tmp_path):
    """util/torch_files.py: the content decides, whatever the name; a file of neither kind goes by its name
    (so its reader names the problem). A safetensors header whose length's first byte is 0x80 (a pickle's
    PROTO opcode) is still safetensors."""
    from safetensors.torch import save_file

    from dbspec.util.torch_files import is_torch_file

    torch.save({"w": torch.ones(2)}, tmp_path / "zip.safetensors")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.st", _use_new_zipfile_serialization=False)
    save_file({"w": torch.ones(2)}, str(tmp_path / "st.pt"))
    name = next(f"w{'x' * n}" for n in range(200) if _header_length(tmp_path, f"w{'x' * n}") % 256 == 0x80)
    save_file({name: torch.ones(2)}, str(tmp_path / "proto.bin"))
    assert (tmp_path / "proto.bin").read_bytes()[0] == 0x80
    (tmp_path / "junk.bin").write_bytes(b"<html>")
    (tmp_path / "junk.safetensors").write_bytes(b"<html>")
    told = {p.name: is_torch_file(p) for p in tmp_path.iterdir() if p.suffix != ".probe"}
    assert told == {
        "zip.safetensors": True,
        "legacy.st": True,
        "st.pt": False,
        "proto.bin": False,
        "junk.bin": True,
        "junk.safetensors": False,
    }
    assert is_torch_file(tmp_path / "missing.pt") and not is_torch_file(tmp_path / "missing.safetensors")


def _header_length(tmp_path, name: str) -> int:
    from safetensors.torch import save_file

    probe = tmp_path / "h.probe"
    save_file({name: torch.ones(2)}, str(probe))
    return int.from_bytes(probe.read_bytes()[:8], "little")
