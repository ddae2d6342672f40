"""Preset-file entries' own module options on SD3's and Chroma's fused Linears (issue 12), as
test_lycoris_own_opts_networks.py and test_lycoris_whole_main_own_opts.py check them on tiny SD 1.x and Flux:
on a full, IA^3, DyLoRA or GLoRA network a LoKr entry's own `factor`, `decompose_both`, `full_matrix`,
`unbalanced_factorization` and `rs_lora`, a LoCon / LoKr entry's own `use_scalar` and a Diag-OFT / BOFT
entry's own `constraint` and `rescaled`, each fused Linear one module of its entry's class. Layer-level, no
training: the plan's model (adapter weights randomised) exports what lycoris-lora 4.1.3's create_network from
the same preset on kohya's tiny SD3 / Chroma layers loads (strictly, but DyLoRA's keys, which DyLoraModule
never loads), every module of its entry's class with its own factor shapes, scalar and rescale, each kohya
layer computing the plan's fused parts' output. And a DyLoRA / GLoRA network's PatchEmbed entry's own
`use_tucker` on SD3's patch convolution, against lycoris-lora's module of the entry's class."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _check_kohya_outputs, _kohya_layers, _kohya_tree
from tests.runtime.test_lycoris_whole_main_own_opts import _their_lokr_shapes

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# SD3: the x blocks' q/k/v a LoKr at its own factor 2 with use_scalar and decompose_both, their projections a
# full LoKr (full_matrix, rs_lora), the context blocks' q/k/v a Diag-OFT with its own constraint, rescaled,
# their projections a LoCon with its own use_scalar; the x blocks' MLPs the network's
SD3_OWN = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj", "joint_blocks.*.x_block.mlp.*"]
text_encoder_target_module = []
[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "lokr"
dim = 2
factor = 2
use_scalar = true
decompose_both = true
[name_algo_map."joint_blocks.*.x_block.attn.proj"]
algo = "lokr"
dim = 4
full_matrix = true
rs_lora = true
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "diag-oft"
dim = 4
constraint = 0.001
rescaled = true
[name_algo_map."joint_blocks.*.context_block.attn.proj"]
algo = "locon"
dim = 2
alpha = 4
use_scalar = true
"""

# Chroma (Flux's fused Linears): the image q/k/v a LoKr at its own factor 4 with use_scalar, the text q/k/v a
# BOFT rescaled (dim 18: 9216 rows as 18 x 2^9 on Chroma1-HD), linear1 a full LoKr (full_matrix, rs_lora),
# img_in a LoKr with an unbalanced split, the image projection a Diag-OFT with its own constraint, rescaled;
# the rest the network's
CHROMA_OWN = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 2
factor = 4
use_scalar = true
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "boft"
dim = 18
rescaled = true
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
dim = 4
full_matrix = true
rs_lora = true
[name_algo_map.img_in]
algo = "lokr"
dim = 2
unbalanced_factorization = true
[name_algo_map."double_blocks.*.img_attn.proj"]
algo = "diag-oft"
dim = 4
constraint = 0.001
rescaled = true
"""

_OFT = ("DiagOFTModule", "ButterflyOFTModule")
NETWORKS = ["full", "ia3", "dylora", "glora"]
_NETWORK = {"full": "FullModule", "ia3": "IA3Module", "dylora": "DyLoraModule", "glora": "GLoRAModule"}


def _sd3_plan(tmp_path: Path, algo: str):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "own.toml").write_text(SD3_OWN, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for part in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{part}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=own.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd3", *_BASE])


def _chroma_plan(tmp_path: Path, algo: str):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "own.toml").write_text(CHROMA_OWN, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=own.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    base = ["model.base=builtin:tiny-chroma", 'model.denoiser_file=""', *_BASE]
    return plan_of(outcome, tmp_path, base)


def _randomised(plan) -> nn.Module:
    """The plan's denoiser with its adapters (as the run builds them), their weights moved at random."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in comps.unet.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return comps.unet.float().eval()


def _theirs(monkeypatch, algo: str, file: Path, tree: nn.Module, tensors: dict, encoders: int) -> dict:
    """lycoris-lora's create_network from the preset on kohya's layers (network_dim 4, alpha 1, as converted),
    applied, the export loaded: every key but DyLoraModule's (which never loads its own) a module's, every
    other module's key in it. {name: module}."""
    kept_lycoris_presets(monkeypatch)
    text_encoders = [nn.Module() for _ in range(encoders)]
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, text_encoders, tree, algo=algo, preset=str(file))
    made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    modules = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    dylora = {n for n, m in modules.items() if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in [*result.missing_keys, *result.unexpected_keys]} == dylora
    assert bool(dylora) == (algo == "dylora")
    return modules


def _checked(theirs: dict, tree: nn.Module, layers: dict, scalars: tuple[str, ...]) -> None:
    """The plan's export and lycoris-lora's modules: the LoKr factor shapes, the modules training a scalar
    and a rescale, each kohya layer's output (the full LoKr layers at the file loaders' scale 1: the export
    holds rs_lora's sqrt(dim) in lokr_w1; DyLoRA's layers, never loaded, left out)."""
    oft = {n for n, m in theirs.items() if type(m).__name__ in _OFT}
    assert oft and all(isinstance(getattr(theirs[n], "rescale", None), nn.Parameter) for n in oft)
    scaled = {n for n, m in theirs.items() if isinstance(getattr(m, "scalar", None), nn.Parameter)}
    assert {type(theirs[n]).__name__ for n in scaled} == set(scalars)  # the entries' own use_scalar
    full = [m for m in theirs.values() if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2]
    assert full and {float(m.scale) for m in full} == {2.0}  # rs_lora: sqrt(4)
    for m in full:
        m.scale = 1.0
    dylora = {n for n, m in theirs.items() if type(m).__name__ == "DyLoraModule"}
    kept = {p: v for p, v in layers.items() if "lora_unet_" + p.replace(".", "_") not in dylora}
    _check_kohya_outputs(tree, kept, set(theirs) - dylora)


@pytest.mark.parametrize("algo", NETWORKS)
def test_sd3_entries_own_options_build_as_lycoris(tmp_path, monkeypatch, algo):
    """SD3's x / context blocks' q/k/v and projections (each fused Linear one module of its entry's class):
    the plan's blocks carry the entries' own options, and the export is what lycoris-lora builds."""
    from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts
    from dbspec.runtime.sd3_kohya import swapped

    plan = _sd3_plan(tmp_path, algo)
    a = plan.adapter
    assert a.kind == algo and a.fused
    own = {(b.kind, b.factor, b.scalar, b.decompose_both, b.full_matrix, b.rescaled) for b in a.blocks}
    assert {
        ("lokr", 2, "on", "on", "adapter", "adapter"),
        ("lokr", 0, "adapter", "adapter", "on", "adapter"),
        ("diag-oft", 0, "adapter", "adapter", "adapter", "on"),
        ("lora", 0, "on", "adapter", "adapter", "adapter"),
    } <= own
    unet = _randomised(plan)
    tensors = lycoris_state(unet=unet, text_encoders=[], family="sd3", dtype="fp32")
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    tree = _kohya_tree(layers)
    theirs = _theirs(monkeypatch, algo, tmp_path / "own.toml", tree, tensors, 3)
    classes = {n.removeprefix("lora_unet_joint_blocks_0_"): type(m).__name__ for n, m in theirs.items()}
    assert classes["x_block_attn_qkv"] == classes["x_block_attn_proj"] == "LokrModule"
    assert (classes["context_block_attn_qkv"], classes["context_block_attn_proj"]) == (
        "DiagOFTModule",
        "LoConModule",
    )
    assert classes["x_block_mlp_fc1"] == _NETWORK[algo]
    # the own factor 2 (w1 2 x 2), decompose_both (w2 low-rank at dim 2), the full factors (w1 and w2 whole)
    shapes = _their_lokr_shapes(SimpleNamespace(unet_loras=list(theirs.values()), text_encoder_loras=[]))
    assert [k for k, _ in shapes["lora_unet_joint_blocks_0_x_block_attn_qkv"]] == [
        "lokr_w1",
        "lokr_w2_a",
        "lokr_w2_b",
    ]
    assert shapes["lora_unet_joint_blocks_0_x_block_attn_qkv"][0] == ("lokr_w1", (2, 2))
    assert [k for k, _ in shapes["lora_unet_joint_blocks_0_x_block_attn_proj"]] == ["lokr_w1", "lokr_w2"]
    assert float(tensors["lora_unet_joint_blocks_0_context_block_attn_qkv.alpha"]) == pytest.approx(0.001)
    _checked(theirs, tree, layers, ("LokrModule", "LoConModule"))


@pytest.mark.parametrize("algo", NETWORKS)
def test_chroma_entries_own_options_build_as_lycoris(tmp_path, monkeypatch, algo):
    """Chroma's double blocks' q/k/v and image projection, linear1 and img_in (each fused Linear one module of
    its entry's class): the plan's blocks carry the entries' own options, and the export is what lycoris-lora
    builds (a DyLoRA network's own layers aside)."""
    from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts

    plan = _chroma_plan(tmp_path, algo)
    a = plan.adapter
    assert a.kind == algo and a.fused
    own = {
        (b.kind, b.factor, b.scalar, b.full_matrix, b.unbalanced_factorization, b.rescaled) for b in a.blocks
    }
    assert {
        ("lokr", 4, "on", "adapter", "adapter", "adapter"),
        ("lokr", 0, "adapter", "on", "adapter", "adapter"),
        ("lokr", 0, "adapter", "adapter", "on", "adapter"),
        ("boft", 0, "adapter", "adapter", "adapter", "on"),
        ("diag-oft", 0, "adapter", "adapter", "adapter", "on"),
    } <= own
    unet = _randomised(plan)
    tensors = lycoris_state(unet=unet, text_encoders=[], family="chroma", dtype="fp32")
    depth = len(unet.distilled_guidance_layer.layers)
    layers = _kohya_layers(unet, chroma_model(1, 1, depth), chroma_parts)
    tree = _kohya_tree(layers)
    theirs = _theirs(monkeypatch, algo, tmp_path / "own.toml", tree, tensors, 2)
    classes = {n.removeprefix("lora_unet_"): type(m).__name__ for n, m in theirs.items()}
    assert classes["double_blocks_0_img_attn_qkv"] == classes["single_blocks_0_linear1"] == "LokrModule"
    assert classes["img_in"] == "LokrModule"
    assert (classes["double_blocks_0_txt_attn_qkv"], classes["double_blocks_0_img_attn_proj"]) == _OFT[::-1]
    assert classes["double_blocks_0_txt_attn_proj"] == _NETWORK[algo]
    # the own factor 4 (w1 4 x 4), the full factors, img_in's unbalanced split (w1 4 x 8, its input side
    # the larger)
    shapes = _their_lokr_shapes(SimpleNamespace(unet_loras=list(theirs.values()), text_encoder_loras=[]))
    assert shapes["lora_unet_double_blocks_0_img_attn_qkv"][0] == ("lokr_w1", (4, 4))
    assert [k for k, _ in shapes["lora_unet_single_blocks_0_linear1"]] == ["lokr_w1", "lokr_w2"]
    assert shapes["lora_unet_img_in"][0] == ("lokr_w1", (4, 8))
    assert float(tensors["lora_unet_double_blocks_0_img_attn_proj.alpha"]) == pytest.approx(0.001)
    _checked(theirs, tree, layers, ("LokrModule",))


# LoKr at dim 1: its second factor low-rank (LokrModule's Tucker form needs it; at dim 2 it is full)
@pytest.mark.parametrize(
    ("network", "entry", "dim"), [("glora", "locon", 2), ("dylora", "loha", 2), ("glora", "lokr", 1)]
)
def test_sd3_patch_entry_own_tucker_on_dylora_and_glora(tmp_path, network, entry, dim):
    """A DyLoRA / GLoRA network's PatchEmbed entry of another algorithm with its own use_tucker on SD3 (was
    DBS403): as on a full / IA^3 network (test_lycoris_whole_main_own_opts.py's check, the same kohya command
    line), the patch convolution's block `tucker = "on"` of the entry's kind, the plan's layer exporting what
    lycoris-lora 4.1.3's LoConModule / LohaModule / LokrModule with use_tucker at the entry's dim loads
    strictly (the Tucker core included), at the same scale, computing the layer's output."""
    from tests.runtime.test_lycoris_whole_main_own_opts import (
        test_sd3_patch_entry_own_tucker_is_lycoris_module as check,
    )

    check(tmp_path, network, entry, dim)
