"""What the LyCORIS-file-on-SD-1.x runtime tests (test_lycoris_sd_ia3_file / _oft / _glora / _factor /
_tucker / _scalar) share: lycoris-lora's network as kohya builds it over test_lycoris_sd_full_file's PRESET
on the tiny U-Net and CLIP, a file saved from it with every parameter moved at random (some modules left
out), dbspec's layers of the converted run under kohya's names, the converted run's plan, and the run from
the file that trains. A run from a file resumes bit for bit in test_lycoris_sd_tucker_file and
test_lycoris_mixed_file (resumes_bit_exact): the other kinds' runs from files train only, their kinds'
state resuming in their own runs (test_lycoris, test_lycoris_switches, test_lycoris_algo_maps, ...)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_sd_full_file import PRESET, _convert, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
OVERRIDES = ["model.base=builtin:tiny-sd1"]


def network(pipe, folder: Path, monkeypatch, dim: int = 4, **network_args):
    """kohya's steps: create_network(1.0, `dim`, 1.0, None, ...) over PRESET (written to folder/preset.toml)
    with `network_args` (algo=..., strings as kohya hands them), then apply_to, on copies of `pipe`'s CLIP
    and U-Net."""
    kept_lycoris_presets(monkeypatch)
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(1.0, dim, 1.0, None, named, unet, preset=str(preset), **network_args)
    made.apply_to(named, unet, True, True)
    return made


def moved_state(made, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """`made`'s state dict after every parameter moved by `scale` times a randn drawn after seeding `seed`."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * scale)
    return {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}


def save_state(state: dict[str, torch.Tensor], folder: Path, drop: int = 0) -> Path:
    """folder/prev.safetensors holding `state`; `drop`: every drop-th module (by sorted name) left out."""
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::drop] if drop else ():
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    path = folder / "prev.safetensors"
    save_file(state, str(path))
    return path


def saved_file(made, folder: Path, seed: int, scale: float, drop: int = 0) -> Path:
    """moved_state then save_state."""
    return save_state(moved_state(made, seed, scale), folder, drop)


def kohya_layers(comps, classes, adapter: bool = False, family: str = "sd1") -> dict[str, nn.Module]:
    """kohya name -> dbspec's layer of one of `classes`; `adapter`: only layers holding the run's adapter (in
    their `r`)."""
    from dbspec.runtime.adapters import lora_adapter
    from dbspec.runtime.exports import kohya_parts

    out = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family=family
    ):
        found = lora_adapter(module)
        for name, layer in found[0].named_modules() if found else ():
            if isinstance(layer, classes) and (not adapter or found[1] in getattr(layer, "r", {})):
                out[f"{prefix}_{to_path(name).replace('.', '_')}"] = layer
    return out


def converted_plan(tmp_path: Path, args: str):
    """The plan of the converted kohya command (test_lycoris_sd_full_file's, with `args`) on tiny-sd1."""
    from tests.unit.convert_kit import plan_of

    return plan_of(_convert(tmp_path, args), tmp_path, OVERRIDES)


def sample_input(base: nn.Module) -> torch.Tensor:
    """A random input for a Linear (batch 2) or a Conv2d (1 x channels x 8 x 8)."""
    if isinstance(base, nn.Linear):
        return torch.randn(2, base.in_features)
    return torch.randn(1, base.in_channels, 8, 8)


def whole_run(tmp_path: Path):
    """The converted spec run whole: its result and its final kohya export's tensors."""
    from tests.unit.convert_kit import out_path

    whole = execute(compile_spec(out_path(tmp_path), OVERRIDES))
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    return whole, load_file(str(export))


def trained(
    saved: dict[str, torch.Tensor], start: dict[str, torch.Tensor], keep: Callable[[str], bool]
) -> bool:
    """Whether some tensor `keep` selects moved from the file (`start`) in the export (`saved`)."""
    return any(keep(k) and k in start and not torch.allclose(v, start[k]) for k, v in saved.items())


def resumes_bit_exact(tmp_path: Path, whole, saved: dict[str, torch.Tensor]) -> None:
    """The same spec stopped after one step and resumed: the whole run's losses and export, bit for bit."""
    from tests.unit.convert_kit import out_path

    split = compile_spec(out_path(tmp_path), [*OVERRIDES, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    (again,) = Path(resumed.final).glob("*.kohya.safetensors")
    again = load_file(str(again))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)
