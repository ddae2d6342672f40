"""Preset-file entries of another algorithm with module options of their own on a full / IA^3 / LoCon network
on tiny SD 1.x (issue 12; was DBS403): a LoKr entry's own `factor`, `decompose_both`, `full_matrix`,
`unbalanced_factorization` and `rs_lora`, a LoCon / LoKr entry's own `use_scalar` (create_single_module
hands an entry's keys over the network's) are their blocks' fields (spec ScaleBlock / AdapterBlock), each kind
built alone (runtime/mixed_kinds.py kind_adapter). Checked against lycoris-lora 4.1.3's create_network from
the same preset: every layer's class, dim, scale and which layers train a scalar, on full, IA^3 and LoCon
networks; and one tiny run of the full network whose kohya export loads strictly into that network (every
tensor in LyCORIS's keys and shapes), each entry layer then giving the trained layer's output, and the whole
U-Net the trained one's."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    _lycoris,
    pipe,
)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# LoCon ResNets with their own use_scalar; LoKr MLPs split by their own factor 4 with use_scalar; the time
# embedding's first Linear a LoKr with decompose_both and unbalanced_factorization; conv_out a LoKr
# full_matrix with rs_lora (scale sqrt(dim)); CLIP's MLPs LoKr at factor 2 with use_scalar; the rest the
# network's algorithm
OWN = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
use_scalar = true
[module_algo_map.FeedForward]
algo = "lokr"
dim = 2
factor = 4
use_scalar = true
[name_algo_map."time_embedding.linear_1"]
algo = "lokr"
dim = 2
decompose_both = true
unbalanced_factorization = true
[name_algo_map.conv_in]
algo = "lora"
[name_algo_map.conv_out]
algo = "lokr"
dim = 4
full_matrix = true
rs_lora = true
[module_algo_map.CLIPMLP]
algo = "lokr"
dim = 2
factor = 2
use_scalar = true
"""


def _plan(tmp_path: Path, algo: str):
    PRESETS["whole_own"] = OWN
    try:
        return _converted_plan(tmp_path, "whole_own", algo)
    finally:
        del PRESETS["whole_own"]


def _scaled(model: nn.Module, prefix: str) -> set[str]:
    """The kohya names of the model's adapted layers with a trained scalar (runtime/lycoris_switches.py)."""
    from dbspec.runtime.lycoris_switches import layer_scalar

    return {
        prefix + name.replace(".", "_")
        for name, layer in model.named_modules()
        if isinstance(layer_scalar(layer), nn.Parameter)
    }


def _lokr_shapes(model: nn.Module, prefix: str) -> dict[str, tuple]:
    """Each LoKr layer's factor shapes (w1 or w1_a / w1_b, w2 or w2_a / w2_b) as LyCORIS names them."""
    from peft.tuners.lokr import LoKrLayer

    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoKrLayer) and "default" in layer.r:
            shapes = []
            for key in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"):
                param = getattr(layer, key).get("default") if hasattr(layer, key) else None
                if param is not None:
                    shapes.append((key, tuple(param.shape)))
            out[prefix + name.replace(".", "_")] = tuple(shapes)
    return out


def _their_lokr_shapes(made) -> dict[str, tuple]:
    out = {}
    for m in [*made.unet_loras, *made.text_encoder_loras]:
        if type(m).__name__ == "LokrModule":
            state = m.state_dict()
            keys = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
            out[m.lora_name] = tuple(
                (k, tuple(state[f"{k}"].shape)) for k in keys if k in state and state[k].dim() > 0
            )
    return out


def _same_outputs(loras, fresh: nn.Module, trained: nn.Module, g: torch.Generator) -> set[str]:
    """Each LoKr / LoCon module of LyCORIS's network (applied to `fresh`) gives the trained model's layer's
    output on a fixed random input; the names checked."""
    modules = dict(trained.named_modules())
    paths = {id(mod): p for p, mod in fresh.named_modules()}
    checked = set()
    for m in loras:
        if type(m).__name__ not in ("LokrModule", "LoConModule"):
            continue
        layer = modules[paths[id(m.org_module[0])]]
        base_layer = getattr(layer, "base_layer", layer)
        if isinstance(base_layer, nn.Conv2d):
            x = torch.randn(1, base_layer.in_channels, 8, 8, generator=g)
        else:
            x = torch.randn(2, base_layer.in_features, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
        checked.add(m.lora_name)
    return checked


@pytest.mark.parametrize("algo", ["full", "ia3", "locon"])
def test_entries_own_options_build_as_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """Every layer of the U-Net and CLIP: LyCORIS's class at its dim and scale (conv_out's full LoKr at
    sqrt(4) = 2 by its entry's rs_lora), the same LoKr factor shapes (the MLPs' own factor 4, the time
    embedding's low-rank small factor and swapped output split, conv_out's two full factors, CLIP's factor
    2) and the same layers training a scalar (the entries' own use_scalar)."""
    from dbspec.runtime.adapters import add_lora

    path, plan = _plan(tmp_path, algo)
    a = plan.adapter
    made = _lycoris(pipe, path, monkeypatch, algo)
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    add_lora(text, a, a.text_encoder_targets, seed=0, component="text_encoder")
    ours = {**_classes(unet, "lora_unet_"), **_classes(text, "lora_te_text_model_")}
    theirs = _lycoris_classes(made)
    assert {v[0] for v in theirs.values()} >= {"LokrModule", "LoConModule"}
    assert ours == theirs
    assert theirs["lora_unet_conv_out"] == ("LokrModule", 4, 2.0)  # rs_lora on full factors: sqrt(dim)
    ours_lokr = {**_lokr_shapes(unet, "lora_unet_"), **_lokr_shapes(text, "lora_te_text_model_")}
    assert ours_lokr == _their_lokr_shapes(made)
    scaled = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if isinstance(getattr(m, "scalar", None), nn.Parameter)
    }
    assert scaled and any(k.startswith("lora_te_") for k in scaled)
    assert {*_scaled(unet, "lora_unet_"), *_scaled(text, "lora_te_text_model_")} == scaled


def test_full_network_entries_own_options_train_and_load_in_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """A tiny run of the full network: its kohya export loads strictly into lycoris-lora's create_network
    from the same preset (U-Net and CLIP; every LoKr / LoCon tensor, scalars included, in LyCORIS's keys and
    shapes); each U-Net entry layer of LyCORIS's loaded network then gives the trained layer's output on a
    fixed input, and the U-Net the trained U-Net's output."""
    from tests.runtime.test_lycoris import _unet_output
    from tests.unit.convert_kit import out_path

    path, plan = _plan(tmp_path, "full")
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2"]
    run = execute(compile_spec(spec, [*base, "output.dir=own"]), keep_models=True)
    assert run.status == "finished"
    trained = run.components.unet.eval()
    (export,) = Path(run.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))

    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    network = lycoris_kohya.LycorisNetworkKohya
    attrs = ("UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME", "TEXT_ENCODER_TARGET_REPLACE_MODULE")
    for attr in attrs:
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    text, unet = copy.deepcopy(named), copy.deepcopy(pipe.unet)
    preset = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, text, unet, algo="full", conv_dim="4", preset=str(path)
    )
    preset.apply_to(text, unet, apply_text_encoder=True, apply_unet=True)
    result = preset.load_state_dict(tensors, strict=True)  # every key and shape of the preset's network
    assert not result.missing_keys and not result.unexpected_keys

    # LyCORIS's file loaders (create_network_from_weights, kohya's, ComfyUI's) apply scale 1 to a LoKr layer
    # with both factors full, so the export holds conv_out's sqrt(dim) (its entry's rs_lora) in `lokr_w1`,
    # where the preset's module keeps it in its scale: that module at the loaders' scale. (lycoris-lora
    # 4.1.3's create_network_from_weights itself cannot rebuild the time embedding's decompose_both layer
    # with its swapped output split: it reads the factor off the shapes, a size mismatch.)
    full = [m for m in preset.unet_loras if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2]
    assert [(m.lora_name, m.scale) for m in full] == [("lora_unet_conv_out", 2.0)]
    full[0].scale = 1.0
    g = torch.Generator().manual_seed(3)
    checked = _same_outputs(preset.unet_loras, unet, trained, g)
    # the entries' layers: conv_out's full LoKr, the time embedding's, the MLPs' and the ResNets'
    assert {"lora_unet_conv_out", "lora_unet_time_embedding_linear_1"} <= checked and len(checked) > 20
    # CLIP's LoKr MLPs (factor 2, use_scalar), trained with it
    texts = _same_outputs(
        preset.text_encoder_loras, text.text_model, run.components.text_encoders[0].eval(), g
    )
    assert len(texts) == 6 and all("mlp" in name for name in texts)
    output = _unet_output(trained)
    torch.testing.assert_close(_unet_output(unet), output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_unet_output(pipe.unet), output, atol=1e-3)  # training moved it


# Flux: LoKr on the double blocks' image q/k/v at its own factor 4 with use_scalar and decompose_both, LoKr
# in full (full_matrix) with rs_lora on the single blocks' linear1, LoCon with use_scalar on the text q/k/v,
# LoKr with an unbalanced split on img_in, LoKr at factor 2 with use_scalar on CLIP-L's attention; the
# network's FullModule / IA3Module on the rest
FLUX_OWN = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 2
factor = 4
use_scalar = true
decompose_both = true
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
dim = 4
full_matrix = true
rs_lora = true
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 4
use_scalar = true
[name_algo_map.img_in]
algo = "lokr"
dim = 2
unbalanced_factorization = true
[module_algo_map.CLIPAttention]
algo = "lokr"
dim = 2
factor = 2
use_scalar = true
"""


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_flux_entries_own_options_build_as_lycoris(tmp_path, monkeypatch, algo):
    """On kohya's tiny Flux Linears (the plan's model, adapter weights randomised, no training): the export
    loads strictly into lycoris-lora 4.1.3's create_network from the same file (each fused Linear one module
    of its entry's class, with its own LoKr split, scalar, full factors), the same modules train a scalar,
    and each kohya layer computes what the plan's fused parts compute (the full LoKr linear1 at the file
    loaders' scale 1, its rs_lora sqrt(dim) in the export's `lokr_w1`)."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris_mixed_flow_full import (
        _BASE,
        _check_kohya_outputs,
        _kohya_layers,
        _kohya_tree,
        _lycoris_network,
    )
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "own.toml"
    file.write_text(FLUX_OWN, encoding="utf-8")
    plan = plan_of(
        flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}"', ""),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    assert a.kind == algo and a.fused
    own = {
        (b.kind, b.factor, b.scalar, b.full_matrix, b.rank_stabilized)
        for b in a.blocks
        if b.kind != "adapter"
    }
    assert {("lokr", 4, "on", "adapter", "adapter"), ("lokr", 0, "adapter", "on", "on")} <= own
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for model in (comps.unet, comps.text_encoders[0]):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    unet = comps.unet.eval()
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(comps.text_encoders[0]))
    theirs = _lycoris_network(monkeypatch, algo, file, [clip, nn.Module()], tree, tensors)
    classes = {n: type(m).__name__ for n, m in theirs.items()}
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == "LokrModule"
    assert classes["lora_unet_double_blocks_0_txt_attn_qkv"] == "LoConModule"
    assert {c for n, c in classes.items() if n.startswith("lora_te1_")} == {"LokrModule"}
    scaled = {n for n, m in theirs.items() if isinstance(getattr(m, "scalar", None), nn.Parameter)}
    assert {n.split("_blocks_0_")[-1] for n in scaled if n.startswith("lora_unet_")} == {
        "img_attn_qkv",
        "txt_attn_qkv",
    }
    assert any(n.startswith("lora_te1_") for n in scaled)
    full = {n: m for n, m in theirs.items() if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2}
    assert {n: float(m.scale) for n, m in full.items()} == {"lora_unet_single_blocks_0_linear1": 2.0}
    for m in full.values():
        m.scale = 1.0  # the file loaders' (the export holds the sqrt(dim) in lokr_w1)
    _check_kohya_outputs(tree, layers, {n for n in classes if n.startswith("lora_unet_")})


# SD3: the patch convolution (PatchEmbed) an entry of another algorithm with its own use_tucker, the x blocks'
# q/k/v a LoKr entry at its own factor with use_scalar; the network's full / IA^3 on the rest
SD3_OWN = """\
use_fnmatch = true
unet_target_module = ["PatchEmbed"]
unet_target_name = ["joint_blocks.*.x_block.attn.*"]
text_encoder_target_module = []
[module_algo_map.PatchEmbed]
algo = "{algo}"
dim = {dim}
use_tucker = true
[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "lokr"
dim = 2
factor = 2
use_scalar = true
"""


# LoKr at dim 1: its second factor low-rank (LokrModule's Tucker form needs it; at dim 2 it is full)
@pytest.mark.parametrize(
    ("network", "entry", "dim"), [("full", "locon", 2), ("ia3", "loha", 2), ("full", "lokr", 1)]
)
def test_sd3_patch_entry_own_tucker_is_lycoris_module(tmp_path, network, entry, dim):
    """A full / IA^3 network's PatchEmbed entry of another algorithm with its own use_tucker on SD3 (was
    DBS403, a spec's DBS578): the patch convolution's block `tucker = "on"` of the entry's kind; the plan's
    layer (adapter weights randomised) exports tensors that lycoris-lora 4.1.3's LoConModule / LohaModule /
    LokrModule with use_tucker at the entry's dim loads strictly (the Tucker core included), at the same
    scale, computing the layer's output."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "own.toml").write_text(SD3_OWN.format(algo=entry, dim=dim), encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for part in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{part}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo={network}" "conv_dim=4" "preset=own.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd3", *_BASE])
    kind = {"locon": "lora"}.get(entry, entry)
    patch = [b for b in plan.adapter.blocks if re.search(b.pattern, "pos_embed.proj") and b.kind != "adapter"]
    assert [(b.kind, b.tucker) for b in patch][:1] == [(kind, "on")]
    assert [(b.factor, b.scalar) for b in plan.adapter.blocks if b.kind == "lokr" and b.factor] == [(2, "on")]
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in comps.unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)  # LoHa's product of four
    unet = comps.unet.float().eval()
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="sd3", dtype="fp32")
    name = "lora_unet_x_embedder_proj"
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    core = {"lora": "lora_mid.weight", "loha": "hada_t1", "lokr": "lokr_t2"}[kind]
    assert core in own
    cls = {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}[kind]
    layer = unet.pos_embed.proj
    module = cls(name, copy.deepcopy(layer.get_base_layer()), 1.0, dim, own["alpha"].item(), use_tucker=True)
    module.load_state_dict(own, strict=True)
    module.apply_to()
    assert float(module.scale) == pytest.approx(float(layer.scaling["default"]))
    x = torch.randn(2, layer.get_base_layer().in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        ours = layer(x)
        assert not torch.allclose(ours, layer.get_base_layer()(x), atol=1e-4)
        torch.testing.assert_close(module.eval()(x), ours, rtol=0, atol=1e-5)
