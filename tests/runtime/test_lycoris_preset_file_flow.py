"""LyCORIS preset files with flux_train_network.py and sd3_train_network.py
(dbspec/convert/kohya/lycoris_flow_file.py) against lycoris-lora 4.1.3's create_network reading the same file
in its kohya network.

kohya's Flux and MMDiT cannot be built here (sd-scripts is no dependency of dbspec), so LyCORIS walks trees
rebuilt on the meta device from the converter's own rows (lycoris_flow_file.flux_model / mmdit: kohya's
library/flux_models.py Flux and library/sd3_models.py MMDiT, their named_modules() paths and class names, real
nn.Linear / nn.Conv2d layers), as the SDXL test does with its recorded fixture; the text encoders are
transformers' (the lists the scripts hand LyCORIS: CLIP-L and T5-XXL; CLIP-L, CLIP-G and T5-XXL) on the meta
device. The rows' translation to diffusers is checked against diffusers' own FluxTransformer2DModel and
SD3Transformer2DModel (meta device): every diffusers layer is a part of exactly one kohya layer. A tiny Flux
run of a converted file then trains, resumes bit-exact and exports LyCORIS's module names."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, t5_encoder
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_preset_file_sdxl import _pinned_clip, _rebuilt

lycoris_kohya = pytest.importorskip("lycoris.kohya")

PRESETS = {
    # the double blocks' attention by fnmatch names, norms and single blocks excluded; a dim for one stream
    "double_attention": """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["single_blocks.*", "*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
dim = 16
alpha = 8
""",
    # LyCORIS's `full` lists but the single blocks (regular expression) and CLIP's MLPs
    "no_singles": """\
exclude_name = ['single_blocks\\..*', 'text_model\\.encoder\\.layers\\.\\d+\\.mlp.*']
""",
    # classes: the single blocks' modulation and the embedders (by name), blocks 0-3 of the double MLPs
    "classes": """\
unet_target_module = ["Modulation", "MLPEmbedder"]
unet_target_name = ['double_blocks\\.[0-3]\\.(img|txt)_mlp', "img_in", "txt_in", "final_layer.linear"]
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.1[01]\\.self_attn\\.q_proj']
exclude_name = ['double_blocks\\.\\d+\\.txt_mod']
""",
    # an empty file: LyCORIS's defaults (the `full` preset's lists)
    "defaults": "",
}


@pytest.fixture(scope="module")
def models():
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(num_hidden_layers=12, hidden_act="quick_gelu"))
        t5 = T5EncoderModel(
            T5Config(d_model=64, d_kv=8, d_ff=128, num_layers=24, num_heads=8, feed_forward_proj="gated-gelu")
        )
        flux = FluxTransformer2DModel(guidance_embeds=True)
    return {"kohya": _rebuilt(flux_model()), "te": [_pinned_clip(clip), t5], "flux": flux}


def _lycoris_modules(models, preset: str, monkeypatch, algo: str = "locon") -> list:
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], models["kohya"], algo=algo, preset=preset
    )
    return [*made.unet_loras, *made.text_encoder_loras]


def _lycoris_names(models, preset: str, monkeypatch, algo: str = "locon") -> set[str]:
    return {m.lora_name for m in _lycoris_modules(models, preset, monkeypatch, algo)}


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix match


def _adapted(path: str, adapter) -> bool:
    """A target picks the diffusers layer and the first block matching it (runtime/blocks.py) is no rank 0."""
    block = next((b for b in adapter.blocks if re.search(b.pattern, path)), None)
    return _matches(path, adapter.denoiser_targets) and (block is None or block.rank > 0)


def _planned_names(models, adapter) -> set[str]:
    """kohya's names of the layers dbspec's targets adapt: a kohya Linear whose diffusers parts all match
    (none may match part of a fused layer)."""
    names = set()
    for path, _, kind in flux_model():
        if kind:
            hits = [_adapted(p, adapter) for p in diffusers_parts(path)]
            assert len(set(hits)) == 1, path
            if hits[0]:
                names.add("lora_unet_" + path.replace(".", "_"))
    for name, module in models["te"][0].named_modules():
        if isinstance(module, nn.Linear) and _matches(name, adapter.text_encoder_targets):
            names.add(f"lora_te1_{name.replace('.', '_')}")
    return names


def _converted(tmp_path: Path, preset: str, algo: str = "locon", overrides=None):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    return plan_of(flux_lycoris(tmp_path, f'"algo={algo}" "preset={preset}"'), tmp_path, overrides)


def _file(tmp_path: Path, preset: str) -> Path:
    path = tmp_path / f"{preset}.toml"
    path.write_text(PRESETS[preset], encoding="utf-8")
    return path


def test_rows_translate_onto_diffusers_flux_and_t5(models):
    """Every diffusers Flux Linear is a part of exactly one Linear of the rows; the T5 rows are
    transformers' T5EncoderModel's (class names and paths)."""
    parts = [p for path, _, kind in flux_model() if kind for p in diffusers_parts(path)]
    linears = [n for n, m in models["flux"].named_modules() if isinstance(m, nn.Linear)]
    assert sorted(parts) == sorted(linears)
    t5 = [(n, type(m).__name__) for n, m in models["te"][1].named_modules()]
    assert t5 == [(p, c) for p, c, _ in t5_encoder()]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_flux_preset_file_adapts_the_layers_lycoris_builds(models, preset, tmp_path, monkeypatch):
    path = _file(tmp_path, preset)
    plan = _converted(tmp_path, path.name)
    theirs = _lycoris_names(models, str(path), monkeypatch)
    ours = _planned_names(models, plan.adapter)
    assert theirs, "the preset builds modules on kohya's Flux"
    assert not any(n.startswith("lora_te2") for n in theirs)  # no T5 module
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


# CLIP-L's and T5-XXL's attention, T5's blocks 10-23 excluded, T5's attention at a dim of its own
T5_FILE = """\
unet_target_module = ["DoubleStreamBlock"]
text_encoder_target_module = ["CLIPAttention", "T5Attention"]
exclude_name = ['encoder\\.block\\.(1\\d|2\\d)\\..*']

[module_algo_map.T5Attention]
dim = 2
alpha = 1
"""


def test_t5_layers_of_a_preset_file_are_t5_lora(models, tmp_path, monkeypatch):
    """A file reaching T5-XXL: LyCORIS builds LoConModules there (`lora_te2_`, T5 being the second encoder
    kohya hands it), which train with CLIP-L's at text_encoder_lr when T5 encodes every step: `train.t5` with
    its Linears the file leaves out at rank 0, each T5 Linear at lycoris-lora's rank and scale."""
    path = tmp_path / "t5.toml"
    path.write_text(T5_FILE, encoding="utf-8")
    plan = _converted(tmp_path, path.name)
    a = plan.adapter
    assert {c.name for c in plan.precision.components if c.trainable == "lora"} >= {"text_encoder_2"}
    made = _lycoris_modules(models, str(path), monkeypatch)
    theirs = {m.lora_name: (m.lora_dim, float(m.scale)) for m in made if m.lora_name.startswith("lora_te2_")}
    ours = {}
    for name, module in models["te"][1].named_modules():
        if isinstance(module, nn.Linear) and _matches(name, a.t5_targets):
            block = next(
                (b for b in a.text_encoder_blocks if re.search(b.pattern, f"text_encoder_2.{name}")), None
            )
            rank, alpha = (a.rank, a.alpha) if block is None else (block.rank, block.alpha)
            if rank:
                ours[f"lora_te2_{name.replace('.', '_')}"] = (rank, alpha / rank)
    assert len(theirs) == 40 and ours == theirs  # blocks 0-9: q, k, v, o at dim 2, alpha 1


def test_flux_preset_file_trains_resumes_and_exports_lycoris_names(models, tmp_path, monkeypatch):
    """A tiny Flux run of the double-attention file (fused q/k/v whole, the img stream's at dim 16) with
    T5-XXL's attention too (its block 1 excluded, dim 2: train.t5): its kohya export holds LyCORIS's modules
    that tiny-flux has under LyCORIS's names (T5's `lora_te2_`, adapter.kohya_names, where kohya lora_flux
    says `lora_te3_`), lycoris-lora's create_network_from_weights on [CLIP-L, T5] and tiny-flux's T5 finds
    every T5 module and LoConModule loaded from it computes the trained T5 layer's output, and a run stopped
    after 2 of 4 steps resumes to the same weights."""
    from lycoris.modules.locon import LoConModule

    text = PRESETS["double_attention"].replace('["CLIPAttention"]', '["CLIPAttention", "T5Attention"]')
    text = text.replace('"*.norm*"]', '"*.norm*", "encoder.block.1.*"]')
    path = tmp_path / "double_attention.toml"
    path.write_text(text + "\n[module_algo_map.T5Attention]\ndim = 2\nalpha = 1\n", encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=4"]
    base += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]
    plan = _converted(tmp_path, path.name, overrides=base)
    theirs = _lycoris_names(models, str(path), monkeypatch)
    whole = execute(compile_spec(_spec(tmp_path), [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 4
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    assert plan.adapter.kohya_names == "lycoris"
    modules = {k.split(".")[0] for k in tensors}
    assert modules and modules <= theirs
    t5 = {m for m in modules if m.startswith("lora_te2_")}
    assert t5 == {f"lora_te2_encoder_block_0_layer_0_SelfAttention_{n}" for n in "qkvo"}
    down = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    assert (
        down.shape[0] == 16
        and tensors["lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight"].shape[0] == 4
    )
    assert plan.adapter.blocks[0].rank == 16
    layer = dict(whole.components.text_encoders[1].named_modules())["encoder.block.0.layer.0.SelfAttention.q"]
    # lycoris-lora's loader on [CLIP-L, T5-XXL] (no CLIP-L or Flux layer here: T5's modules alone)
    plain = _unwrapped(whole.components.text_encoders[1])
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, None, None, [nn.Module(), plain], nn.Module(), tensors
    )
    assert {m.lora_name for m in network.text_encoder_loras} == t5
    theirs_q = next(m for m in network.text_encoder_loras if m.lora_name.endswith("SelfAttention_q"))
    assert isinstance(theirs_q, LoConModule)
    network.apply_to([nn.Module(), plain], nn.Module(), apply_text_encoder=True, apply_unet=False)
    network.load_state_dict(tensors, strict=False)
    x = torch.randn(3, layer.base_layer.in_features)
    with torch.no_grad():
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-7)  # T5's LoRA trained
        torch.testing.assert_close(theirs_q.eval()(x), layer(x), rtol=0, atol=1e-5)
    parts = compile_spec(_spec(tmp_path), [*base, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and second.losses[-2:] == whole.losses[-2:]
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    b = load_file(str(again))
    assert tensors.keys() == b.keys() and all(torch.equal(tensors[k], b[k]) for k in tensors)
    # the export starts the same LoCon run (kohya --network_weights): T5's lora_te2_ modules load back
    from tests.runtime.test_flow_init import _loaded

    start = [*base, "output.dir=start", f"adapter.init_weights={export}"]
    comps, count = _loaded(compile_spec(_spec(tmp_path), start))
    again_q = dict(comps.text_encoders[1].float().named_modules())["encoder.block.0.layer.0.SelfAttention.q"]
    with torch.no_grad():
        assert count == len(modules)
        torch.testing.assert_close(again_q(x), layer(x), rtol=0, atol=1e-5)


def _unwrapped(model: nn.Module) -> nn.Module:
    """A copy of a peft-adapted model with its base layers back in place of the adapter layers."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(getattr(module, "base_layer", None), nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, module.base_layer)
    return plain


def _spec(tmp_path: Path) -> Path:
    from tests.unit.convert_kit import out_path

    return out_path(tmp_path)


SD3_PRESETS = {
    # the x blocks' attention (AttentionLinears; the context stream excluded by fnmatch), the patch conv
    "x_attention": """\
use_fnmatch = true
unet_target_module = ["AttentionLinears", "PatchEmbed"]
unet_target_name = []
text_encoder_target_module = ["CLIPMLP"]
exclude_name = ["*.context_block.*"]
""",
    # names: the embedders, the final layer, blocks 30-37's context MLPs; CLIP's projection (both encoders)
    "names": """\
unet_target_module = []
unet_target_name = ['t_embedder', 'y_embedder', 'context_embedder', 'final_layer\\..*',
    'joint_blocks\\.3[0-7]\\.context_block\\.mlp']
text_encoder_target_module = []
text_encoder_target_name = ["text_projection"]
""",
    "defaults": "",
    # the patch convolution at a dim of its own (a block's conv_rank); CLIP-G's layers 12-31 alone (CLIP-L
    # has 12: no CLIP-L module, text_encoder_2_targets)
    "patch_dim": """\
unet_target_module = ["PatchEmbed", "TimestepEmbedding"]
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.(1[2-9]|2\\d|3[01])\\.self_attn\\.q_proj']

[module_algo_map.PatchEmbed]
dim = 2
alpha = 1
""",
}


@pytest.fixture(scope="module")
def sd3_models():
    from diffusers import SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from dbspec.convert.kohya.lycoris_flow_file import mmdit

    with torch.device("meta"):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(num_hidden_layers=12, hidden_act="quick_gelu"))
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=32, num_attention_heads=4)
        )
        t5 = T5EncoderModel(
            T5Config(d_model=64, d_kv=8, d_ff=128, num_layers=24, num_heads=8, feed_forward_proj="gated-gelu")
        )
        sd3 = SD3Transformer2DModel(
            num_layers=38, attention_head_dim=8, num_attention_heads=2, dual_attention_layers=tuple(range(13))
        )
    te = [_pinned_clip(clip_l), _pinned_clip(clip_g), t5]
    return {"kohya": _rebuilt(mmdit()), "te": te, "sd3": sd3}


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    return "conv" if isinstance(module, nn.Conv2d) else ""


def test_mmdit_rows_translate_onto_diffusers_sd3(sd3_models):
    from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts

    parts = {p: kind for path, _, kind in mmdit() if kind for p in sd3_parts(path)}
    layers = {n: _kind(m) for n, m in sd3_models["sd3"].named_modules() if _kind(m)}
    assert parts == layers


@pytest.mark.parametrize("preset", sorted(SD3_PRESETS))
def test_sd3_preset_file_adapts_the_layers_lycoris_builds(sd3_models, preset, tmp_path, monkeypatch):
    from dbspec.convert.kohya.lycoris_flow_file import mmdit, sd3_parts
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    path = tmp_path / f"{preset}.toml"
    path.write_text(SD3_PRESETS[preset], encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset={path.name}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    theirs = _lycoris_names(sd3_models, str(path), monkeypatch)
    ours = set()
    for kohya_path, _, kind in mmdit():
        if kind:
            targets = a.conv_targets if kind == "conv" else a.denoiser_targets
            hits = {_matches(p, targets) for p in sd3_parts(kohya_path)}
            assert len(hits) == 1, kohya_path
            if hits.pop():
                ours.add("lora_unet_" + kohya_path.replace(".", "_"))
    lora = {c.name for c in plan.precision.components if c.trainable == "lora"}
    trains = ("text_encoder" in lora, "text_encoder_2" in lora)
    clip_g = a.text_encoder_targets if a.text_encoder_2_targets is None else a.text_encoder_2_targets
    for prefix, model, targets, on in zip(
        ("lora_te1", "lora_te2"), sd3_models["te"], (a.text_encoder_targets, clip_g), trains
    ):
        for name, module in model.named_modules():
            if on and isinstance(module, nn.Linear) and _matches(name, targets):
                ours.add(f"{prefix}_{name.replace('.', '_')}")
    assert theirs and not any(n.startswith("lora_te3") for n in theirs)
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []
    if preset == "patch_dim":  # LoConModule's dim / alpha on the patch convolution: its block's
        made = {m.lora_name: m for m in _lycoris_modules(sd3_models, str(path), monkeypatch)}
        patch = made["lora_unet_x_embedder_proj"]
        (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
        assert (patch.lora_dim, float(patch.scale)) == (block.conv_rank, block.conv_alpha / block.conv_rank)
        assert (a.conv_rank, trains) == (4, (False, True))


def test_clip_dims_of_a_preset_file_are_lycoris_modules(models, tmp_path, monkeypatch):
    """A map entry giving CLIP-L's MLPs a dim of their own: the text_encoder_blocks the converter writes
    give every CLIP-L Linear lycoris-lora's LoConModule's rank and scale."""
    path = tmp_path / "clip_dims.toml"
    path.write_text(
        "exclude_name = ['single_blocks\\\\..*']\ntext_encoder_target_module = ['CLIPAttention', 'CLIPMLP']\n"
        "\n[module_algo_map.CLIPMLP]\ndim = 2\nalpha = 2\n",
        encoding="utf-8",
    )
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], models["kohya"], algo="locon", preset=str(path)
    )
    theirs = {m.lora_name: (m.lora_dim, float(m.scale)) for m in made.text_encoder_loras}
    assert {d for d, _ in theirs.values()} == {2, 4}
    a = _converted(tmp_path, path.name).adapter
    for name, module in models["te"][0].named_modules():
        key = f"lora_te1_{name.replace('.', '_')}"
        if not isinstance(module, nn.Linear) or not _matches(name, a.text_encoder_targets):
            assert key not in theirs, key
            continue
        block = next((b for b in a.text_encoder_blocks if re.search(b.pattern, f"text_encoder.{name}")), None)
        rank, alpha = (a.rank, a.alpha) if block is None else (block.rank, block.alpha)
        assert theirs[key] == (rank, alpha / rank), key


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lokr_and_loha_map_dims_are_lycoris_modules(models, tmp_path, monkeypatch, algo):
    """LoKr / LoHa map entries with their own dim / alpha (and LoKr's factor, decompose_both,
    unbalanced_factorization; LoKr's
    full-matrix dim of 100000 above the blocks' 1024), CLIP-L's attention at a dim of its own: the blocks and
    text-encoder blocks the converter writes give each of kohya's Linears, a fused one through all its
    diffusers parts, and each CLIP-L Linear the rank, scale and factor shapes of the module lycoris-lora's
    create_network builds on it (meta device), the embedders' and the final layer's plain Linears too."""
    path = tmp_path / "dims.toml"  # tests/unit/test_convert_lycoris_flow_preset_file.py's LOKR_DIMS
    own = '[name_algo_map."double_blocks.*.txt_attn.qkv"]\ndim = 1\nalpha = 1\nfactor = 4\n'
    own += "decompose_both = true\nunbalanced_factorization = true\n"  # LoKr's split swapped
    own += "[module_algo_map.CLIPAttention]\ndim = 2\nalpha = 1\n"
    own += "[module_algo_map.T5Attention]\ndim = 3\nalpha = 1\nfactor = 4\n"  # T5-XXL's: train.t5
    if algo == "lokr":
        own += '[name_algo_map."double_blocks.*.txt_attn.proj"]\ndim = 100000\n'
    text = _with_outside(PRESETS["double_attention"])
    text = text.replace('["CLIPAttention"]', '["CLIPAttention", "T5Attention"]')
    path.write_text(text + "\n" + own, encoding="utf-8")
    kept_lycoris_presets(monkeypatch)
    kohya = copy.deepcopy(models["kohya"])  # the double blocks' attention at FLUX.1's widths: real splits
    with torch.device("meta"):
        for i, stream in ((i, s) for i in range(19) for s in ("img", "txt")):
            attn = kohya.get_submodule(f"double_blocks.{i}.{stream}_attn")
            attn.qkv, attn.proj = nn.Linear(3072, 9216), nn.Linear(3072, 3072)
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, models["te"], kohya, algo=algo, preset=str(path))
    theirs = {
        m.lora_name: (m.lora_dim, float(m.scale), {k: tuple(v.shape) for k, v in m.state_dict().items()})
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }
    assert {d for d, _, _ in theirs.values()} == {1, 2, 3, 4, 16} | ({100000} if algo == "lokr" else set())
    a = _converted(tmp_path, path.name, algo).adapter
    ours = {}
    for name, module in models["te"][0].named_modules():
        if isinstance(module, nn.Linear) and _matches(name, a.text_encoder_targets):
            block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, f"text_encoder.{name}"))
            out_dim, in_dim = module.weight.shape
            ours[f"lora_te1_{name.replace('.', '_')}"] = _lycoris_form(algo, out_dim, in_dim, block, a)
    for name, module in models["te"][1].named_modules():  # T5-XXL (train.t5): LyCORIS's lora_te2_
        if isinstance(module, nn.Linear) and _matches(name, a.t5_targets):
            block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, f"text_encoder_2.{name}"))
            if block.rank:
                out_dim, in_dim = module.weight.shape
                ours[f"lora_te2_{name.replace('.', '_')}"] = _lycoris_form(algo, out_dim, in_dim, block, a)
    for kohya_path, _, kind in flux_model():
        parts = diffusers_parts(kohya_path) if kind else ()
        if not parts or not _adapted(parts[0], a):
            continue
        block = next((b for b in a.blocks if re.search(b.pattern, parts[0])), None)
        out_dim, in_dim = kohya.get_submodule(kohya_path).weight.shape
        ours["lora_unet_" + kohya_path.replace(".", "_")] = _lycoris_form(algo, out_dim, in_dim, block, a)
    assert sorted(ours) == sorted(theirs)
    assert {"lora_unet_img_in", "lora_unet_final_layer_adaLN_modulation_1"} <= set(ours)
    for name, (rank, scale, shapes) in ours.items():
        assert theirs[name][0] == rank and theirs[name][1] == pytest.approx(scale), name
        assert theirs[name][2] == shapes, name
    if algo == "lokr":  # factor 4, decompose_both, the output split swapped: w1 (2304 x 4 of 9216 x 3072)
        assert theirs["lora_unet_double_blocks_0_txt_attn_qkv"][2]["lokr_w1_a"] == (2304, 1)
        # dim 100000: both factors full at scale 1
        assert theirs["lora_unet_double_blocks_0_txt_attn_proj"][:2] == (100000, 1.0)


# plain Linears outside the double and single blocks: an embedder, the final layer's (kohya's adaLN rows
# are diffusers' norm_out.linear's halves swapped) and the timestep MLP's first
OUTSIDE = ["img_in", "time_in.in_layer", "final_layer.linear", "final_layer.adaLN_modulation.1"]


def _with_outside(preset: str) -> str:
    names = ", ".join(f'"{n}"' for n in OUTSIDE)
    return preset.replace('["double_blocks.*_attn.*"]', f'["double_blocks.*_attn.*", {names}]')


def _lycoris_form(algo: str, out_dim: int, in_dim: int, block, a) -> tuple:
    """(rank, scale, state shapes) of LyCORIS's LokrModule / LohaModule on a Linear at the plan's rank (its
    block's, when one matches), as runtime/fused_lokr.py's lokr_shapes splits it."""
    from dbspec.runtime.fused_lokr import lokr_shapes

    rank, alpha = (a.rank, a.alpha) if block is None else (block.rank, block.alpha)
    if algo == "lokr":
        factor = block.factor if block is not None and block.factor else a.factor
        both = block.decompose_both == "on" if block is not None else a.decompose_both
        swap = block.unbalanced_factorization == "on" if block is not None else a.unbalanced_factorization
        shapes = lokr_shapes(out_dim, in_dim, rank, factor, both, False, swap)
        scale = 1.0 if {"lokr_w1", "lokr_w2"} <= set(shapes) else alpha / rank
    else:
        shapes = {"hada_w1_a": (out_dim, rank), "hada_w1_b": (rank, in_dim)}
        shapes |= {"hada_w2_a": (out_dim, rank), "hada_w2_b": (rank, in_dim)}
        scale = alpha / rank
    return rank, scale, {**shapes, "alpha": ()}


def test_flux_lokr_file_clip_dims_and_a_full_dim_train_resume_and_load_in_lycoris(tmp_path):
    """A tiny Flux LoKr run of a file giving CLIP-L's attention a dim of its own (text_encoder_blocks),
    T5-XXL's attention LoKr at dim 2, factor 4 (train.t5) and the txt stream's q/k/v LyCORIS's full-matrix
    dim 100000 (a block above 1024), with Linears outside the blocks (the embedders, the final layer): it
    resumes bit-exact, T5's modules are exported under LyCORIS's `lora_te2_`, where lycoris-lora's
    create_network_from_weights loads them, and lycoris-lora's LokrModule loaded from the export computes
    what the trained layers compute (a T5 and a CLIP-L Linear at rank 2, the fused q/k/v with both factors
    full, img_in, the final adaLN Linear with kohya's row order)."""
    from lycoris.modules.lokr import LokrModule

    from tests.runtime.lycoris_flow_kit import stacked_linear

    own = '[name_algo_map."double_blocks.*.txt_attn.qkv"]\ndim = 100000\n'
    own += "[module_algo_map.CLIPAttention]\ndim = 2\nalpha = 1\n"
    own += "[module_algo_map.T5Attention]\ndim = 2\nalpha = 1\nfactor = 4\n"  # T5-XXL's: train.t5
    text = _with_outside(PRESETS["double_attention"])
    text = text.replace('["CLIPAttention"]', '["CLIPAttention", "T5Attention"]')
    (tmp_path / "full_dim.toml").write_text(text + "\n" + own, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]
    a = _converted(tmp_path, "full_dim.toml", "lokr", overrides=base).adapter
    # first the rank-0 block keeping the single blocks' proj_out off the final layer's target
    assert [b.rank for b in a.blocks] == [0, 16, 100000] and [b.rank for b in a.text_encoder_blocks] == [
        0,
        2,
        2,
    ]
    whole = execute(compile_spec(_spec(tmp_path), [*base, "output.dir=whole"]), keep_models=True)
    parts = compile_spec(_spec(tmp_path), [*base, "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    tensors, again = (
        load_file(str(next(Path(r.final).glob("*.kohya.safetensors")))) for r in (whole, second)
    )
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)
    unet = whole.components.unet
    attn = unet.transformer_blocks[0].attn
    clip = dict(whole.components.text_encoders[0].named_modules())
    t5 = dict(whole.components.text_encoders[1].named_modules())
    # LyCORIS's names: T5-XXL the second encoder kohya hands it (kohya lora_flux's lora_te3_ is not LyCORIS's)
    assert not any(k.startswith("lora_te3_") for k in tensors)
    t5_names = {f"lora_te2_encoder_block_{i}_layer_0_SelfAttention_{n}" for i in range(2) for n in "qkvo"}
    assert {k.split(".")[0] for k in tensors if k.startswith("lora_te2_")} == t5_names
    # lycoris-lora's loader on [CLIP-L, T5-XXL] builds T5's LokrModules from the file (its split read off
    # the shapes) with the trained T5 layer's output (no CLIP-L or Flux layer given: T5's modules alone)
    plain = _unwrapped(whole.components.text_encoders[1])
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, None, None, [nn.Module(), plain], nn.Module(), tensors
    )
    assert {m.lora_name for m in network.text_encoder_loras} == t5_names
    network.apply_to([nn.Module(), plain], nn.Module(), apply_text_encoder=True, apply_unet=False)
    v = t5["encoder.block.1.layer.0.SelfAttention.v"]
    theirs_v = next(
        m for m in network.text_encoder_loras if m.lora_name.endswith("block_1_layer_0_SelfAttention_v")
    )
    x = torch.randn(3, v.base_layer.in_features)
    with torch.no_grad():
        assert isinstance(theirs_v, LokrModule) and not torch.allclose(v(x), v.base_layer(x), atol=1e-7)
        torch.testing.assert_close(theirs_v.eval()(x), v(x), rtol=0, atol=1e-5)
    for name, layers in (
        ("lora_unet_double_blocks_0_txt_attn_qkv", (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)),
        (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            (clip["encoder.layers.0.self_attn.q_proj"],),
        ),
        ("lora_unet_img_in", (unet.x_embedder,)),  # outside the blocks: plain Linears
        ("lora_unet_final_layer_adaLN_modulation_1", (unet.norm_out.linear,)),
    ):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
        rank = state["lokr_w2_a"].shape[1] if "lokr_w2_a" in state else 100000
        swap = name.endswith("adaLN_modulation_1")  # kohya's (shift, scale) rows, diffusers' (scale, shift)
        theirs = LokrModule(
            name, _halves_swapped(stacked_linear(layers), swap), 1.0, rank, state["alpha"].item()
        )
        theirs.load_state_dict(state)
        theirs.apply_to()
        x = torch.randn(3, layers[0].base_layer.in_features)
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layers], dim=-1)
            assert not torch.allclose(trained, torch.cat([p.base_layer(x) for p in layers], -1), atol=1e-7)
            if swap:
                trained = torch.cat(trained.chunk(2, dim=-1)[::-1], dim=-1)
            torch.testing.assert_close(theirs.eval()(x), trained, rtol=0, atol=1e-5)


def _halves_swapped(layer: nn.Linear, swap: bool) -> nn.Linear:
    """The Linear with its two halves of rows (weight and bias) the other way round when `swap`."""
    if swap:
        with torch.no_grad():
            layer.weight.copy_(torch.cat(layer.weight.chunk(2)[::-1]))
            layer.bias.copy_(torch.cat(layer.bias.chunk(2)[::-1]))
    return layer


def test_sd3_patch_convolution_at_a_file_dim_is_lycoris_locon(tmp_path):
    """The patch convolution at a map entry's dim of its own (2, alpha 1, beside conv_dim 4) on tiny-sd3: the
    run's layer is rank 2 at scale 1/2, and its kohya_lora export (`lora_unet_x_embedder_proj`) loads in
    lycoris-lora's LoConModule with the layer's output (no training: the LoRA up set at random)."""
    from lycoris.modules.locon import LoConModule

    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    path = tmp_path / "patch.toml"
    path.write_text(SD3_PRESETS["x_attention"] + "\n[module_algo_map.PatchEmbed]\ndim = 2\nalpha = 1\n")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        '--network_dim=4 --network_alpha=1 --network_args "algo=locon" "conv_dim=4" "preset=patch.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    run = [
        "model.base=builtin:tiny-sd3",
        "model.text_encoder_files=[]",
        'model.vae=""',
        "model.t5_max_length=16",
    ]
    plan = compile_spec(out_path(tmp_path), run)
    comps = family_runtime("sd3").load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    proj = comps.unet.float().pos_embed.proj
    assert proj.r["default"] == 2 and proj.scaling["default"] == 0.5
    torch.manual_seed(0)
    torch.nn.init.normal_(proj.lora_B["default"].weight, std=0.2)
    tensors, _ = family_runtime("sd3").exports.kohya_lora_state(
        denoiser=comps.unet, text_encoders=[], dtype="fp32"
    )
    name = "lora_unet_x_embedder_proj"
    state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
    conv = nn.Conv2d(proj.base_layer.in_channels, proj.base_layer.out_channels, 2, stride=2)
    conv.load_state_dict(proj.base_layer.state_dict())
    theirs = LoConModule(name, conv, 1.0, 2, state["alpha"].item())
    theirs.load_state_dict(state)
    theirs.apply_to()
    x = torch.randn(2, conv.in_channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(proj(x), proj.base_layer(x), atol=1e-4)
        torch.testing.assert_close(theirs.eval()(x), proj(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("algo", ["locon", "lokr"])
def test_flux_entry_weight_decompose_decomposes_its_fused_layers_only(models, tmp_path, monkeypatch, algo):
    """The double-attention file with the img q/k/v entry's own weight_decompose (issue 12): lycoris-lora's
    network decomposes exactly that entry's fused Linears; a tiny run's export (LoCon, or LoKr: was DBS403,
    its block `dora = "on"`) carries `dora_scale` on the modules of tiny-flux that LyCORIS decomposes and no
    other, one magnitude per fused row, and a run stopped after a step resumes to the same export."""
    text = PRESETS["double_attention"] + "weight_decompose = true\n"
    path = tmp_path / "double_attention.toml"
    path.write_text(text, encoding="utf-8")
    # the entry's layers as lycoris-lora resolves them (create_single_module hands them its dim 16 and its
    # weight_decompose together; built without it, as LyCORIS cannot take the norms of meta weights)
    plain = tmp_path / "plain.toml"
    plain.write_text(PRESETS["double_attention"], encoding="utf-8")
    found = _lycoris_modules(models, str(plain), monkeypatch, algo)
    theirs = {m.lora_name: m.lora_dim == 16 for m in found}
    assert any(theirs.values()) and not all(theirs.values())
    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]
    plan = _converted(tmp_path, path.name, algo, overrides=base)
    assert [b.dora for b in plan.adapter.blocks] == ["on"] and plan.adapter.dora_form == "lycoris"
    whole = execute(compile_spec(_spec(tmp_path), [*base, "output.dir=whole"]))
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    modules = {k.split(".")[0] for k in tensors}
    assert modules <= set(theirs)
    decomposed = {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")}
    assert decomposed and decomposed == {m for m in modules if theirs[m]}
    for name in decomposed:  # per output row of tiny-flux's fused Linear (LoKr: its factors' rows' product)
        if algo == "locon":
            rows = tensors[f"{name}.lora_up.weight"].shape[0]
        else:
            w1 = tensors.get(f"{name}.lokr_w1", tensors.get(f"{name}.lokr_w1_a"))
            w2 = tensors.get(f"{name}.lokr_w2", tensors.get(f"{name}.lokr_w2_a"))
            rows = w1.shape[0] * w2.shape[0]
        assert list(tensors[f"{name}.dora_scale"].shape) == [rows, 1]
    parts = compile_spec(_spec(tmp_path), [*base, "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    second = execute(parts, resume=True)
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    b = load_file(str(again))
    assert tensors.keys() == b.keys() and all(torch.equal(tensors[k], b[k]) for k in tensors)
