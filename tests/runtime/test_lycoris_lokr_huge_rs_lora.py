"""LyCORIS's full-matrix idiom with rs_lora (issue 12): a preset file's LoKr entries at `dim = 10000000000000`
on a network with `rs_lora=True`. LokrModule builds both Kronecker factors in full on every layer (each factor
stops at the layer's width) and replaces alpha by the dim, so rs_lora scales each such layer by dim /
sqrt(dim) = 3162277.66..., which only the dim itself gives: the converted blocks keep it (a LoKr block's rank
goes past the pairs' bound of 100000, spec LOKR_BLOCK_RANK_MAX; was DBS403). Checked against lycoris-lora
4.1.3's create_network from the same file on the tiny SD 1.x U-Net (linears and 3x3 convolutions) and CLIP:
the same modules at the same dim and scale, factors in the same shapes, outputs and gradients equal with the
same tensors; and the export's convention: the scale folded into `lokr_w1` with alpha 1, which LyCORIS's file
loader (create_network_from_weights, scale 1 on a full layer) computes as trained, while kohya's
`--network_weights` into an rs_lora network (load_weights: the module keeps its own sqrt(dim)) applies it
twice unless `lokr_w1` is divided by sqrt(dim) first (docs/converting.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_lycoris_algo_maps import (
    _converted_plan,
    _lokr_shapes,
    _lokr_shapes_of,
    _lycoris,
    _ours,
    _theirs,
)

pytest.importorskip("lycoris.kohya")

HUGE = 10**13
PRESET = f"""\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = []
[module_algo_map.FeedForward]
dim = {HUGE}
[module_algo_map.ResnetBlock2D]
dim = {HUGE}
[module_algo_map.CLIPMLP]
dim = {HUGE}
"""


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _both(pipe, tmp_path, monkeypatch):
    """The converted plan, lycoris-lora's modules by kohya name, the plan's peft layers by kohya name, and the
    names of the layers at the huge dim."""
    path, plan = _converted_plan(tmp_path, "huge-rs", "lokr", '"rs_lora=True"', text=PRESET)
    a = plan.adapter
    assert a.kind == "lokr" and a.lokr_rank_stabilized
    assert {(b.rank, b.conv_rank) for b in a.blocks} == {(HUGE, HUGE), (HUGE, 0)}
    assert {b.rank for b in a.text_encoder_blocks} == {HUGE}
    made = _lycoris(pipe, path, monkeypatch, "lokr", rs_lora="True")
    mods = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    layers = {
        prefix + name.replace(".", "_"): layer
        for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text))
        for name, layer in model.named_modules()
        if "default" in getattr(layer, "lokr_w1", {})
    }
    huge = {k for k, m in mods.items() if m.lora_dim == HUGE}
    return plan, made, mods, layers, huge


def _input(module, gen: torch.Generator) -> torch.Tensor:
    org = module.org_module[0]
    if isinstance(org, torch.nn.Linear):
        return torch.randn(2, org.in_features, generator=gen)
    return torch.randn(1, org.in_channels, 8, 8, generator=gen)


def _set(module, layer, gen: torch.Generator) -> None:
    """A nonzero update (LyCORIS starts lokr_w2 at 0), the same tensors in both."""
    with torch.no_grad():
        module.lokr_w2.copy_(torch.randn(module.lokr_w2.shape, generator=gen) * 1e-7)
        layer.lokr_w1["default"].copy_(module.lokr_w1)
        layer.lokr_w2["default"].copy_(module.lokr_w2)


def test_huge_rs_lora_lokr_entries_are_lycoris_modules(pipe, tmp_path, monkeypatch):
    """Every layer at the huge dim is a LokrModule with both factors full at LyCORIS's dim / sqrt(dim); the
    plan adapts the same layers (the others at the network's dim) in the same class, rank, scale and factor
    shapes; with the same tensors each layer gives LokrModule's output and gradients (U-Net linears, 3x3
    convolutions, CLIP's MLP)."""
    plan, made, mods, layers, huge = _both(pipe, tmp_path, monkeypatch)
    kinds = {("conv" if mods[k].module_type.startswith("conv") else "linear", k[:7]) for k in huge}
    assert kinds == {("linear", "lora_un"), ("conv", "lora_un"), ("linear", "lora_te")}
    scale = HUGE / math.sqrt(HUGE)  # LokrModule: alpha (the dim) / r_factor (sqrt(dim) with rs_lora)
    assert all(mods[k].use_w1 and mods[k].use_w2 and mods[k].scale == scale for k in huge)
    theirs, ours = _theirs(made), _ours(pipe, plan.adapter)
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    assert {layers[k].scaling["default"] for k in huge} == {scale}
    assert _lokr_shapes_of(pipe, plan) == _lokr_shapes(made)
    gen = torch.Generator().manual_seed(0)
    for key in sorted(huge):
        module, layer = mods[key], layers[key]
        _set(module, layer, gen)
        x = _input(module, gen)
        mine, want = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, expected = layer(mine), module(want)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=key)
        assert not torch.allclose(expected, module.org_module[0](x), atol=1e-3)  # the update counts
        got.square().sum().backward()
        expected.square().sum().backward()
        torch.testing.assert_close(mine.grad, want.grad, rtol=1e-5, atol=1e-5, msg=key)
        for part in ("lokr_w1", "lokr_w2"):
            ref = getattr(module, part).grad
            atol = 1e-5 * float(ref.abs().max())  # the scale of 3.16e6 makes large gradients
            torch.testing.assert_close(
                getattr(layer, part)["default"].grad, ref, rtol=1e-5, atol=atol, msg=key
            )


def test_export_folds_the_rs_lora_scale_for_lycoris_file_loaders(pipe, tmp_path, monkeypatch):
    """The kohya export of such a layer (runtime/lycoris_export.py): `lokr_w1` times dim / sqrt(dim), alpha 1.
    LyCORIS's file loader (create_network_from_weights' get_module / make_module: no rank in a full layer,
    scale 1) computes the layer as trained; kohya's `--network_weights` into the rs_lora network
    (LycorisNetworkKohya.load_weights: load_state_dict into a module keeping its sqrt(dim)) computes an update
    sqrt(dim) times the trained one, and the trained one once `lokr_w1` is divided by sqrt(dim), as
    docs/converting.md tells a user who resumes so."""
    from lycoris.modules import get_module, make_module

    from dbspec.runtime.lycoris_export import _lokr

    _, _, mods, layers, huge = _both(pipe, tmp_path, monkeypatch)
    scale = HUGE / math.sqrt(HUGE)
    gen = torch.Generator().manual_seed(1)
    for key in sorted(huge):
        module, layer = mods[key], layers[key]
        _set(module, layer, gen)
        org, x = module.org_module[0], _input(module, gen)
        weights, alpha = _lokr(key, layer, "default")
        assert alpha == 1.0 and sorted(weights) == ["lokr_w1", "lokr_w2"]
        saved = {f"{key}.{k}": v.detach().clone() for k, v in weights.items()}
        saved[f"{key}.alpha"] = torch.tensor(alpha)
        with torch.no_grad():
            trained = layer(x)
            kind, params = get_module(saved, key)
            loaded = make_module(kind, params, key, org)
            assert type(loaded).__name__ == "LokrModule" and loaded.scale == 1
            torch.testing.assert_close(loaded(x), trained, rtol=1e-5, atol=1e-5, msg=key)
            state = {k.split(".", 1)[1]: v for k, v in saved.items()}
            module.load_state_dict(state)  # kohya's load_weights, module by module
            twice = module.get_weight(None).reshape(org.weight.shape)  # the update its forward adds
            once = layer.get_delta_weight("default") * scale
            torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-6 * float(once.abs().max()), msg=key)
            assert not torch.allclose(module(x), trained, atol=1e-2)
            module.load_state_dict({**state, "lokr_w1": state["lokr_w1"] / module.scale})
            torch.testing.assert_close(module(x), trained, rtol=1e-5, atol=1e-5, msg=key)


def test_flux_fused_lokr_entry_at_the_huge_dim_is_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears (a LoCon network's rs_lora beside LoHa / LoKr entries, the single blocks'
    linear1 a LoKr entry at the huge dim): each kohya layer's lycoris-lora module, loaded from our export
    (its full lokr_w1 unfolded by LokrModule's sqrt(dim)), against the plan's parts: outputs, gradients and
    generator state (test_lycoris_flow_mixed_rs_lora_boft's checks)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import RS_FILE, _alike

    text = RS_FILE.replace("dim = 1000\n", f"dim = {HUGE}\n")
    a, made, full = _alike(tmp_path, monkeypatch, "locon", text, {"rs_lora": "True", "module_dropout": "0.5"})
    assert [(b.rank, b.rank_stabilized) for b in a.blocks if b.rank == HUGE] == [(HUGE, "on")]
    assert full and {m.lora_dim for m in full} == {HUGE}
    assert {m.scale for m in full} == {HUGE / math.sqrt(HUGE)}
