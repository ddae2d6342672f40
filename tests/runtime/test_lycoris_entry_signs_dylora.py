"""Negative alphas on DyLoRA layers (issue 12, was DBS581 in a spec, DBS403 at conversion): lycoris-lora
4.1.3's DyLoraModule reads `alpha` as the rank only when it is None or 0 and keeps its sign (its `alpha`
buffer, which it saves, signed; get_weight's scale alpha / (b + 1) with block b drawn), and kohya's
networks.dylora DyLoRAModule alike (alpha / rank), so a preset file's DyLoRA entry's own `alpha = -2` and a
DyLoRA network's `network_alpha = -1` train those layers with their update flipped; the plan's DyLoRA layers
(runtime/dylora.py) at that alpha alike. Checked against lycoris-lora's create_network from the same preset
file on the tiny SD 1.x U-Net: each layer's class, dim, scale and block size, the training forward and the
drawn block's gradients for every block b (DyLoraModule.forward with `random.randint` fixed to b), and the
export's `alpha`; kohya's form against networks.dylora's formula. DyLoraModule keeps the base
apply_max_norm (no norm), so --scale_weight_norms never scales DyLoRA layers at any alpha. No tiny run."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.dylora import DyloraLayer
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_entry_signs import _plan, _preset, _theirs
from tests.runtime.test_lycoris_mixed_dylora import _classes, _lycoris_classes

dylora_module = pytest.importorskip("lycoris.modules.dylora")


def _drawn_blocks_alike(ours: DyloraLayer, module, monkeypatch) -> None:
    """`ours` (a DyLoRA layer of the plan) against LyCORIS's DyLoraModule `module` (after apply_to) holding
    the same blocks: for every block b, the training forward and each block's gradient (only b's)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, (down, up) in enumerate(zip(module.down_list, module.up_list)):
            down.copy_(ours.lora_dylora_down["default"][i].flatten(1))
            up.copy_(torch.randn(up.shape, generator=g) * 0.3)
            ours.lora_dylora_up["default"][i].copy_(up.view(ours.lora_dylora_up["default"][i].shape))
    module.multiplier = 1.0
    x = torch.randn(2, 5, ours.base_layer.in_features, generator=g)
    ours.train(), module.train()
    for b in range(module.block_count):
        monkeypatch.setattr(random, "randint", lambda lo, hi, b=b: b)
        ours.drawn["default"] = b
        mine, theirs = ours(x), module(x)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mine, ours.base_layer(x), atol=1e-4)
        mine.square().sum().backward()
        theirs.square().sum().backward()
        for part, listed in (("down", module.down_list), ("up", module.up_list)):
            for i, (p, q) in enumerate(zip(getattr(ours, f"lora_dylora_{part}")["default"], listed)):
                assert (p.grad is None) == (q.grad is None) == (i != b), (part, i, b)
                if p.grad is not None:
                    torch.testing.assert_close(p.grad.flatten(1), q.grad, rtol=1e-4, atol=1e-6)
                p.grad = q.grad = None


def _same_dylora_layers(pipe, tmp_path, monkeypatch, adapter, args, alpha, signed):  # noqa: F811
    """The plan's U-Net layers against lycoris-lora's network from the same preset, `args` and `alpha`: every
    layer's class, dim, scale and block size; each DyLoRA layer's drawn blocks (_drawn_blocks_alike); the
    export's alpha of each DyLoRA layer equal to LyCORIS's buffer, `signed` among them."""
    made, _ = _theirs(pipe, tmp_path, monkeypatch, args, alpha)
    theirs = {k: v for k, v in _lycoris_classes(made).items() if k.startswith("lora_unet_")}
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    assert _classes(unet, "lora_unet_") == theirs
    dylora = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert dylora
    exported = lycoris_state(unet=unet, text_encoders=[], family="sd1", dtype="fp32")
    alphas = {name: float(exported[f"{name}.alpha"]) for name in dylora}
    assert alphas == {name: pytest.approx(float(m.alpha)) for name, m in dylora.items()}
    assert signed in alphas.values()
    layers = {"lora_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules()}
    name = next(  # a Linear (the 1x1 proj_in / proj_out convolutions take images)
        n for n in dylora if float(dylora[n].alpha) == signed and isinstance(layers[n].base_layer, nn.Linear)
    )
    _drawn_blocks_alike(layers[name], dylora[name], monkeypatch)


def test_dylora_entry_negative_alpha_on_locon(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A DyLoRA entry's own `alpha = -2` (block_size 2) on a LoCon network: its dylora block at -2."""
    args = {"algo": "locon"}
    plan = _plan(tmp_path, _preset("dylora", "alpha = -2\nblock_size = 2"), args, 1.0)
    a = plan.adapter
    assert ("dylora", 4, -2.0, 2) in [(b.kind, b.rank, b.alpha, b.unit) for b in a.blocks], a.blocks
    _same_dylora_layers(pipe, tmp_path, monkeypatch, a, args, 1.0, -2.0)


def test_dylora_network_negative_alpha(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A DyLoRA network at `network_alpha = -1` (block_size 2) with a DyLoRA entry's own `alpha = -2`: the
    adapter's alpha -1, the entry's block -2."""
    args = {"algo": "dylora", "block_size": "2"}
    plan = _plan(tmp_path, _preset("dylora", "alpha = -2"), args, -1.0)
    a = plan.adapter
    assert (a.kind, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", -1.0, 2, "lycoris")
    assert [(b.kind, b.alpha) for b in a.blocks] == [("adapter", -2.0)], a.blocks
    _same_dylora_layers(pipe, tmp_path, monkeypatch, a, args, -1.0, -1.0)
    _same_dylora_layers(pipe, tmp_path, monkeypatch, a, args, -1.0, -2.0)


@pytest.mark.parametrize("b", [0, 1, 2])
def test_kohya_form_negative_alpha_is_networks_dylora(b):
    """networks.dylora's DyLoRAModule keeps the sign too: x A^T B^T x alpha / rank x sqrt(rank / ((b + 1)
    unit)) at alpha -1.5 (its formula, computed here), the drawn block alone with a gradient."""
    rank, unit, alpha = 6, 2, -1.5
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 12))
    base = copy.deepcopy(net)
    plan = AdapterPlan(kind="dylora", rank=rank, alpha=alpha, dylora_unit=unit, dylora_form="kohya")
    from dbspec.runtime.dylora import dylora_config

    inject_adapter_in_model(dylora_config(plan, ["0"], []), net, adapter_name="default")
    layer = net[0]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (*layer.lora_dylora_down["default"], *layer.lora_dylora_up["default"]):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(3, 5, 20, generator=g)
    layer.train()
    layer.drawn["default"] = b
    down, up = (t.detach() for t in layer.full("default"))
    expected = base[0](x) + x @ down.T @ up.T * (alpha / rank) * math.sqrt(rank / (b * unit + unit))
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    assert [p.grad is not None for p in layer.lora_dylora_down["default"]] == [i == b for i in range(3)]
    layer.eval()  # outside training every rank at alpha / rank, signed: the saved LoRA
    with torch.no_grad():
        torch.testing.assert_close(layer(x), base[0](x) + x @ down.T @ up.T * (alpha / rank))


def test_networks_dylora_negative_network_alpha_converts(tmp_path):
    """kohya's networks.dylora at `--network_alpha -1`: the dylora adapter (kohya's form) at alpha -1."""
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    command = (
        f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x "
        "--resolution=64 --network_module=networks.dylora --network_dim=4 --network_alpha=-1 "
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--network_args unit=2"
    )
    outcome = kohya(tmp_path, command=command)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    assert (a.kind, a.alpha, a.dylora_form, a.dylora_unit) == ("dylora", -1.0, "kohya", 2)
