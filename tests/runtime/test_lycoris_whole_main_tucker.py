"""A full network's preset file entries of another algorithm with their own `use_tucker` on tiny SD 1.x (issue
12; was DBS403: a full / IA^3 adapter's [[adapter.blocks]] of another kind held no Tucker form): the LoCon
ResNets' block `tucker` builds each 3x3 convolution as LyCORIS's LoConModule with use_tucker (1x1
`lora_down`, 3x3 `lora_mid`, 1x1 `lora_up`), checked against lycoris-lora 4.1.3's create_network from the
same preset (each module's class, dim, scale and tensor shapes), and one tiny run whose kohya export loads in
lycoris-lora's create_network_from_weights to the trained U-Net's output."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris import loader  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    _converted_plan,
    _lycoris,
    pipe,
)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the ResNets' LoCon entry in its Tucker form (its 3x3 convolutions; the 1x1 shortcuts stay plain)
TUCKER = MIXED.replace("alpha = 2\n", "alpha = 2\nuse_tucker = true\n", 1)
# LoHa on the ResNets, the network's use_tucker reaching them (hada_t1 / hada_t2 on their 3x3 convolutions)
LOHA_RESNETS = MIXED.replace('algo = "locon"\ndim = 4', 'algo = "loha"\ndim = 4', 1)
CASES = {
    "entry": (TUCKER, {}, ("lora", "on")),
    "network": (LOHA_RESNETS, {"use_tucker": "True"}, ("loha", "on")),
}


def _shapes(made) -> dict[str, tuple[int, ...]]:
    """The LoCon / LoHa modules' tensors in the file's keys, with their shapes (FullModule's and IA3Module's
    left out: no size of the entries')."""
    out = {}
    for m in made.unet_loras:
        if type(m).__name__ in ("LoConModule", "LohaModule"):
            for key, value in m.state_dict().items():
                if key != "alpha":
                    out[f"{m.lora_name}.{key}"] = tuple(value.shape)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_network_entries_tucker_build_train_and_load_in_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    loader,  # noqa: F811
    case,
):
    """The plan gives the ResNets' block `tucker = "on"` (an entry's own use_tucker on its LoCon, or the
    network's reaching its LoHa; the MLPs' LoHa block on Linears none); every U-Net layer is LyCORIS's class
    at its dim and scale, the ResNets' 3x3 convolutions with their Tucker core (`lora_mid`, `hada_t1` /
    `hada_t2`); a tiny run's export holds the LoCon / LoHa tensors in LyCORIS's keys and shapes and loads
    strictly into create_network_from_weights at the trained U-Net's output."""
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    preset, network, (kind, tucker) = CASES[case]
    args = " ".join(f'"{k}={v}"' for k, v in network.items())
    path, plan = _converted_plan(tmp_path, "whole_tucker", "full", args, text=preset)
    resnets = [b for b in plan.adapter.blocks if b.kind == kind and b.alpha == 2.0]  # alpha 2: the ResNets
    assert [b.tucker for b in resnets] == [tucker]
    made = _lycoris(pipe, path, monkeypatch, "full", **network)
    theirs = {k: v for k, v in _lycoris_classes(made).items() if k.startswith("lora_unet_")}
    shapes = _shapes(made)
    core = ".lora_mid.weight" if kind == "lora" else ".hada_t1"
    assert any(k.endswith(core) for k in shapes)  # the Tucker form in LyCORIS's own build

    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    run = execute(compile_spec(spec, [*base, "output.dir=tucker"]), keep_models=True)
    assert run.status == "finished"
    trained = run.components.unet.eval()
    assert _classes(trained, "lora_unet_") == theirs
    (export,) = Path(run.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    ours = {k: tuple(v.shape) for k, v in saved.items() if k in shapes or k.endswith((core, ".hada_t2"))}
    assert ours == shapes

    fresh = copy.deepcopy(pipe.unet)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    loaded, _ = loader(1.0, str(export), None, named, fresh, for_inference=True)  # every module: the file's
    loaded.apply_to(named, fresh, apply_text_encoder=False, apply_unet=True)
    assert sum(bool(getattr(m, "tucker", False)) for m in loaded.unet_loras) > 0
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(fresh), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it
