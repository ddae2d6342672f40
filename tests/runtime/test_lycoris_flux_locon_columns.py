"""lycoris.kohya algo=lora / locon with dora_wd and wd_on_output=False on kohya's fused Flux Linears (issue
12; was DBS403 / DBS509): LoConModule(weight_decompose=True, wd_on_out=False) on the fused Linear keeps one
magnitude per input column of the stacked weight, its norm spanning every part's merged rows. dbspec's parts
share one (1, in) `dora_scale` (runtime/lycoris_dora.py tie_fused_doras) beside their shared down; checked
here against lycoris-lora 4.1.3's LoConModule on the fused Linear holding the same values (outputs, the
magnitude's, down's and ups' gradients), a tiny run resumed bit-exact, its kohya_lora export's (1, in)
dora_scale loading into that module with the trained outputs, its peft folder loading back, and a run
started from a LyCORIS file of such modules taking each fused layer's (1, in) magnitude."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.locon import LoConModule
from lycoris.modules.lokr import LokrModule
from safetensors.torch import load_file, save_file

from dbspec.runtime.lycoris_dora import dora_scale_of
from tests.runtime.runspec import make_plan, whole_and_resumed
from tests.runtime.test_lycoris_flux import (
    ATTN_ONLY,
    BASE,
    _base_transformer,
    _double_block_layers,
    _fused_linear,
)

COLUMNS = 'dora = true\ndora_form = "lycoris"\ndora_axis = "input"\n'
SPEC = ATTN_ONLY.replace("fused_projections = true\n", "fused_projections = true\n" + COLUMNS)


def _locon(parts, rank: int, alpha: float, tensors=None, name: str = "") -> LoConModule:
    """lycoris-lora's LoConModule (weight_decompose, wd_on_out=False) on the fused Linear of `parts`: loaded
    from `tensors` (a file's `name` module), else holding the parts' trained values."""
    module = LoConModule(
        "qkv",
        _fused_linear([p.base_layer for p in parts]),
        1.0,
        rank,
        alpha,
        weight_decompose=True,
        wd_on_out=False,
    )
    with torch.no_grad():
        if tensors is not None:
            own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
            module.load_state_dict(own)
        else:
            module.lora_down.weight.copy_(parts[0].lora_A["default"].weight)
            module.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in parts]))
            assert module.dora_scale.shape == dora_scale_of(parts[0], "default").shape
            module.dora_scale.copy_(dora_scale_of(parts[0], "default"))
    module.apply_to()
    return module


def test_fused_locon_dora_per_input_column_is_lycoris_wd_on_out_false(tmp_path):
    extra = SPEC + '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    assert plan.adapter.dora and plan.adapter.dora_axis == "input"
    transformer = whole.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    scale = dora_scale_of(qkv[0], "default")
    assert all(dora_scale_of(p, "default") is scale for p in qkv) and scale.shape == (1, 16)
    start = _fused_linear([p.base_layer for p in qkv]).weight.norm(dim=0, keepdim=True)  # LyCORIS's start
    assert not torch.allclose(scale.detach(), start, atol=1e-7)  # trained
    theirs = _locon(qkv, 4, 2.0)
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    ours = torch.cat([p(x) for p in qkv], dim=-1)
    expected = theirs.eval()(x)
    assert not torch.allclose(ours, torch.cat([p.base_layer(x) for p in qkv], -1), atol=1e-6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    # each part's rows decomposed by their own column norms would differ: the norm spans every part
    alone = qkv[1].get_base_layer().weight + qkv[1]._update("default")
    own_norm = alone * (scale / (alone.norm(dim=0, keepdim=True) + torch.finfo(alone.dtype).eps))
    assert not torch.allclose(torch.nn.functional.linear(x, own_norm), ours[:, 16:32], atol=1e-4)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(ours, target).backward()
    torch.nn.functional.mse_loss(expected, target).backward()
    torch.testing.assert_close(scale.grad, theirs.dora_scale.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(qkv[0].lora_A["default"].weight.grad, theirs.lora_down.weight.grad)
    ups = torch.cat([p.lora_B["default"].weight.grad for p in qkv])
    torch.testing.assert_close(ups, theirs.lora_up.weight.grad, rtol=1e-4, atol=1e-7)

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    for name, parts in _double_block_layers(attn).items():
        assert tensors[f"{name}.dora_scale"].shape == (1, 16), name
        with torch.no_grad():
            loaded = _locon(parts, 4, 2.0, tensors, name).eval()(x)
            torch.testing.assert_close(loaded, torch.cat([p(x) for p in parts], -1), rtol=0, atol=1e-5)

    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, fused_lokr=plan.adapter) == ["unet"]
    again = fresh.transformer_blocks[0].attn
    parts = (again.to_q, again.to_k, again.to_v)
    assert all(dora_scale_of(p, "default") is dora_scale_of(parts[0], "default") for p in parts)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([p(x) for p in parts], -1), ours.detach(), rtol=0, atol=1e-6)


def test_fused_locon_dora_per_input_column_starts_from_its_file(tmp_path):
    """--network_weights of LoConModules with weight_decompose and wd_on_out=False on the fused Linears: each
    fused layer's (1, in) dora_scale loads into the parts' shared magnitude (runtime/flow_init.py), its down
    and ups as usual; the run's layers then compute what lycoris-lora's modules loaded from the file do."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from tests.runtime.test_flow_init import _loaded

    torch.manual_seed(0)
    layers = _double_block_layers(_base_transformer().transformer_blocks[0].attn)
    tensors = {}
    for name, parts in layers.items():
        fused = _fused_linear(parts)
        module = LoConModule(name, fused, 1.0, 4, 2.0, weight_decompose=True, wd_on_out=False)
        with torch.no_grad():
            module.lora_up.weight.normal_(std=0.1)
            module.dora_scale.mul_(1 + 0.2 * torch.rand_like(module.dora_scale))  # not the base's norms
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.contiguous()
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.dora_scale"].shape == (1, 16)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    extra = SPEC.replace(
        "fused_projections = true\n",
        f'fused_projections = true\ninit_weights = "{tmp_path / "prev.safetensors"}"\ninit_partial = true\n',
    )
    plan = make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra)
    assert plan.adapter.init_weights
    comps, count = _loaded(plan)
    assert count == 4
    attn = comps.unet.float().eval().transformer_blocks[0].attn
    x = torch.randn(3, 16)
    for name, parts in _double_block_layers(attn).items():
        scale = dora_scale_of(parts[0], ADAPTER_NAME)
        assert all(dora_scale_of(p, ADAPTER_NAME) is scale for p in parts)
        torch.testing.assert_close(scale.detach(), tensors[f"{name}.dora_scale"], rtol=0, atol=0)
        with torch.no_grad():
            theirs = _locon(parts, 4, 2.0, tensors, name).eval()(x)
            torch.testing.assert_close(torch.cat([p(x) for p in parts], -1), theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_fused_lokr_and_loha_dora_per_input_column_start_from_their_file(tmp_path, kind):
    """--network_weights of LokrModules / LohaModules with weight_decompose and wd_on_out=False on the fused
    Linears (was DBS575 / DBS403): each module's factors load as before and its (1, in) dora_scale into the
    magnitude the fused layer's parts share (runtime/lycoris_init.py); the run's layers then compute what
    lycoris-lora 4.1.3's modules built after apply_to and loaded from the file (strict=False) compute."""
    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_flux import LOKR, _factor_layers

    cls = LokrModule if kind == "lokr" else LohaModule
    options = {"weight_decompose": True, "wd_on_out": False}
    torch.manual_seed(3)
    tensors = {}
    for name, parts in _factor_layers(_base_transformer()).items():
        module = cls(name, _fused_linear(parts), 1.0, 2, 1.5, **options)
        with torch.no_grad():
            for key, p in module.named_parameters():
                if key == "dora_scale":  # not the base weight's column norms
                    p.mul_(1 + 0.2 * torch.rand_like(p))
                else:
                    torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    init = 'fused_projections = true\ndora = true\ndora_axis = "input"\n'
    init += f'init_weights = "{file}"\ninit_partial = true\n'
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"').replace("fused_projections = true\n", init)
    comps, count = _loaded(make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra))
    assert count == 5
    x = torch.randn(3, 16)
    for name, parts in _factor_layers(comps.unet.float().eval()).items():
        scale = dora_scale_of(parts[0], "default")
        if len(parts) > 1:
            assert all(dora_scale_of(p, "default") is scale for p in parts)
        torch.testing.assert_close(scale.detach(), tensors[f"{name}.dora_scale"], rtol=0, atol=0)
        theirs = cls(name, _fused_linear([p.base_layer for p in parts]), 1.0, 2, 1.5, **options)
        theirs.apply_to()
        own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        theirs.load_state_dict(own, strict=False)
        with torch.no_grad():
            loaded = torch.cat([p(x[:, : p.base_layer.in_features]) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x[:, : p.base_layer.in_features]) for p in parts], dim=-1)
            assert not torch.allclose(loaded, plain, atol=1e-3), name
            torch.testing.assert_close(theirs.eval()(x), loaded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_a_blocks_own_dora_per_input_column_on_a_fused_layer_is_lycoris(tmp_path, kind):
    """A preset map entry's own weight_decompose with the network's wd_on_output=False on a fused Linear
    (a block's `dora = "on"`, the adapter's `dora_axis = "input"`; was DBS403 / DBS509 / DBS575): the
    block's fused qkv shares one (1, in) magnitude over its parts, the other fused layers have none; the run
    resumes bit-exact; the fused layer's outputs and magnitude gradient are lycoris-lora 4.1.3's
    LoConModule / LokrModule with weight_decompose and wd_on_out=False on the fused Linear holding the same
    values; the export carries the (1, in) dora_scale on that module only, which that module loads with the
    trained outputs."""
    from tests.runtime.test_lycoris_flux import LOKR
    from tests.runtime.test_lycoris_flux_fused_opts import OWN_DORA

    if kind == "lora":
        spec = ATTN_ONLY.replace(
            "fused_projections = true\n", 'fused_projections = true\ndora_form = "lycoris"\n'
        )
        own = OWN_DORA.replace("rank = 2\nalpha = 1.5\n", "rank = 4\nalpha = 2\n")
        spec = spec.replace("[[adapter.blocks]]", own.rstrip("\n") + "\n\n[[adapter.blocks]]", 1)
    else:
        spec = LOKR + OWN_DORA
    spec = spec.replace("fused_projections = true\n", 'fused_projections = true\ndora_axis = "input"\n')
    extra = spec + '\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra)
    assert not plan.adapter.dora and plan.adapter.dora_axis == "input"
    assert [b.dora for b in plan.adapter.blocks][0] == "on"
    transformer = whole.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    qkv, context = (attn.to_q, attn.to_k, attn.to_v), (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    scale = dora_scale_of(qkv[0], "default")
    assert scale.shape == (1, 16) and all(dora_scale_of(p, "default") is scale for p in qkv)
    assert all(dora_scale_of(p, "default") is None for p in context)
    fused = _fused_linear([p.base_layer for p in qkv])
    assert not torch.allclose(scale.detach(), fused.weight.norm(dim=0, keepdim=True), atol=1e-7)  # trained
    options = {"weight_decompose": True, "wd_on_out": False}
    if kind == "lora":
        theirs = _locon(qkv, 4, 2.0)
    else:
        theirs = LokrModule("qkv", fused, 1.0, 2, 1.5, **options)
        with torch.no_grad():
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                getattr(theirs, key).copy_(getattr(qkv[0], key)["default"])
            theirs.dora_scale.copy_(scale)
        theirs.apply_to()
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    ours = torch.cat([p(x) for p in qkv], dim=-1)
    expected = theirs.eval()(x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    transformer.zero_grad()
    torch.nn.functional.mse_loss(ours, target).backward()
    torch.nn.functional.mse_loss(expected, target).backward()
    torch.testing.assert_close(scale.grad, theirs.dora_scale.grad, rtol=1e-4, atol=1e-7)
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    assert {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")} == {name}
    assert tensors[f"{name}.dora_scale"].shape == (1, 16)
    with torch.no_grad():
        if kind == "lora":
            loaded = _locon(qkv, 4, 2.0, tensors, name)
        else:
            own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
            loaded = LokrModule(name, _fused_linear([p.base_layer for p in qkv]), 1.0, 2, 1.5, **options)
            loaded.load_state_dict(own)
            loaded.apply_to()
        torch.testing.assert_close(loaded.eval()(x), ours.detach(), rtol=0, atol=1e-5)
