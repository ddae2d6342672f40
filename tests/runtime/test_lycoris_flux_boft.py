"""LyCORIS's lycoris.kohya algo=boft with flux_train_network.py / sd3_train_network.py
(convert/kohya/lycoris_flow_boft.py): one ButterflyOFTModule per fused Linear, whose butterfly stages rotate
the stacked rows of every part together; the parts of diffusers' split layer share its blocks, each computing
its rows of the rotated stacked weight (runtime/lycoris_boft.py tie_fused_boft). Checked against lycoris-lora
4.1.3's own ButterflyOFTModule built on the stacked Linear with random blocks (and rescale, constraint):
outputs, gradients, merge; kohya's (shift, scale) rows of SD3's last modulation; then on tiny-flux and
tiny-sd3 trained, resumed bit-exact, the kohya_lora export rebuilt by lycoris-lora's
create_network_from_weights on kohya's stacked Linears with the trained outputs, and the adapter folder loaded
back as `dbspec sample` loads it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from dbspec.plan.model import FusedPlan
from dbspec.runtime.lycoris_boft import BoftLayer, boft_config, fused_parts_deferred, tie_fused_boft
from tests.runtime.lycoris_flow_kit import BASE, kohya_export, stacked_linear, unet_only_spec
from tests.runtime.runspec import whole_and_resumed

boft = pytest.importorskip("lycoris.modules.boft")
lycoris_kohya = pytest.importorskip("lycoris.kohya")

_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


class _Block(nn.Module):
    """A single block's parts: q, k, v of `width` rows and the MLP input of `mlp` rows (Flux's linear1)."""

    def __init__(self, width: int, mlp: int):
        super().__init__()
        self.attn = nn.Module()
        for name in ("to_q", "to_k", "to_v"):
            setattr(self.attn, name, nn.Linear(8, width))
        self.proj_mlp = nn.Linear(8, mlp)


def _fused(width: int, mlp: int, lora_dim: int, constraint: float, rescaled: bool, bypass: bool = False):
    """A model of one block with a fused BOFT over its parts; (model, parts)."""
    model = nn.Module()
    model.single_transformer_blocks = nn.ModuleList([_Block(width, mlp)])
    with fused_parts_deferred():
        inject_adapter_in_model(
            boft_config(list(_PARTS), lora_dim, constraint, rescaled, bypass), model, adapter_name="default"
        )
    group = FusedPlan(name="linear1", blocks="single_transformer_blocks", parts=_PARTS)
    assert tie_fused_boft(model, (group,), "default") == 1
    return model, [model.single_transformer_blocks[0].get_submodule(p) for p in _PARTS]


def _theirs(parts, blocks: torch.Tensor, constraint: float, rescale=None, bypass: bool = False) -> nn.Module:
    """lycoris-lora's ButterflyOFTModule on the fused Linear (the parts' base weights stacked), its blocks
    (and row rescale) set."""
    fused = stacked_linear(parts)
    module = boft.ButterflyOFTModule(
        "fused",
        fused,
        1.0,
        lora_dim=blocks.shape[-1],
        constraint=constraint,
        rescaled=rescale is not None,
        bypass_mode=bypass,
    )
    assert module.oft_blocks.shape == blocks.shape  # the stacked width's split and stages are the blocks'
    state = {"oft_blocks": blocks, "alpha": torch.tensor(constraint)}
    module.load_state_dict({**state, **({} if rescale is None else {"rescale": rescale})})
    module.apply_to()
    return module


@pytest.mark.parametrize(
    ("width", "mlp", "lora_dim", "constraint", "rescaled", "bypass"),
    [
        (16, 64, 16, 0.0, False, False),  # 112 rows: blocks of 14 (14 x 8), 4 stages; q alone: 16 x 1
        (10, 34, 4, 0.0, True, False),  # 64 rows: blocks of 4, 5 stages; a 10-row part alone does not split
        (16, 64, 16, 2e-3, True, False),  # COFT: one norm over the shared blocks, constraint x 112
        (16, 64, 16, 2e-3, True, True),  # bypass_mode: every part's output (bias too) rotated together
    ],
)
def test_parts_share_one_butterfly_and_compute_lycoris_module(
    width, mlp, lora_dim, constraint, rescaled, bypass
):
    torch.manual_seed(0)
    model, parts = _fused(width, mlp, lora_dim, constraint, rescaled, bypass)
    blocks = parts[0].lora_oft_blocks["default"]
    assert all(p.lora_oft_blocks["default"] is blocks for p in parts)  # one Parameter
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    with torch.no_grad():
        blocks.normal_(0, 0.2)
        for part in parts:
            if rescaled:  # each part its own rows of the module's rescale
                part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts]) if rescaled else None
    theirs = _theirs(parts, blocks.detach().clone(), constraint, rescale, bypass)
    x = torch.randn(5, 8)
    ours = torch.cat([p(x) for p in parts], dim=-1)
    out = theirs(x)
    torch.testing.assert_close(ours, out, rtol=0, atol=1e-5)
    before = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    assert (ours - before).abs().max() > 1e-3  # every row rotated with rows of the other parts
    # the same gradient of the shared blocks as the fused module's
    weights = torch.randn_like(out)
    (ours * weights).sum().backward()
    (out * weights).sum().backward()
    torch.testing.assert_close(blocks.grad, theirs.oft_blocks.grad, rtol=1e-4, atol=1e-5)
    # peft's merge, part by part (each delta from the others' unmerged weights), then unmerged again
    with torch.no_grad():
        for part in parts:
            part.merge()
        torch.testing.assert_close(torch.cat([p.base_layer(x) for p in parts], -1), out, rtol=0, atol=1e-5)
        for part in parts:
            part.unmerge()
        torch.testing.assert_close(torch.cat([p.base_layer(x) for p in parts], -1), before, rtol=0, atol=1e-6)


def test_a_stacked_width_lycoris_cannot_split_is_refused_naming_the_layer():
    # 3 x 8 + 24 = 48 rows at lora_dim 4: no even block <= 4 leaves a power of two (LyCORIS raises too)
    model = nn.Module()
    model.single_transformer_blocks = nn.ModuleList([_Block(8, 24)])
    with fused_parts_deferred():
        inject_adapter_in_model(boft_config(list(_PARTS), 4, 0.0, False), model, adapter_name="default")
    group = FusedPlan(name="linear1", blocks="single_transformer_blocks", parts=_PARTS)
    with pytest.raises(ValueError, match="single_transformer_blocks.0: the fused linear1 .* 48 stacked rows"):
        tie_fused_boft(model, (group,), "default")
    with pytest.raises(ValueError, match="impossible to decompose 48 with factor 4"):  # LyCORIS raises too
        boft.ButterflyOFTModule("fused", nn.Linear(8, 48), 1.0, lora_dim=4)


@pytest.mark.parametrize("bypass", [False, True])
def test_kohya_s_swapped_modulation_rows_rotate_in_kohya_s_order(bypass):
    """SD3's last context modulation (diffusers' AdaLayerNormContinuous holds (scale, shift), kohya's
    (shift, scale)): its BOFT rotates kohya's row order, as ButterflyOFTModule on kohya's Linear does (in
    bypass_mode its output channels, bias included)."""
    torch.manual_seed(1)
    model = nn.Module()
    model.linear = nn.Linear(8, 32)
    inject_adapter_in_model(boft_config(["linear"], 4, 0.0, True, bypass), model, adapter_name="default")
    tie_fused_boft(model, (), "default", swapped=lambda path: path == "linear")
    layer = model.linear
    assert isinstance(layer, BoftLayer) and layer.boft_swapped
    with torch.no_grad():
        layer.lora_oft_blocks["default"].normal_(0, 0.3)
        layer.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    order = torch.cat([torch.arange(16, 32), torch.arange(16)])
    kohya = nn.Linear(8, 32)
    with torch.no_grad():
        kohya.weight.copy_(layer.base_layer.weight[order])
        kohya.bias.copy_(layer.base_layer.bias[order])
    theirs = boft.ButterflyOFTModule("m", kohya, 1.0, lora_dim=4, rescaled=True, bypass_mode=bypass)
    state = {"oft_blocks": layer.lora_oft_blocks["default"].detach(), "alpha": torch.tensor(0.0)}
    theirs.load_state_dict({**state, "rescale": layer.lora_oft_rescale["default"].detach()[order]})
    theirs.apply_to()
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[:, order], theirs(x), rtol=0, atol=1e-5)
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-4)
        layer.merge()  # the weight (and in bypass mode the bias) rotated in kohya's order
        torch.testing.assert_close(layer.base_layer(x)[:, order], theirs(x), rtol=0, atol=1e-5)


def test_max_norm_scales_the_fused_module_s_blocks_once():
    """lycoris.kohya's apply_max_norm_regularization: one ButterflyOFTModule per fused layer, its blocks
    scaled once by limit / norm (ButterflyOFTModule.apply_max_norm on the same blocks)."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    torch.manual_seed(2)
    model, parts = _fused(16, 64, 16, 0.0, False)
    blocks = parts[0].lora_oft_blocks["default"]
    with torch.no_grad():
        blocks.normal_(0, 0.5)
    theirs = _theirs(parts, blocks.detach().clone(), 0.0)
    modules = lycoris_norm_modules(model, [])
    assert [m.name for m in modules] == ["single_transformer_blocks.0.attn.to_q"]
    result = apply_lycoris_max_norm(modules, 1.0)
    scaled, norm = theirs.apply_max_norm(1.0)
    assert bool(scaled) and result[0] == 1 and result[2] == pytest.approx(float(norm), rel=1e-6)
    torch.testing.assert_close(blocks.detach(), theirs.oft_blocks.detach(), rtol=1e-6, atol=0)


def _lycoris_loads_the_export(tensors, layers) -> None:
    """lycoris-lora's create_network_from_weights on kohya's Linears rebuilt from the trained parts: every
    module a ButterflyOFTModule, loaded strictly, computing the trained parts' outputs (1e-5)."""
    from tests.runtime.test_lycoris_mixed_flow_full import _check_kohya_outputs, _kohya_tree

    tree = _kohya_tree(layers)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, tensors)
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    result = network.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    loaded = {m.lora_name: type(m).__name__ for m in network.unet_loras}
    names = {k.split(".")[0] for k in tensors}
    assert set(loaded) == names and set(loaded.values()) == {"ButterflyOFTModule"}
    _check_kohya_outputs(
        tree, {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in names}, names
    )


def _sample_load(plan, whole, unet, layers) -> None:
    """The run's adapter folder on the plain transformer, as `dbspec sample` loads it (the parts tied as in
    training): the trained outputs."""
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris_mixed_flow import _path_in
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped

    again = copy.deepcopy(_unwrapped(unet))
    for module in list(again.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BoftLayer):
                setattr(module, name, child.base_layer)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    a = plan.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": again}, fused_lokr=a) == ["unet"]
    with torch.no_grad():
        for parts, _ in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            x = torch.randn(3, parts[0].base_layer.in_features)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], -1),
                torch.cat([p(x) for p in parts], -1),
                rtol=0,
                atol=1e-5,
            )


# what the converter writes for `--network_dim 16 --network_args algo=boft preset=unet-only rescaled=True
# constraint=1e-2` (tiny-flux: one double and one single block; every width splits at 16)
BOFT = unet_only_spec(
    'kind = "boft"\nblock_size = 16\nconstraint = 1e-2\nrescaled = true\nfused_projections = true\n'
)


def test_boft_on_flux_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.test_lycoris_mixed_flow_full import _kohya_layers

    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=BOFT)
    assert plan.adapter.kind == "boft" and [f.name for f in plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]
    unet = whole.components.unet.float().eval()
    tensors, names = kohya_export(plan, whole)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    # the 48-row qkv: power2factorization(48, 16) = 12 x 4, 3 stages; linear1's 112 rows: 14 x 8, 4 stages
    assert tensors[f"{qkv}.oft_blocks"].shape == (3, 4, 12, 12)
    assert tensors["lora_unet_single_blocks_0_linear1.oft_blocks"].shape == (4, 8, 14, 14)
    assert tensors[f"{qkv}.rescale"].shape == (48, 1) and float(tensors[f"{qkv}.alpha"]) == pytest.approx(
        1e-2
    )
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    layers = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in names}
    assert {"double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "double_blocks.0.img_mod.lin"} <= set(
        layers
    )
    _lycoris_loads_the_export(tensors, layers)
    _sample_load(plan, whole, unet, layers)


def test_boft_on_sd3_fused_qkv_swapped_modulation_and_patch_convolution_is_what_lycoris_loads(tmp_path):
    """algo=boft preset=full on SD3 (network_dim 8, rescaled): one ButterflyOFTModule per fused q/k/v, the
    last context modulation rotated in kohya's (shift, scale) rows (its rescale written in that order), the
    patch convolution its own; the tiny run resumes bit-exact and lycoris-lora rebuilds the export."""
    from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts
    from dbspec.runtime.sd3_kohya import swapped
    from tests.runtime.test_lycoris_mixed_flow_full import _kohya_layers
    from tests.runtime.test_lycoris_sd3 import LOKR

    extra = LOKR.replace(
        'kind = "lokr"\nrank = 2\nalpha = 1.5',
        'kind = "boft"\nblock_size = 8\nrescaled = true\nconv_targets = ["pos_embed.proj"]',
    )
    plan, whole = whole_and_resumed(tmp_path, base="builtin:tiny-sd3", steps=4, extra=extra)
    assert plan.adapter.kind == "boft" and plan.adapter.fused and plan.adapter.conv_targets
    unet = whole.components.unet.float().eval()
    assert unet.transformer_blocks[1].norm1_context.linear.boft_swapped
    tensors, names = kohya_export(plan, whole)
    last = "joint_blocks.1.context_block.adaLN_modulation.1"
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    assert layers[last][1] is not None and "lora_unet_" + last.replace(".", "_") in names  # kohya's rows
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.oft_blocks"].shape == (4, 8, 6, 6)  # 48 rows
    layers = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in names}
    patch = "lora_unet_x_embedder_proj"
    _lycoris_loads_the_export({k: v for k, v in tensors.items() if not k.startswith(patch + ".")}, layers)
    # the patch convolution: ButterflyOFTModule on the 2 x 2 Conv2d
    conv = unet.pos_embed.proj
    own = {k.split(".", 1)[1]: v.float() for k, v in tensors.items() if k.startswith(patch + ".")}
    theirs = boft.ButterflyOFTModule(
        "x_embedder_proj",
        copy.deepcopy(conv.base_layer),
        1.0,
        lora_dim=own["oft_blocks"].shape[-1],
        rescaled=True,
    )
    theirs.load_state_dict(own)
    theirs.apply_to()
    x = torch.randn(2, conv.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(conv(x), conv.base_layer(x), atol=1e-7)
        torch.testing.assert_close(theirs.eval()(x), conv(x), rtol=0, atol=1e-5)


# a LoCon network (network_dim 4) with boft on the double blocks' image q/k/v at its own dim 24 (LyCORIS's
# lora_dim there: power2factorization(48, 24) = 24 x 2 on tiny-flux, 18 x 512 on FLUX.1's 9216 rows, which the
# converter checks), glora on linear1, loha on the text stream's q/k/v
MIXED_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "boft"
dim = 24
[name_algo_map."single_blocks.*.linear1"]
algo = "glora"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "loha"
dim = 2
alpha = 1
"""


def test_boft_entries_beside_other_algos_on_flux_train_resume_and_load_in_lycoris(tmp_path, monkeypatch):
    """A preset file's `boft` entry on Flux (was DBS403): a `kind = "boft"` block whose fused q/k/v is one
    ButterflyOFTModule; the run resumes bit-exact, lycoris-lora's create_network from the same file on
    kohya's Linears loads the export strictly and computes the trained outputs, and the adapter folders
    load back as `dbspec sample` loads them."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.test_lycoris_mixed_flow_full import (
        _BASE,
        _check_kohya_outputs,
        _kohya_layers,
        _kohya_tree,
        _lycoris_network,
        _run,
    )
    from tests.runtime.test_lycoris_preset_file_flow import _converted

    file = tmp_path / "mixed.toml"
    file.write_text(MIXED_FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, "locon", overrides=base)
    assert plan.adapter.kind == "lora" and {b.kind for b in plan.adapter.blocks} >= {"boft", "glora", "loha"}
    planned, whole, tensors = _run(tmp_path, {"boft", "glora", "loha"}, base)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.oft_blocks"].shape == (2, 2, 24, 24)
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors}
    tree = _kohya_tree(layers)
    theirs = _lycoris_network(monkeypatch, "locon", file, [nn.Module(), nn.Module()], tree, tensors)
    assert type(theirs[qkv]).__name__ == "ButterflyOFTModule"
    assert type(theirs["lora_unet_single_blocks_0_linear1"]).__name__ == "GLoRAModule"
    _check_kohya_outputs(
        tree, {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in names}, names
    )
    _sample_load(
        planned, whole, unet, {p: v for p, v in layers.items() if p == "double_blocks.0.img_attn.qkv"}
    )


def test_boft_on_chroma_fused_layers_resumes_and_lycoris_loads_the_export(tmp_path):
    """kohya's Chroma (flux_train_network.py --model_type chroma): Flux's fused Linears, one
    ButterflyOFTModule each; a tiny Chroma run resumes bit-exact and create_network_from_weights rebuilds
    its export on kohya's stacked Linears with the trained outputs."""
    from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
    from tests.runtime.test_lycoris_mixed_flow_full import _kohya_layers

    spec = unet_only_spec('kind = "boft"\nblock_size = 16\nrescaled = true\nfused_projections = true\n')
    spec = spec.replace('"norm1.linear", "norm1_context.linear", ', "").replace('"norm.linear", ', "")
    plan, whole = whole_and_resumed(tmp_path, base="builtin:tiny-chroma", steps=4, extra=spec)
    assert plan.model.family == "chroma" and [f.name for f in plan.adapter.fused] == [
        "img_attn_qkv",
        "txt_attn_qkv",
        "linear1",
    ]
    unet = whole.components.unet.float().eval()
    tensors, names = kohya_export(plan, whole)
    layers = _kohya_layers(unet, chroma_model(1, 1, 1), chroma_parts)
    layers = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") in names}
    assert {"double_blocks.0.img_attn.qkv", "single_blocks.0.linear1"} <= set(layers)
    _lycoris_loads_the_export(tensors, layers)


def test_bypass_boft_on_flux_trains_resumes_and_is_lycoris_bypass_module(tmp_path):
    """algo=boft bypass_mode=True (`bypass = true`): each fused layer's parts output their channels of the
    rotated stacked output (bias included); the run resumes bit-exact and ButterflyOFTModule in bypass_mode
    on kohya's stacked Linear, loaded from the export, computes the trained parts' outputs."""
    spec = BOFT.replace("fused_projections = true\n", "fused_projections = true\nbypass = true\n")
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=spec)
    assert plan.adapter.bypass and plan.adapter.fused
    unet = whole.components.unet.float().eval()
    tensors, _ = kohya_export(plan, whole)
    block, single = unet.transformer_blocks[0], unet.single_transformer_blocks[0]
    attn = block.attn
    torch.manual_seed(0)
    for name, parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v)),
        (
            "lora_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
    ):
        own = {k.split(".", 1)[1]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
        theirs = boft.ButterflyOFTModule(
            name,
            stacked_linear(parts),
            1.0,
            lora_dim=own["oft_blocks"].shape[-1],
            constraint=float(own["alpha"]),
            rescaled=True,
            bypass_mode=True,
        )
        theirs.load_state_dict(own)
        theirs.apply_to()
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            trained = torch.cat([p(x) for p in parts], dim=-1)
            assert not torch.allclose(trained, torch.cat([p.base_layer(x) for p in parts], -1), atol=1e-7)
            torch.testing.assert_close(theirs.eval()(x), trained, rtol=0, atol=1e-5)
