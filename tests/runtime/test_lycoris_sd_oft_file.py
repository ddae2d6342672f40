"""lycoris.kohya --network_weights with a LyCORIS Diag-OFT / BOFT file (`oft_blocks`, `rescale`, `alpha`) on
SD 1.x (issue 12; runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's DiagOFTModules / ButterflyOFTModules
over a preset file on the tiny U-Net and CLIP (`rescaled`), every block and rescale moved at random, saved as
its network saves them (some modules left out). kohya's steps, create_network (the same algo, preset and
arguments), apply_to, load_weights (`load_state_dict(strict=False)`: no load hook; a module the file lacks
keeps its zero blocks and its rescale of ones; the file's `alpha` loads into a buffer the forward never
reads), and dbspec's converted run start every layer alike (blocks, rescale, outputs); a tiny run from the
file trains and resumes bit for bit; blocks of another shape fail naming the tensor, as lycoris-lora fails."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_algo_maps import NETWORK_ATTRS
from tests.runtime.test_lycoris_sd_full_file import PRESET, _convert, _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
ALGOS = ("diag-oft", "boft")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder: Path, monkeypatch, algo: str):
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in NETWORK_ATTRS:  # create_network's apply_preset sets the class's attributes
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo=algo, preset=str(preset), rescaled="True"
    )
    made.apply_to(named, unet, True, True)
    return made


def _oft_file(pipe, folder: Path, monkeypatch, algo: str, drop: int = 0) -> Path:
    made = _network(pipe, folder, monkeypatch, algo)
    torch.manual_seed(6)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::drop] if drop else ():
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    path = folder / "prev.safetensors"
    save_file(state, str(path))
    return path


def _ours(comps) -> dict[str, nn.Module]:
    from dbspec.runtime.adapters import lora_adapter
    from dbspec.runtime.exports import kohya_parts
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    out = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family="sd1"
    ):
        found = lora_adapter(module)
        for name, layer in found[0].named_modules() if found else ():
            if isinstance(layer, DiagOftLayer):
                out[f"{prefix}_{to_path(name).replace('.', '_')}"] = layer
    return out


def _plan(tmp_path, algo: str):
    from tests.unit.convert_kit import plan_of

    args = f'--network_args "algo={algo}" "preset=preset.toml" "rescaled=True"'
    plan = plan_of(_convert(tmp_path, args), tmp_path, ["model.base=builtin:tiny-sd1"])
    assert plan.adapter.kind == algo and plan.adapter.init_partial and plan.adapter.oft_rescaled
    return plan


@pytest.mark.parametrize("algo", ALGOS)
def test_oft_file_starts_as_lycoris_loads_it_trains_and_resumes(pipe, tmp_path, monkeypatch, algo):
    path = _oft_file(pipe, tmp_path, monkeypatch, algo, drop=6)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    made = _network(pipe, tmp_path, monkeypatch, algo)
    loaded = made.load_weights(str(path))
    assert set(loaded) == {"missing keys"}  # strict=False: the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    plan = _plan(tmp_path, algo)
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        torch.testing.assert_close(
            layer.lora_oft_blocks["default"], lyco.oft_blocks, rtol=0, atol=0, msg=name
        )
        torch.testing.assert_close(layer.lora_oft_rescale["default"], lyco.rescale, rtol=0, atol=0, msg=name)
        assert bool(torch.count_nonzero(lyco.oft_blocks)) == (name in in_file), name
        base = layer.get_base_layer()
        convs += isinstance(base, nn.Conv2d)
        x = (
            torch.randn(2, base.in_features)
            if isinstance(base, nn.Linear)
            else torch.randn(1, base.in_channels, 8, 8)
        )
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "convolutions start from the file too"

    from tests.unit.convert_kit import out_path

    overrides = ["model.base=builtin:tiny-sd1"]
    whole = execute(compile_spec(out_path(tmp_path), overrides))
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved, start = load_file(str(export)), load_file(str(path))
    assert any(
        k.endswith(".oft_blocks") and k in start and not torch.allclose(v, start[k]) for k, v in saved.items()
    ), "the run trained the blocks"
    split = compile_spec(out_path(tmp_path), [*overrides, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    (again,) = Path(resumed.final).glob("*.kohya.safetensors")
    again = load_file(str(again))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


@pytest.mark.parametrize("algo", ALGOS)
def test_oft_blocks_of_another_shape_fail_naming_the_tensor(pipe, tmp_path, monkeypatch, algo):
    path = _oft_file(pipe, tmp_path, monkeypatch, algo)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.oft_blocks"))
    state[key] = state[key][..., :-1, :-1].contiguous()  # smaller blocks
    save_file(state, str(path))
    made = _network(pipe, tmp_path, monkeypatch, algo)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    with pytest.raises(ValueError, match=rf"`{key}` has shape \[[\d, ]+\]; the run's layer has"):
        _loaded(_plan(tmp_path, algo))
