"""A run saved before plan_version 4 (the denoiser rename) resumes: its run.json and training_state.pt hold
the run hash of the old field names (`train_unet`, `adapter.unet_targets`, plan_version 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.plan.io import _canonical, _run_data, plan_to_json, run_hash
from dbspec.runtime.execute import RunError, execute
from tests.runtime.runspec import compile_spec, write_spec

LORA = """
[adapter]
kind = "lora"
rank = 2

[checkpoints]
every = 1
keep = 0
"""


def _as_plan_version_3(plan_json: str) -> str:
    """The plan file dbspec wrote before the rename, for the same run."""
    data = json.loads(plan_json)
    data["plan_version"] = 3
    data["train_unet"] = data.pop("train_denoiser")
    data["adapter"]["unet_targets"] = data["adapter"].pop("denoiser_targets")
    del data["model"]["max_tokens"]  # added since (one CLIP window then)
    del data["optimizer"]["text_encoder_at_zero"]  # a text encoder kept at rate 0, added since (held then)
    del data["optimizer"]["denoiser_at_zero"]  # the denoiser kept at rate 0, added since (held then)
    del data["model"]["merge_adapters"]  # LoRA files merged into the base, added since (none then)
    del data["validation"]["text_encoder_mode"]  # kohya's validation text-encoder mode, added since
    del data["adapter"]["init_scale"]  # full: init_weights' diff times it, added since (1 then)
    del data["adapter"]["max_norm"]  # kohya's max-norm regularisation, added since (off then)
    del data["adapter"]["max_norm_form"]  # LyCORIS's max-norm form, added since (kohya's then)
    del data["optimizer"]["loraplus_held"]  # LoRA+ up matrices held at ratio 0, added since (refused then)
    del data["adapter"]["max_norm_alphas"]  # kohya's max-norm at a file's alphas, added since (refused then)
    del data["adapter"]["rank_dropout_form"]  # LyCORIS LoCon's rank dropout, added since
    del data["adapter"]["kohya_names"]  # LyCORIS's T5-XXL names in the export, added since
    del data["adapter"]["output_dropout"]  # LyCORIS LoCon's bypass dropout, added since (off then)
    del data["adapter"]["freeze_down"], data["adapter"]["frozen_down_grad"]  # LoRA-FA, added since (off then)
    del data["model"]["t5_max_length"]  # SD3's T5 length, added since
    del data["model"]["t5_attention_mask"], data["model"]["clip_attention_mask"]  # text masks, added since
    del data["model"]["aesthetic_score"]  # the SDXL refiner's conditioning, added since
    del data["model"]["negative_aesthetic_score"]
    del data["validation"]["refine"]  # refiner validation (img2img), added since
    del data["model"]["weighted_captions"]  # kohya's weighted captions, added since
    del data["adapter"]["text_encoder_norms"]  # LyCORIS train_norm's CLIP LayerNorms, added since
    del data["adapter"]["text_encoder_2_norms"]  # the second CLIP encoder's own norms, added since
    del data["adapter"]["denoiser_norms"]  # LyCORIS train_norm's U-Net norms, added since
    del data["adapter"]["norm_rank_dropout"]  # the norm offsets' own rank dropout, added since
    del data["adapter"]["t5_targets"]  # LoRA on T5-XXL (train.t5), added since
    del data["text_encoder_mode"]  # train.text_encoder_mode (kohya's T5 dropout), added since
    del data["idle_text_encoders"]  # train.text_encoder_idle (kohya's modules at rate 0), added since
    del data["adapter"]["text_encoder_2_targets"]  # the second CLIP encoder's own targets, added since
    del data["model"]["denoiser_file"]  # per-component weight files, added since
    del data["model"]["text_encoder_files"]
    del data["checkpoints"]["select_weights"]  # the weighted best-checkpoint rule, added since
    del data["checkpoints"]["keep_state"]  # state pruned on older checkpoints, added since
    del data["checkpoints"]["export_format"]  # pickle exports, added since
    del data["optimizer"]["clip_mode"]  # element-wise clipping, added since
    for d in data["datasets"]:
        del d["color_aug"]  # kohya colour augmentation, added since
        del d["face_crop"]  # kohya face-crop augmentation, added since
        del d["resolution_height"]  # non-square resolutions, added since
        del d["preserve_output"]  # output preservation, added since
        del d["exif_orientation"]  # EXIF orientation ignored (kohya), added since
        del d["resize"]  # crops without resizing (kohya, buckets off), added since
        del d["mask_channel"]  # mask files' red channel (kohya), added since (luminance then)
    del data["loss"]["flow"]  # flow matching (SD3), added since (none then)
    del data["loss"]["text_encoder_dropout"]  # per-encoder conditioning dropout (SD3), added since
    del data["loss"]["pos_embed_random_crop_rate"]  # SD3's random position-embedding window, added since
    del data["model"]["scaled_pos_embed"]  # kohya's scaled SD3 position tables, added since
    del data["optimizer"]["text_encoder_2_lr"]  # added since (one text-encoder rate then)
    del data["optimizer"]["text_encoder_3_lr"]  # SD3's T5-XXL rate (train.t5), added since
    del data["optimizer"]["nesterov"]  # SGD with Nesterov momentum, added since (off then)
    for key in ("loraplus_denoiser_ratio", "loraplus_text_encoder_ratio"):
        del data["optimizer"][key]  # LoRA+, added since (off then)
    for key in ("dadapt", "adafactor", "ademamix", "schedulefree"):
        del data["optimizer"][key]  # D-Adaptation, Adafactor, AdEMAMix and schedule-free options, added since
    del data["optimizer"]["came"]  # CAME's options, added since
    del data["optimizer"]["prodigy_plus"]  # ProdigyPlusScheduleFree's options, added since
    for key in ("split", "split_order", "split_chunks", "split_train", "split_first_step"):
        del data["optimizer"][
            key
        ]  # several optimizers (kohya's fused_optimizer_groups), added since (one then)
    del data["loss"]["mask_mean"]  # kohya's masked-loss averaging, added since (mask area then)
    del data["adapter"]["down_dropout"]  # kohya's network_dropout, added since (off then)
    del data["adapter"]["dora_form"]  # LyCORIS's weight decomposition, added since (peft's DoRA then)
    del data["adapter"]["dora_axis"]  # DoRA's magnitude per input column (LyCORIS), added since (output then)
    del data["adapter"]["fused"]  # shared down-projections of fused layers, added since (none then)
    del data["adapter"]["text_encoder_blocks"]  # the text encoders' per-module ranks, added since
    del data["adapter"]["init_partial"]  # kohya's strict=False start, added since (exact files then)
    del data["adapter"]["init_alpha"]  # a file's alphas ignored as kohya does, added since (checked then)
    del data["adapter"]["split_fused"]  # split fused layers' shared dropout draws, added since (none then)
    del data["adapter"]["ggpo_sigma"], data["adapter"]["ggpo_beta"]  # LoRA-GGPO, added since (off then)
    del data["adapter"]["rank_dropout_scale"]  # LyCORIS's rank-dropout rescale flag, added since
    for key in ("wandb", "wandb_project", "wandb_run_name", "wandb_entity"):
        del data["logging"][key]  # W&B logging, added since (TensorBoard only then; volatile: trains alike)
    for key in (
        "power",
        "min_lr_ratio",
        "decay_steps",
        "t_max",
        "eta_min",
        "t_mult",
        "torch",
        "momentum_points",
        "cosine_cycles",
        "lr_end",
        "warmup_type",
        "decay_type",
    ):
        del data["schedule"][key]  # kohya's schedule settings, added since
    del data["schedule"]["noise_streams"]  # per-micro-batch noise seeding, added since (per process then)
    del data["schedule"]["group_lr_points"]  # per-group CyclicLR bounds, added since (one bound for all then)
    del data["schedule"]["group_momentum_points"]
    for key in ("weights", "stochastic_rounding"):
        del data["precision"][key]  # bf16 trained weights, added since (fp32 then)
    del data["precision"]["quantize_backend"]  # quantisation backends, added since (quanto then)
    del data["distributed"]  # [distributed], added since (DDP then)
    del data["precision"]["compile"]  # torch.compile, added since (eager then)
    del data["precision"]["fp16_gradients"]  # fp16 weights stepped from still-scaled gradients, added since
    del data["optimizer"]["implementation"]  # torch AdamW's fused kernel, added since (torch's default then)
    del data["optimizer"]["decoupled_weight_decay"]  # RAdam's decoupled decay, added since (off then)
    del data["optimizer"]["min_8bit_size"]  # bitsandbytes' 8-bit threshold, added since (its default then)
    del data["optimizer"]["group_order"]  # kohya's group order (text encoders first), added since
    for key in ("prodigy", "amsgrad", "dampening"):
        del data["optimizer"][key]  # Prodigy's options, AdamW's amsgrad, SGD's dampening, added since
    for key in (
        "huber",
        "noise",
        "debiased_estimation",
        "scale_v_like_epsilon",
        "v_pred_like_loss",
        "prior_reduction",
    ):
        del data["loss"][key]  # kohya's noise and loss options, added since (all off then)
    del data["loss"]["rollout"]  # scheduled sampling, added since (off then)
    for key in (
        "conv_rank",
        "conv_alpha",
        "conv_targets",
        "dora",
        "factor",
        "decompose_both",
        "rank_dropout",
        "module_dropout",
        "params",
    ):
        del data["adapter"][key]  # LoCon, DoRA, LoHa, LoKr and the parameter estimate, added since (off then)
    # blocks (their `lr` and settled `bypass` included, added since) go with the adapter fields added since
    for key in ("init_weights", "init_layers", "blocks", "multiplier"):
        del data["adapter"][key]  # a LoRA started from a saved file, added since (none then)
    del data["adapter"]["tucker"]  # LoHa/LoKr Tucker convolutions, added since (off then)
    del data["adapter"]["dylora_unit"], data["adapter"]["dylora_form"]  # DyLoRA, added since
    del data["adapter"]["lokr_factorization"]  # LyCORIS's LoKr factorisation, added since (peft's then)
    del data["adapter"]["unbalanced_factorization"]
    del data["adapter"]["lokr_unit_scale"]  # scale 1 on full LoKr factors, added since (alpha / rank then)
    del data["adapter"]["lokr_rank_stabilized"]  # LyCORIS's rs_lora on LoKr, added since (off then)
    for key in ("full_matrix", "scalar", "input_targets", "oft_block_size", "oft_constraint", "oft_rescaled"):
        del data["adapter"][key]  # LyCORIS's LoKr full_matrix and use_scalar, added since (off then)
    del data["adapter"]["bypass"], data["adapter"]["bypass_dropout"]  # LyCORIS bypass_mode, added since
    del data["adapter"]["oft_form"], data["adapter"]["oft_blocks"]  # kohya's networks.oft, added since
    for dataset in data["datasets"]:
        del dataset["caption_processing"]  # kohya's caption processing, added since (off then)
        del dataset["folders"]  # kohya folder datasets, added since
        del dataset["group"]  # dataset groups, added since (one group then)
    for bucket in data["buckets"]:
        del bucket["group"]
    del data["groups"]
    del data["evaluation"]  # evaluation metrics, added since (off then)
    # (kohya's split, linspace timesteps and max_images, added since, went with the whole table)
    del data["pivotal"]  # pivotal tuning, added since (off then)
    del data["checkpoints"]["select"]  # the best checkpoint, added since
    del data["validation"]["preview"]  # live validation previews, added since (off then)
    del data["schedule"]["start"]  # runs that start later (kohya's initial_step), added since
    del data["optimizer"]["blocks"]  # per-block denoiser rates (kohya's block_lr), added since
    return json.dumps(data, indent=1) + "\n"


def _old_run_hash(v3_json: str) -> str:
    """run_hash as dbspec computed it for a plan_version 3 plan (the run fields of the plan file, hashed)."""
    return "sha256:" + hashlib.sha256(_canonical(_run_data(json.loads(v3_json))).encode()).hexdigest()


def _make_pre_rename(out: Path, v3_json: str, old_hash: str) -> None:
    """Rewrite a run folder as dbspec wrote it before the rename: run.json, plan.json and every checkpoint."""
    (out / "run.json").write_text(json.dumps({"run_hash": old_hash}) + "\n")
    (out / "plan.json").write_text(v3_json)
    for state_file in (out / "checkpoints").glob("step-*/training_state.pt"):
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        state["run_hash"], state["plan"] = old_hash, v3_json
        torch.save(state, state_file)


def test_a_run_saved_before_the_rename_resumes_to_the_same_weights(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=LORA)
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    assert plan.adapter.denoiser_targets  # the renamed field takes part in the run hash
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted"
    out = Path(plan.checkpoints.dir)
    v3_json = _as_plan_version_3(plan_to_json(plan))
    old_hash = _old_run_hash(v3_json)
    assert old_hash != run_hash(plan)
    _make_pre_rename(out, v3_json, old_hash)

    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 4
    assert first.losses + second.losses == whole.losses
    a = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "run.json").read_text())["run_hash"] == run_hash(
        plan
    )  # the folder is the new run's


def test_a_pre_rename_run_of_another_plan_is_still_refused(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=LORA)
    plan = compile_spec(spec)
    execute(plan, stop_after=2)
    other = compile_spec(spec, ["optimizer.lr=5e-4"])
    v3_json = _as_plan_version_3(plan_to_json(other))
    _make_pre_rename(Path(plan.checkpoints.dir), v3_json, _old_run_hash(v3_json))
    with pytest.raises(RunError) as info:
        execute(plan, resume=True)
    assert "overwrite" in info.value.message
