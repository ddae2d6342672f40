"""The network's `rank_dropout` beside a LyCORIS preset file's entries of other algorithms on Flux / SD3 /
Chroma's fused Linears, layer by layer on fixed inputs, without a tiny run (issue 12): the plan's denoiser
as runtime/prepare.py builds it for the run (its dropouts wrapped), every trainable tensor moved at random,
its LyCORIS export loaded into lycoris-lora 4.1.3's create_network from the same preset file on kohya's
layers (the parts' base weights stacked in kohya's rows); each kohya layer's module in training from one
generator state against the parts called in diffusers' order: outputs, input gradients and the generator
left where the module leaves it (one mask per fused Linear, its parts sharing it; the masks move on).

- Flux: an algo=dylora network with `train_norm` (was DBS403): the entries draw the adapter's
  `rank_dropout`, CLIP-L's NormModules `norm_rank_dropout` (the same rate), DyLoraModule none; each CLIP
  LayerNorm's offsets against its NormModule alike. An algo=glora network whose Diag-OFT entry has its own
  `bypass_mode` (was DBS403): DiagOFTModule's bypass forward draws no rank dropout, the other entries theirs.
  LoCon and GLoRA networks' `dora_wd` (was DBS403): the decomposed fused layers beside other kinds, the
  magnitudes' gradients too; per input column (`wd_on_output = false`, was DBS403) on LoCon, GLoRA and
  DyLoRA networks, each fused module's parts sharing one magnitude.
- SD3 and Chroma (their fused rank-dropout paths are Flux's code, runtime/mixed_kinds.py): a LoCon network
  with LoHa, Diag-OFT, full and IA^3 entries on their fused q/k/v (SD3's last context modulation in kohya's
  row order)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RATE, DROP = 0.25, 0.3
DYLORA_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPEncoderLayer"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "loha"
dim = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "full"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "ia3"
"""
BYPASS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
dim = 4
bypass_mode = true
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
"""
# SD3: kohya's MMDiT joint blocks' fused q/k/v and the context modulation; Chroma: Flux's names
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.adaLN_modulation.1"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "loha"
dim = 2
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "diag-oft"
dim = 4
[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]
algo = "full"
[name_algo_map."joint_blocks.0.x_block.adaLN_modulation.1"]
algo = "ia3"
"""
CHROMA_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "loha"
dim = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "full"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "diag-oft"
dim = 4
[name_algo_map."double_blocks.*.img_attn.proj"]
algo = "ia3"
"""
FLUX = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev "
    "--clip_l clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors --model_prediction_type raw "
    "--guidance_scale 1.0"
)
SD3 = (
    "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
    "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
    "--t5xxl t5xxl.safetensors"
)
CHROMA = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors "
    "--model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors --apply_t5_attn_mask "
    "--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0"
)
FILES = {
    "flux": ("clip_l", "t5xxl", "ae"),
    "sd3": ("clip_l", "clip_g", "t5xxl"),
    "chroma": ("Chroma1-HD", "t5xxl", "ae"),
}


def _plan(tmp_path: Path, family: str, script: str, preset: str, args: dict[str, str]):
    """The kohya command (`script` with lycoris.kohya at network_dim 4, alpha 1, the preset file and `args`)
    converted without refusal and planned on the family's tiny model."""
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in FILES[family]:
        component_file(tmp_path / f"{name}.safetensors")
    network_args = " ".join(f'"{k}={v}"' for k, v in {"preset": "p.toml", **args}.items())
    outcome = kohya(
        tmp_path,
        command=f"{script} --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f"--network_dim=4 --network_alpha=1 --network_args {network_args} --learning_rate=1e-2 "
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    base = [f"model.base=builtin:tiny-{family}", "model.text_encoder_files=[]", 'model.vae=""']
    return plan_of(outcome, tmp_path, [*base, *(['model.denoiser_file=""'] if family == "chroma" else [])])


def _prepared(model: nn.Module, name: str, plan, targets) -> nn.Module:
    """`model` as runtime/prepare.py builds it for the run, every trainable tensor moved at random."""
    from dbspec.runtime.prepare import _prepare

    params = _prepare(model, name, plan, torch.device("cpu"), targets, 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    return model


def _network(monkeypatch, algo: str, file: Path, text_encoders, tree, args: dict[str, str]):
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, text_encoders, tree, algo=algo, preset=str(file), **args
    )
    made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
    return made


def _same_training(module: nn.Module, ours, x: torch.Tensor, name: str) -> bool:
    """LyCORIS's `module` and `ours` (x -> the parts' stacked output) over six training forwards from one
    generator state: equal outputs, input gradients and generator state after; whether the draws moved."""
    results = []
    for forward in (module, ours):
        torch.manual_seed(11)
        outs, grads = [], []
        for _ in range(6):
            xi = x.clone().requires_grad_(True)
            out = forward(xi)
            out.pow(2).sum().backward()
            outs.append(out.detach())
            grads.append(xi.grad)
        results.append((outs, grads, torch.get_rng_state()))
    (want, want_grads, after), (got, got_grads, state) = results
    assert torch.equal(after, state), name  # the same draws in the same order
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    return len({tuple(o.flatten()[:4].tolist()) for o in got}) > 2


def check_fused_layers(monkeypatch, plan, denoiser, file, algo, args, rows, parts_of, swapped=None) -> dict:
    """The prepared `denoiser`'s kohya layers against lycoris-lora's network from the preset `file` loaded
    with its export: {kohya path: LyCORIS module} of the layers compared (DyLoraModule's, which never read
    rank_dropout and draw their block from Python's random, left out)."""
    ours = _prepared(denoiser, "unet", plan, plan.adapter.denoiser_targets)
    family = plan.model.family
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    layers = _kohya_layers(ours, rows, parts_of, swapped)
    made = _network(
        monkeypatch, algo, file, [nn.Module(), nn.Module(), nn.Module()], _kohya_tree(layers), args
    )
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    result = made.load_state_dict(
        {k: v for k, v in tensors.items() if k.split(".")[0] not in dylora}, strict=False
    )
    assert not result.unexpected_keys, result
    assert all(k.split(".")[0] in dylora for k in result.missing_keys), result
    theirs = {m.lora_name: m for m in made.unet_loras if m.lora_name not in dylora}
    singles = {id(b.proj_mlp) for b in getattr(ours, "single_transformer_blocks", ())}
    ours.train()
    compared, masked = {}, 0
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None:
            continue
        assert module.rank_dropout == RATE, path
        calls = sorted(parts, key=lambda p: id(p) not in singles)  # diffusers calls proj_mlp first

        def stacked(x, parts=parts, calls=calls, order=order):
            got = {id(p): p(x) for p in calls}
            out = torch.cat([got[id(p)] for p in parts], dim=-1)
            return out if order is None else out[..., order]

        x = torch.randn(3, _base(parts[0]).in_features)
        masked += _same_training(module.train(), stacked, x, path)
        compared[path] = module
        if getattr(module, "dora_scale", None) is not None:  # a decomposed module: its magnitudes' gradients
            if module.dora_scale.shape[0] == 1:  # per input column: the parts' one shared magnitude
                assert len({id(dora_scale_of(p, "default")) for p in parts}) == 1, path
                ours_grad = dora_scale_of(parts[0], "default").grad
                torch.testing.assert_close(ours_grad, module.dora_scale.grad, rtol=1e-3, atol=1e-5, msg=path)
                continue
            ours_grad = torch.cat([dora_scale_of(p, "default").grad for p in parts])
            ours_grad = ours_grad if order is None else ours_grad[order]
            torch.testing.assert_close(ours_grad, module.dora_scale.grad, rtol=1e-3, atol=1e-6, msg=path)
    ours.zero_grad(set_to_none=True)
    assert masked >= 2  # the draws move on
    return compared


def _classes(compared: dict) -> set[str]:
    return {type(m).__name__ for m in compared.values()}


def test_flux_dylora_network_with_norms_rank_dropout(tmp_path, monkeypatch):
    """algo=dylora with train_norm and rank_dropout: the entries' fused modules and CLIP-L's NormModules."""
    from dbspec.runtime.norm_offsets import BIAS, WEIGHT
    from dbspec.runtime.prepare import text_targets

    args = {"algo": "dylora", "block_size": "2", "train_norm": "True"}
    args |= {"rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, "flux", FLUX, DYLORA_FILE, args)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", RATE, RATE, DROP)
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused
    pipe = build_pipeline("builtin:tiny-flux")
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout", "block_size")}
    compared = check_fused_layers(
        monkeypatch, plan, pipe.transformer.float(), tmp_path / "p.toml", "dylora", drops,
        flux_model(1, 1), diffusers_parts,
    )  # fmt: skip
    assert _classes(compared) == {"LohaModule", "FullModule", "LoConModule", "IA3Module"}
    assert "double_blocks.0.img_attn.qkv" in compared

    # CLIP-L: each LayerNorm's offsets against its NormModule (lycoris-lora's network on the base CLIP-L)
    base = copy.deepcopy(pipe.text_encoder).float()
    clip = _prepared(pipe.text_encoder.float(), "text_encoder", plan, text_targets(a, "text_encoder"))
    encoders = [_kohya_clip(base), nn.Module()]
    made = _network(
        monkeypatch, "dylora", tmp_path / "p.toml", encoders, nn.Module(), {**drops, "train_norm": "True"}
    )
    norms = {m.lora_name: m for m in made.text_encoder_loras if type(m).__name__ == "NormModule"}
    ours = {
        "lora_te1_" + ("text_model." + path).replace(".", "_"): layer
        for path, layer in clip.named_modules()
        if hasattr(layer, WEIGHT)
    }
    assert norms.keys() == ours.keys() and len(norms) >= 4
    moved = 0
    for name, module in norms.items():
        layer = ours[name].train()
        assert module.rank_dropout == RATE and module.module_dropout == DROP, name
        with torch.no_grad():
            module.w_norm.copy_(getattr(layer, WEIGHT))
            module.b_norm.copy_(getattr(layer, BIAS))
        moved += _same_training(module.train(), layer, torch.randn(3, 5, layer.normalized_shape[0]), name)
    assert moved >= 2


def test_flux_glora_network_with_an_entrys_own_bypass_mode(tmp_path, monkeypatch):
    """algo=glora with rank_dropout and a Diag-OFT entry's own bypass_mode on the image q/k/v."""
    args = {"algo": "glora", "rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, "flux", FLUX, BYPASS_FILE, args)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.module_dropout) == ("glora", RATE, DROP)
    assert [(b.kind, b.bypass) for b in a.blocks if b.kind == "diag-oft"] == [("diag-oft", True)]
    pipe = build_pipeline("builtin:tiny-flux")
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout")}
    compared = check_fused_layers(
        monkeypatch, plan, pipe.transformer.float(), tmp_path / "p.toml", "glora", drops,
        flux_model(1, 1), diffusers_parts,
    )  # fmt: skip
    own = compared["double_blocks.0.img_attn.qkv"]  # LyCORIS's module in the entry's bypass_mode
    assert type(own).__name__ == "DiagOFTModule" and own.bypass_mode and not own.dropout
    assert {"LohaModule", "LoConModule", "GLoRAModule"} <= _classes(compared)


@pytest.mark.parametrize("algo", ["locon", "glora", "locon-columns", "glora-columns", "dylora-columns"])
def test_flux_decomposed_fused_layers_beside_other_kinds(tmp_path, monkeypatch, algo):
    """dora_wd with rank_dropout beside other kinds on the fused Linears (was DBS403, a spec's DBS578): a
    LoCon network's own layers and its LoHa entry decomposed (the adapter's dora), a GLoRA network's LoCon /
    LoHa entries (their blocks' dora); each part decomposes its rows of its fused module's masked update:
    the magnitudes' gradients equal LyCORIS's `dora_scale` gradients too. With wd_on_output=False
    (`-columns`, was DBS403) per input column: the LoCon network's layers and LoHa entry, a GLoRA or DyLoRA
    network's LoCon / LoHa entries (their blocks' dora_axis); each fused module's parts share one (1, in)
    magnitude, renormalised by the column norms of every part's masked rows as LoConModule / LohaModule
    decompose the stacked weight."""
    algo, columns = algo.removesuffix("-columns"), algo.endswith("-columns")
    preset = BYPASS_FILE.replace('algo = "diag-oft"\ndim = 4\nbypass_mode = true', 'algo = "full"')
    args = {"algo": algo, "rank_dropout": str(RATE), "module_dropout": str(DROP), "dora_wd": "True"}
    args |= {"wd_on_output": "False"} if columns else {}
    args |= {"block_size": "2"} if algo == "dylora" else {}
    plan = _plan(tmp_path, "flux", FLUX, preset, args)
    a = plan.adapter
    assert a.rank_dropout == RATE and a.fused and (a.dora or {b.dora for b in a.blocks} >= {"on"})
    # a GLoRA adapter has no axis: its decomposed blocks carry it
    assert ("input" in {a.dora_axis, *(b.dora_axis for b in a.blocks)}) == columns
    drops = {k: v for k, v in args.items() if k != "algo"}
    compared = check_fused_layers(
        monkeypatch, plan, build_pipeline("builtin:tiny-flux").transformer.float(), tmp_path / "p.toml", algo,
        drops, flux_model(1, 1), diffusers_parts,
    )  # fmt: skip
    decomposed = {p: m for p, m in compared.items() if getattr(m, "dora_scale", None) is not None}
    assert {"single_blocks.0.linear1", "double_blocks.0.txt_attn.qkv"} <= decomposed.keys()
    assert {m.dora_scale.shape[0] == 1 for m in decomposed.values()} == {columns}
    assert type(compared["double_blocks.0.img_attn.qkv"]).__name__ == "FullModule"


@pytest.mark.parametrize("family", ["sd3", "chroma"])
def test_sd3_and_chroma_fused_layers_draw_as_lycoris(tmp_path, monkeypatch, family):
    """A LoCon network's rank_dropout and module_dropout beside LoHa / Diag-OFT / full / IA^3 entries on
    SD3's and Chroma's fused Linears."""
    from dbspec.runtime.sd3_kohya import swapped

    script, preset = (SD3, SD3_FILE) if family == "sd3" else (CHROMA, CHROMA_FILE)
    args = {"algo": "locon", "rank_dropout": str(RATE), "module_dropout": str(DROP)}
    plan = _plan(tmp_path, family, script, preset, args)
    assert plan.adapter.fused and plan.adapter.rank_dropout_form == "lycoris"
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    rows = mmdit(2, ()) if family == "sd3" else chroma_model(1, 1, 2)
    parts_of = sd3_parts if family == "sd3" else chroma_parts
    drops = {k: args[k] for k in ("rank_dropout", "module_dropout")}
    compared = check_fused_layers(
        monkeypatch, plan, transformer, tmp_path / "p.toml", "locon", drops, rows, parts_of,
        swapped if family == "sd3" else None,
    )  # fmt: skip
    fused = [p for p in compared if "qkv" in p or "linear1" in p]
    assert len(fused) >= 2 and {"LohaModule", "DiagOFTModule", "FullModule"} <= _classes(compared)
    if family == "sd3":  # the last context modulation's rows in kohya's order (shift, scale)
        assert type(compared["joint_blocks.1.context_block.adaLN_modulation.1"]).__name__ == "FullModule"
