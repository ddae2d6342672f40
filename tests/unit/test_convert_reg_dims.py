"""kohya's networks.lora_flux `network_reg_dims` / `network_reg_lrs` converted exactly
(dbspec/convert/kohya/reg_dims.py): each module's rank, alpha and learning rate in the plan equals what
kohya's create_network gives it, computed here independently from its rules: comma-separated `regex=value`
items, the first regex `re.search` finds in the kohya module name wins, a matched rank replaces every other
rank rule (per-type ranks, in_dims, block indices) but not train_blocks, and a matched rate is the module's
absolute rate (LoRA+'s up matrices at rate x ratio)."""

from __future__ import annotations

import contextlib
import re

from convert_kit import codes, component_file, errors, fate, images, kohya, messages, plan_of

FLUX = "black-forest-labs/FLUX.1-dev"
BASE = (
    f"accelerate launch --mixed_precision bf16 flux_train_network.py --pretrained_model_name_or_path {FLUX} "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --seed 42 --mixed_precision bf16 --save_precision bf16 --network_module "
    "networks.lora_flux --network_dim 16 --network_alpha 8 --network_train_unet_only --optimizer_type "
    "adamw8bit --learning_rate 3e-4 --cache_text_encoder_outputs --max_train_steps 400 --timestep_sampling "
    "shift --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0"
)
# kohya's Flux module names (double_blocks_N_<child>, single_blocks_N_<child>) and their diffusers paths
DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",)}
SINGLE["modulation_lin"] = ("norm.linear",)


def _flux(tmp_path, network_args: str, extra: str = "", base: str = BASE):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, command=f"{base} {extra} --network_args {network_args}")


def _modules():
    for i in range(19):
        for child, paths in DOUBLE.items():
            yield f"lora_unet_double_blocks_{i}_{child}", [f"transformer_blocks.{i}.{p}" for p in paths]
    for i in range(38):
        for child, paths in SINGLE.items():
            yield (
                f"lora_unet_single_blocks_{i}_{child}",
                [f"single_transformer_blocks.{i}.{p}" for p in paths],
            )


def _pairs(text: str, kind):
    out = {}
    for item in (x.strip() for x in text.split(",")):
        if "=" in item:
            key, value = item.split("=", 1)
            with contextlib.suppress(ValueError):
                out[key.strip()] = kind(value.strip())
    return out


def _first(pairs: dict, name: str):
    return next((v for k, v in pairs.items() if re.search(k, name)), None)


def _planned(plan, path: str):
    """(rank, alpha, rate) the plan gives the diffusers module `path` (the first block that matches)."""
    a = plan.adapter
    block = next((b for b in a.blocks if re.search(b.pattern, path)), None)
    if block is None:
        return a.rank, a.alpha, plan.optimizer.lr
    rate = block.lr or plan.optimizer.lr * block.lr_scale
    return block.rank, block.alpha, rate if block.rank else None


def test_readme_regexes_give_every_flux_module_kohyas_rank_and_rate(tmp_path):
    """sd-scripts' docs/flux_train_network.md examples, with per-type ranks and block indices that the
    regex ranks override (double block 15's img_attn trains at 8, though train_double_block_indices omits
    it)."""
    dims, lrs = r"single.*_modulation.*=4,img_attn=8", r"single_blocks_(\d|10)_=1e-3,double_blocks=2e-3"
    outcome = _flux(
        tmp_path,
        f'"network_reg_dims={dims}" "network_reg_lrs={lrs}" "img_mlp_dim=12" '
        '"train_double_block_indices=0-9"',
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    plan = plan_of(outcome, tmp_path)
    reg_dims, reg_lrs = _pairs(dims, int), _pairs(lrs, float)
    checked = 0
    for name, paths in _modules():
        rank = _first(reg_dims, name)
        if rank is None:  # kohya's other rules: the per-type rank, then the block indices
            rank = 12 if "img_mlp" in name else 16
            if "double" in name and int(name.split("_")[4]) > 9:
                rank = 0
        rate = (_first(reg_lrs, name) or 3e-4) if rank else None
        for path in paths:
            assert _planned(plan, path) == (rank, 8.0 if rank else _planned(plan, path)[1], rate), (
                name,
                path,
            )
            checked += 1
    assert checked == 19 * 14 + 38 * 6
    assert _planned(plan, "proj_out")[0] == 0  # the final layer stays out


def test_reg_dims_zero_skips_and_first_regex_wins(tmp_path):
    outcome = _flux(tmp_path, '"network_reg_dims=double_blocks_1_=0, double_blocks_1=32,txt_mlp=2,bad"')
    plan = plan_of(outcome, tmp_path)
    assert _planned(plan, "transformer_blocks.1.attn.to_q")[0] == 0  # `double_blocks_1_` first: rank 0
    assert _planned(plan, "transformer_blocks.12.attn.to_q")[0] == 32  # `double_blocks_1` matches 12
    assert _planned(plan, "transformer_blocks.3.ff_context.net.2")[0] == 2
    assert _planned(plan, "transformer_blocks.3.ff.net.2")[0] == 16
    assert "`bad` is not regex=value" in messages(outcome, "DBS405")


def test_reg_lrs_with_loraplus_and_unet_lr_are_exact(tmp_path):
    outcome = _flux(tmp_path, '"network_reg_lrs=txt_=7e-5" "loraplus_lr_ratio=16"', "--unet_lr 3.3e-4")
    plan = plan_of(outcome, tmp_path)
    block = next(b for b in plan.adapter.blocks if b.lr)
    assert block.lr == 7e-5 and block.lr_scale == 1.0  # kohya's absolute rate (LoRA+: x 16 in the runtime)
    assert plan.optimizer.loraplus_denoiser_ratio == 16
    assert _planned(plan, "transformer_blocks.0.attn.add_k_proj")[2] == 7e-5
    assert _planned(plan, "transformer_blocks.0.attn.to_k")[2] == 3.3e-4


def test_regexes_on_embedders_only_with_in_dims(tmp_path):
    outcome = _flux(tmp_path, '"network_reg_dims=time_in_in=6" "in_dims=[4,0,0,0,0]"')
    plan = plan_of(outcome, tmp_path)
    assert "timestep_embedder.linear_1" in plan.adapter.denoiser_targets
    assert _planned(plan, "time_text_embed.timestep_embedder.linear_1")[0] == 6
    assert _planned(plan, "x_embedder")[0] == 4
    assert "timestep_embedder.linear_2" not in plan.adapter.denoiser_targets


def test_train_blocks_limits_the_regexes(tmp_path):
    outcome = _flux(tmp_path, '"network_reg_dims=double_blocks_0_=8" "train_blocks=single"')
    plan = plan_of(outcome, tmp_path)
    assert _planned(plan, "transformer_blocks.0.attn.to_q")[0] == 0


def test_what_kohya_cannot_or_dbspec_does_not(tmp_path):
    bad = _flux(tmp_path, '"network_reg_dims=img_attn(=8"')
    assert not bad.written and "re.error" in "".join(errors(bad))
    base = BASE.replace("--network_train_unet_only", "").replace("--cache_text_encoder_outputs", "")
    # a regex on CLIP-L's modules while it trains ranks them (was DBS403; test_convert_reg_lrs_text.py)
    text = _flux(tmp_path, '"network_reg_dims=layers_1_=8"', "", base)
    assert fate(text, "network_args") == "mapped"
    block = plan_of(text, tmp_path).adapter.text_encoder_blocks[0]
    assert block.rank == 8 and re.search(block.pattern, "text_encoder.text_model.encoder.layers.1.mlp.fc2")


def test_lora_sd3_does_not_read_them(tmp_path):
    """networks/lora_sd3.py's create_network (and networks/lora.py's) read no network_reg_dims / _lrs in
    the current sd-scripts: kohya ignores them, so the conversion warns and trains every module alike."""
    from test_convert_lora_sd3 import _sd3

    outcome = _sd3(tmp_path, '--network_args "network_reg_dims=attn=8" "network_reg_lrs=attn=1e-3"')
    plan = plan_of(outcome, tmp_path)
    assert not any(b.lr or b.rank == 8 for b in plan.adapter.blocks)
    assert "network_reg_dims" in messages(outcome, "DBS405") and "network_reg_lrs" in messages(
        outcome, "DBS405"
    )


def test_text_encoder_only_applies_no_denoiser_regex(tmp_path):
    """train_network.py applies no denoiser LoRA with network_train_text_encoder_only: the regexes over
    lora_unet_ names do nothing (and dbspec's denoiser does not train)."""
    base = BASE.replace("--network_train_unet_only", "").replace("--cache_text_encoder_outputs", "")
    only = "--network_train_text_encoder_only --text_encoder_lr 1e-5"
    outcome = _flux(tmp_path, '"network_reg_lrs=img_attn=1e-3"', only, base)
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and not any(b.lr for b in plan.adapter.blocks)


def test_the_plan_summary_shows_a_blocks_own_rate(tmp_path):
    import io

    from rich.console import Console

    from dbspec.plan.summary import render_summary

    plan = plan_of(_flux(tmp_path, '"network_reg_lrs=img_attn=1e-3"'), tmp_path)
    console = Console(file=io.StringIO(), width=300)
    render_summary(plan, console)
    assert "lr 0.001" in console.file.getvalue()
