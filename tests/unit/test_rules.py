"""Every cross-field rule (DBS2xx) fires on a minimal spec that breaks it and is silent on the
nearest valid one."""

from __future__ import annotations

import sys

import attrs
import pytest
import tomli

from dbspec.compiler import rules
from dbspec.compiler.rules import (
    PHASE_OF,
    check_rules,
    rules_of,
    run_environment_rules,
    run_plan_rules,
    run_spec_rules,
)
from dbspec.plan.model import TargetEnv
from dbspec.spec.paths import has_path
from dbspec.spec.structure import structure_spec

HEAD = 'spec_version = 2\n[model]\nbase = "runwayml/stable-diffusion-v1-5"\n'
DOG = '[[datasets]]\nname = "dog"\npath = "data/dog"\nprompt = "a photo of ohwx dog"\n'
DOGS = '[[datasets]]\nname = "dogs"\nrole = "class"\npath = "data/dogs"\nprompt = "a photo of a dog"\n'
STEPS = "[schedule]\nsteps = 100\n"
LORA = '[adapter]\nkind = "lora"\n'
TE = "[train]\ntext_encoder = true\n"
PROMPTS = '[validation]\nprompts = ["a photo of ohwx dog on a beach"]\n'
GROUP = '[[groups]]\nname = "closeups"\nbatch_size = 2\n'


def given_in(data: dict):
    """`given(path)` for rules: did the TOML data write this key?"""

    def given(path: tuple) -> bool:
        return has_path(data, path)

    return given


def hits_of(rule, body: str) -> list[tuple[str, str, tuple]]:
    data = tomli.loads(HEAD + body)
    spec, problems = structure_spec(data)
    assert problems == [], problems
    return [(h.code, h.severity, h.path) for h in run_one(rule, spec, given_in(data))]


def run_one(rule, spec, given):
    """A "spec" rule reads the spec; a "plan" rule also the step count (here the spec's `steps`)."""
    if PHASE_OF[rule.__name__] == "plan":
        return list(rule(spec, given, spec.schedule.steps))
    return list(rule(spec, given))


# rule, a spec body that breaks it, the hits expected, the nearest body that does not.
# fp16 trained weights (kohya's full_fp16) as they check: stepped directly, by an optimizer with fp32 state
FP16_WEIGHTS = (
    '[optimizer]\nkind = "adafactor"\n[precision]\nweights = "fp16"\nweights_rounding = "nearest"\n'
)
CASES = [
    (
        rules.missing_captions_inert,  # DOG's prompt is the caption of every image without a caption file
        DOG + 'captions = "textfile"\nmissing_captions = "empty"\n' + STEPS,
        [("DBS614", "warning", ("datasets", 0, "missing_captions"))],
        DOG + 'captions = "textfile"\n' + STEPS,
    ),
    (
        rules.prior_without_class_data,
        DOG + STEPS + "[loss]\nprior_weight = 0.5\n",
        [("DBS201", "warning", ("loss", "prior_weight"))],
        DOG + DOGS + STEPS + "[loss]\nprior_weight = 0.5\n",
    ),
    (
        rules.prior_without_class_data,
        DOG + STEPS + '[loss]\nprior = "base_model"\n',
        [("DBS201", "warning", ("loss", "prior"))],
        DOG + STEPS,
    ),
    (
        rules.text_encoder_stop_beyond_run,
        TE + "text_encoder_stop_step = 100\n" + DOG + STEPS,
        [("DBS202", "error", ("train", "text_encoder_stop_step"))],
        TE + "text_encoder_stop_step = 99\n" + DOG + STEPS,
    ),
    (
        rules.text_encoder_options_inert,
        "[train]\ntext_encoder_stop_step = 50\n" + DOG + STEPS,
        [("DBS206", "warning", ("train", "text_encoder_stop_step"))],
        TE + "text_encoder_stop_step = 50\n" + DOG + STEPS,
    ),
    (
        rules.text_encoder_options_inert,
        DOG + "[optimizer]\ntext_encoder_lr = 1e-6\n" + STEPS,
        [("DBS206", "warning", ("optimizer", "text_encoder_lr"))],
        TE + DOG + "[optimizer]\ntext_encoder_lr = 1e-6\n" + STEPS,
    ),
    (
        rules.interval_beyond_run,
        DOG + STEPS + "[checkpoints]\nevery = 101\n",
        [("DBS204", "warning", ("checkpoints", "every"))],
        DOG + STEPS + "[checkpoints]\nevery = 100\n",
    ),
    (
        rules.interval_beyond_run,
        DOG + STEPS + '[validation]\nevery = 500\nprompts = ["x"]\n',
        [("DBS204", "warning", ("validation", "every"))],
        DOG + STEPS + '[validation]\nevery = 50\nprompts = ["x"]\n',
    ),
    (
        rules.validation_without_prompts,
        DOG + STEPS + "[validation]\nevery = 10\n",
        [("DBS205", "error", ("validation", "every"))],
        DOG + STEPS + '[validation]\nevery = 10\nprompts = ["x"]\n',
    ),
    (rules.steps_or_epochs, DOG, [("DBS207", "error", ("schedule",))], DOG + STEPS),
    (
        rules.steps_or_epochs,
        DOG + "[schedule]\nsteps = 100\nepochs = 2\n",
        [("DBS207", "error", ("schedule", "epochs"))],
        DOG + "[schedule]\nepochs = 2\n",
    ),
    (
        rules.prompt_required,
        '[[datasets]]\nname = "dog"\npath = "data/dog"\n' + STEPS,
        [("DBS208", "error", ("datasets", 0))],
        '[[datasets]]\nname = "dog"\npath = "data/dog"\ncaptions = "filename"\n' + STEPS,
    ),
    (
        rules.prompt_required,
        DOG + '[[datasets]]\nname = "dogs"\nrole = "class"\npath = "d"\ncaptions = "textfile"\n'
        "generate = 10\n" + STEPS,
        [("DBS208", "error", ("datasets", 1, "generate"))],
        DOG + '[[datasets]]\nname = "dogs"\nrole = "class"\npath = "d"\ncaptions = "textfile"\n' + STEPS,
    ),
    (
        rules.unique_dataset_names,
        DOG + DOG.replace("data/dog", "data/dog2") + STEPS,
        [("DBS209", "error", ("datasets", 1, "name"))],
        DOG + DOG.replace('"dog"', '"dog2"') + STEPS,
    ),
    (rules.needs_instance_dataset, DOGS + STEPS, [("DBS210", "error", ("datasets",))], DOG + DOGS + STEPS),
    (
        rules.warmup_with_constant,
        DOG + STEPS + "warmup_steps = 10\n",
        [("DBS211", "warning", ("schedule", "warmup_steps"))],
        DOG + STEPS + 'warmup_steps = 10\nlr_schedule = "constant_with_warmup"\n',
    ),
    (
        rules.warmup_with_simpletuner_cosine,
        DOG + STEPS + 'warmup_steps = 10\nlr_schedule = "simpletuner_cosine"\nt_max = 10\n',
        [("DBS290", "warning", ("schedule", "warmup_steps"))],
        DOG + STEPS + 'lr_schedule = "simpletuner_cosine"\nt_max = 10\n',
    ),
    (
        rules.quantize_needs_frozen_base,
        DOG + STEPS + '[precision]\nquantize_denoiser = "int8"\n',
        [("DBS212", "error", ("precision", "quantize_denoiser"))],
        LORA + DOG + STEPS + '[precision]\nquantize_denoiser = "int8"\n',
    ),
    (
        rules.quantize_needs_frozen_base,
        TE + DOG + STEPS + '[precision]\nquantize_text_encoder = "int4"\n',
        [("DBS212", "error", ("precision", "quantize_text_encoder"))],
        LORA + TE + DOG + STEPS + '[precision]\nquantize_text_encoder = "int4"\n',
    ),
    (
        rules.quantize_format_of_backend,
        LORA + DOG + STEPS + '[precision]\nquantize_denoiser = "nf4"\n',
        [("DBS247", "error", ("precision", "quantize_denoiser"))],
        LORA + DOG + STEPS + '[precision]\nquantize_denoiser = "nf4"\nquantize_backend = "bitsandbytes"\n',
    ),
    (
        rules.quantize_format_of_backend,
        LORA
        + TE
        + DOG
        + STEPS
        + '[precision]\nquantize_text_encoder = "int4"\nquantize_backend = "torchao"\n',
        [("DBS247", "error", ("precision", "quantize_text_encoder"))],
        LORA
        + TE
        + DOG
        + STEPS
        + '[precision]\nquantize_text_encoder = "int8"\nquantize_backend = "torchao"\n',
    ),
    (
        rules.quanto_deprecated,
        LORA + DOG + STEPS + '[precision]\nquantize_denoiser = "int8"\n',
        [("DBS248", "warning", ("precision", "quantize_denoiser"))],
        LORA + DOG + STEPS + '[precision]\nquantize_denoiser = "int8"\nquantize_backend = "torchao"\n',
    ),
    (
        rules.quanto_deprecated,
        LORA + DOG + STEPS + '[precision]\nquantize_text_encoder = "int4"\n',
        [("DBS248", "warning", ("precision", "quantize_text_encoder"))],
        LORA + DOG + STEPS + '[precision]\nquantize_text_encoder = "int4"\nquantize_backend = "quanto"\n',
    ),
    (
        rules.text_cache_while_training_te,
        TE + DOG + STEPS + "[cache]\ntext_embeddings = true\n",
        [("DBS213", "warning", ("cache", "text_embeddings"))],
        TE + DOG + STEPS,
    ),
    (
        rules.generate_only_for_class,
        DOG + "generate = 10\n" + STEPS,
        [("DBS214", "error", ("datasets", 0, "generate"))],
        DOG + DOGS + "generate = 10\n" + STEPS,
    ),
    (
        rules.lora_learning_rate,
        LORA + DOG + STEPS,
        [("DBS215", "warning", ("adapter", "kind"))],
        LORA + DOG + STEPS + "[optimizer]\nlr = 1e-4\n",
    ),
    (
        rules.lora_learning_rate,
        LORA + DOG + STEPS + "[optimizer]\nlr = 1e-6\n",
        [("DBS215", "warning", ("optimizer", "lr"))],
        DOG + STEPS + "[optimizer]\nlr = 1e-6\n",
    ),
    (
        rules.inert_loss_options,
        DOG + STEPS + "[loss]\nhuber_delta = 0.2\n",
        [("DBS216", "warning", ("loss", "huber_delta"))],
        DOG + STEPS + '[loss]\nkind = "huber"\nhuber_delta = 0.2\n',
    ),
    (
        rules.inert_loss_options,
        DOG + STEPS + "[optimizer]\nmomentum = 0.9\n",
        [("DBS216", "warning", ("optimizer", "momentum"))],
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nmomentum = 0.9\n',
    ),
    (
        rules.inert_loss_options,
        DOG + STEPS + '[precision]\nbf16_fallback = "fp16"\n',
        [("DBS216", "warning", ("precision", "bf16_fallback"))],
        DOG + STEPS + '[precision]\nmixed = "bf16"\nbf16_fallback = "fp16"\n',
    ),
    (
        rules.something_trains,
        "[train]\ndenoiser = false\n" + DOG + STEPS,
        [("DBS217", "error", ("train",))],
        "[train]\ndenoiser = false\ntext_encoder = true\n" + DOG + STEPS,
    ),
    (
        rules.bucket_bounds,
        DOG + "[buckets]\nmin_size = 1024\nmax_size = 512\n" + STEPS,
        [("DBS218", "error", ("buckets", "min_size"))],
        DOG + "[buckets]\nmin_size = 512\nmax_size = 512\n" + STEPS,
    ),
    (
        rules.bucket_bounds,
        DOG + "[buckets]\nstep = 12\n" + STEPS,
        [("DBS218", "error", ("buckets", "step"))],
        DOG + "[buckets]\nstep = 16\n" + STEPS,
    ),
    (
        rules.bucket_bounds,
        DOG + "[buckets]\nno_upscale = true\nmax_size = 1024\n" + STEPS,
        [("DBS218", "warning", ("buckets", "no_upscale"))],
        DOG + "[buckets]\nno_upscale = true\n" + STEPS,
    ),
    (
        rules.bucket_bounds,
        DOG + "resolution = 700\n" + STEPS,
        [("DBS218", "error", ("datasets", 0, "resolution"))],
        DOG + "resolution = 704\n" + STEPS,
    ),
    (
        rules.groups_defined,
        DOG + 'group = "closeup"\n' + GROUP + STEPS,
        [("DBS250", "error", ("datasets", 0, "group"))],
        DOG + 'group = "closeups"\n' + GROUP + STEPS,
    ),
    (
        rules.unique_group_names,
        DOG + 'group = "closeups"\n' + GROUP + GROUP + STEPS,
        [("DBS251", "error", ("groups", 1, "name"))],
        DOG
        + 'group = "closeups"\n'
        + DOGS
        + 'group = "wide"\n'
        + GROUP
        + GROUP.replace('"closeups"', '"wide"')
        + STEPS,
    ),
    (
        rules.unused_groups,
        DOG + GROUP + STEPS,
        [("DBS252", "warning", ("groups", 0, "name"))],
        DOG + 'group = "closeups"\n' + GROUP + STEPS,
    ),
    (
        rules.group_bucket_bounds,
        DOG
        + 'group = "closeups"\n'
        + GROUP
        + "bucket_step = 12\nbucket_min_size = 1024\n"
        + "[buckets]\nmax_size = 512\n"
        + STEPS,
        [
            ("DBS253", "error", ("groups", 0, "bucket_min_size")),
            ("DBS253", "error", ("groups", 0, "bucket_step")),
        ],
        DOG
        + 'group = "closeups"\n'
        + GROUP
        + "bucket_step = 16\nbucket_min_size = 512\n"
        + "[buckets]\nmax_size = 512\n"
        + STEPS,
    ),
    (
        rules.group_bucket_bounds,
        DOG
        + 'group = "closeups"\n'
        + GROUP
        + "bucket_max_size = 1024\n"
        + "[buckets]\nno_upscale = true\n"
        + STEPS,
        [("DBS253", "warning", ("groups", 0, "bucket_no_upscale"))],
        DOG
        + 'group = "closeups"\n'
        + GROUP
        + "bucket_no_upscale = false\nbucket_max_size = 1024\n"
        + "[buckets]\nno_upscale = true\n"
        + STEPS,
    ),
    (
        rules.two_betas,
        DOG + STEPS + "[optimizer]\nbetas = [0.9]\n",
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + "[optimizer]\nbetas = [0.9, 0.99]\n",
    ),
    (
        rules.two_betas,
        DOG + STEPS + "[optimizer]\nbetas = [0.9, 1.0]\n",
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + "[optimizer]\nbetas = [0.0, 0.999999]\n",
    ),
    (
        rules.one_mask_source,
        DOG + 'masks = "data/masks"\nmask_from_alpha = true\n' + STEPS,
        [("DBS221", "error", ("datasets", 0, "mask_from_alpha"))],
        DOG + 'masks = "data/masks"\n' + STEPS,
    ),
    (
        rules.mask_channel_without_mask_files,
        DOG + 'mask_from_alpha = true\nmask_channel = "red"\n' + STEPS,
        [("DBS254", "warning", ("datasets", 0, "mask_channel"))],
        DOG + 'masks = "data/masks"\nmask_channel = "red"\n' + STEPS,
    ),
    (
        rules.mask_mean_without_masks,
        DOG + STEPS + '[loss]\nmask_mean = "image"\n',
        [("DBS243", "warning", ("loss", "mask_mean"))],
        DOG + "mask_from_alpha = true\n" + STEPS + '[loss]\nmask_mean = "image"\n',
    ),
    (
        rules.warmup_covers_run,
        DOG + STEPS + 'lr_schedule = "cosine"\nwarmup_steps = 100\n',
        [("DBS238", "warning", ("schedule", "warmup_steps"))],
        DOG + STEPS + 'lr_schedule = "cosine"\nwarmup_steps = 99\n',
    ),
    (
        rules.one_holdout,
        DOG + STEPS + "[evaluation]\nholdout = 1\nsplit = 0.2\n",
        [("DBS244", "error", ("evaluation", "split"))],
        DOG + STEPS + "[evaluation]\nsplit = 0.2\n",
    ),
    (
        rules.face_crop_range,
        DOG + "face_crop = [0.0, 2.0]\n" + STEPS + '[buckets]\nmode = "square"\n',
        [("DBS233", "error", ("datasets", 0, "face_crop"))],
        DOG + "face_crop = [2.0, 2.0]\n" + STEPS + '[buckets]\nmode = "square"\n',
    ),
    (  # kohya's dataset config runs a reversed range: the one scale of [2, 2], its shift kept
        rules.face_crop_range,
        DOG + "face_crop = [4.0, 2.0]\n" + STEPS + '[buckets]\nmode = "square"\n',
        [("DBS616", "warning", ("datasets", 0, "face_crop"))],
        DOG + "face_crop = [2.0, 4.0]\n" + STEPS + '[buckets]\nmode = "square"\n',
    ),
    (
        rules.face_crop_range,
        DOG
        + 'face_crop = [2.0, 4.0]\ngroup = "closeups"\n'
        + GROUP
        + 'bucket_mode = "aspect"\n'
        + STEPS
        + '[buckets]\nmode = "square"\n',
        [("DBS234", "error", ("datasets", 0, "face_crop"))],
        DOG + 'face_crop = [2.0, 4.0]\ngroup = "closeups"\n' + GROUP + STEPS + '[buckets]\nmode = "square"\n',
    ),
    (
        rules.resize_none_square,
        DOG + 'resize = "none"\n' + STEPS,
        [("DBS245", "error", ("datasets", 0, "resize"))],
        DOG + 'resize = "none"\n' + STEPS + '[buckets]\nmode = "square"\n',
    ),
    (
        rules.resize_none_square,
        DOG
        + 'resize = "none"\ngroup = "closeups"\n'
        + GROUP
        + 'bucket_mode = "aspect"\n'
        + STEPS
        + '[buckets]\nmode = "square"\n',
        [("DBS245", "error", ("datasets", 0, "resize"))],
        DOG + 'resize = "none"\ngroup = "closeups"\n' + GROUP + STEPS + '[buckets]\nmode = "square"\n',
    ),
    (
        rules.exports_match_adapter,
        LORA + DOG + STEPS + '[checkpoints]\nexports = ["single_file"]\n',
        [("DBS222", "error", ("checkpoints", "exports"))],
        DOG + STEPS + '[checkpoints]\nexports = ["single_file"]\n',
    ),
    (
        rules.export_format_has_exports,
        DOG + STEPS + '[checkpoints]\nexport_format = "ckpt"\n',
        [("DBS288", "warning", ("checkpoints", "export_format"))],
        DOG + STEPS + '[checkpoints]\nexport_format = "ckpt"\nexports = ["single_file"]\n',
    ),
    (
        rules.exports_match_adapter,
        DOG + STEPS + '[checkpoints]\nexports = ["kohya_lora"]\n',
        [("DBS222", "error", ("checkpoints", "exports"))],
        LORA + DOG + STEPS + '[checkpoints]\nexports = ["kohya_lora"]\n',
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "loha"\nconv_rank = 4\nconv_alpha = 0.0\n' + DOG + STEPS,
        [("DBS260", "error", ("adapter", "conv_alpha"))],
        '[adapter]\nkind = "loha"\nconv_rank = 4\nconv_alpha = 1.0\n' + DOG + STEPS,
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "lora"\nconv_rank = 4\nconv_targets = []\n' + DOG + STEPS,
        [("DBS260", "error", ("adapter", "conv_targets"))],
        '[adapter]\nkind = "lora"\nconv_rank = 4\n' + DOG + STEPS,
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "lora"\nconv_rank = 4\nconv_targets = ["conv1", "to_q"]\n' + DOG + STEPS,
        [("DBS260", "error", ("adapter", "conv_targets"))],
        '[adapter]\nkind = "lora"\nconv_rank = 4\nconv_targets = ["conv1"]\n' + DOG + STEPS,
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "lora"\nconv_rank = 4\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
        [("DBS260", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "loha"\nconv_rank = 4\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
    ),
    (  # the cast backend (kohya's fp8_base) reads float weights: LoRA on its convolutions is fine
        rules.adapter_options_fit,
        '[adapter]\nkind = "lora"\nconv_rank = 4\n[precision]\nquantize_denoiser = "fp8"\n' + DOG + STEPS,
        [("DBS260", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "lora"\nconv_rank = 4\n[precision]\nquantize_denoiser = "fp8"\n'
        'quantize_backend = "cast"\n' + DOG + STEPS,
    ),
    (  # LoCon's Tucker layers with DoRA: LyCORIS's weight decomposition, with no input dropout
        rules.lycoris_dora_options,
        '[adapter]\nkind = "lora"\nconv_rank = 4\ntucker = true\ndora = true\ndropout = 0.1\n' + DOG + STEPS,
        [("DBS515", "error", ("adapter", "dropout"))],
        '[adapter]\nkind = "lora"\nconv_rank = 4\ntucker = true\ndora = true\n' + DOG + STEPS,
    ),
    (  # peft's DoRA (per output row, no Tucker) keeps its input dropout
        rules.lycoris_dora_options,
        '[adapter]\nkind = "lora"\ndora = true\ndora_axis = "input"\ndropout = 0.1\n' + DOG + STEPS,
        [("DBS515", "error", ("adapter", "dropout"))],
        '[adapter]\nkind = "lora"\ndora = true\ndropout = 0.1\n' + DOG + STEPS,
    ),
    (
        rules.lycoris_dora_options,
        '[adapter]\nkind = "loha"\ndora = true\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
        [("DBS516", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "loha"\ndora = true\n[precision]\nquantize_denoiser = "fp8"\n'
        'quantize_backend = "cast"\n' + DOG + STEPS,
    ),
    (  # kohya's lycoris.kohya LoCon DoRA: LyCORIS's form, no input dropout
        rules.lycoris_dora_options,
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "lycoris"\ndropout = 0.1\n' + DOG + STEPS,
        [("DBS515", "error", ("adapter", "dropout"))],
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "lycoris"\n' + DOG + STEPS,
    ),
    (
        rules.peft_dora_form_it_cannot_train,
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "peft"\ndora_axis = "input"\n' + DOG + STEPS,
        [("DBS518", "error", ("adapter", "dora_form"))],
        '[adapter]\nkind = "lora"\ndora = true\ndora_axis = "input"\n' + DOG + STEPS,
    ),
    (
        rules.peft_dora_form_it_cannot_train,
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "peft"\nconv_rank = 4\ntucker = true\n'
        + DOG
        + STEPS,
        [("DBS518", "error", ("adapter", "dora_form"))],
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "lycoris"\nconv_rank = 4\ntucker = true\n'
        + DOG
        + STEPS,
    ),
    (
        rules.dora_axis_without_dora,
        '[adapter]\nkind = "lora"\ndora_form = "lycoris"\n' + DOG + STEPS,
        [("DBS517", "warning", ("adapter", "dora_form"))],
        '[adapter]\nkind = "lora"\ndora = true\ndora_form = "lycoris"\n' + DOG + STEPS,
    ),
    (  # a block's own weight decomposition takes the adapter's form (a LyCORIS map entry's weight_decompose)
        rules.dora_axis_without_dora,
        '[adapter]\nkind = "lora"\ndora_form = "lycoris"\n'
        '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "off"\n' + DOG + STEPS,
        [("DBS517", "warning", ("adapter", "dora_form"))],
        '[adapter]\nkind = "lora"\ndora_form = "lycoris"\n'
        '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "on"\n' + DOG + STEPS,
    ),
    (
        rules.dora_axis_without_dora,
        '[adapter]\nkind = "lokr"\ndora_axis = "input"\n' + DOG + STEPS,
        [("DBS517", "warning", ("adapter", "dora_axis"))],
        '[adapter]\nkind = "lokr"\ndora = true\ndora_axis = "input"\n' + DOG + STEPS,
    ),
    (  # LyCORIS's rescale of the kept rows needs rank dropout
        rules.rank_dropout_scale_without_rank_dropout,
        '[adapter]\nkind = "loha"\nrank_dropout_scale = true\n' + DOG + STEPS,
        [("DBS525", "warning", ("adapter", "rank_dropout_scale"))],
        '[adapter]\nkind = "loha"\nrank_dropout = 0.1\nrank_dropout_scale = true\n' + DOG + STEPS,
    ),
    (  # every row dropped: the rescale would divide by zero
        rules.rank_dropout_scale_divides_by_zero,
        '[adapter]\nkind = "lokr"\nrank_dropout = 1.0\nrank_dropout_scale = true\n' + DOG + STEPS,
        [("DBS526", "error", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "lokr"\nrank_dropout = 1.0\n' + DOG + STEPS,
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "lokr"\nfactor = 0\n' + DOG + STEPS,
        [("DBS260", "error", ("adapter", "factor"))],
        '[adapter]\nkind = "lokr"\nfactor = 8\n' + DOG + STEPS,
    ),
    (  # LoRA's Tucker form acts on the convolution adapters only
        rules.adapter_options_fit,
        '[adapter]\nkind = "lora"\ntucker = true\ndora = true\n' + DOG + STEPS,
        [("DBS261", "warning", ("adapter", "tucker"))],
        '[adapter]\nkind = "lora"\ndora = true\n' + DOG + STEPS,
    ),
    (
        rules.adapter_options_fit,
        '[adapter]\nkind = "lokr"\nconv_alpha = 1.0\n' + DOG + STEPS,
        [("DBS261", "warning", ("adapter", "conv_alpha"))],
        '[adapter]\nkind = "lokr"\nconv_rank = 2\nconv_alpha = 1.0\n' + DOG + STEPS,
    ),
    (  # LyCORIS use_scalar: peft's DoRA layer has no scalar; LyCORIS's weight decomposition takes it
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "lora"\nscalar = true\ndora = true\n' + DOG + STEPS,
        [("DBS520", "error", ("adapter", "dora"))],
        '[adapter]\nkind = "lora"\nscalar = true\ndora = true\ndora_form = "lycoris"\n' + DOG + STEPS,
    ),
    (  # LoHa / LoKr DoRA is LyCORIS's: the scalar joins it
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "lora"\nscalar = true\ndora = true\n' + DOG + STEPS,
        [("DBS520", "error", ("adapter", "dora"))],
        '[adapter]\nkind = "loha"\nscalar = true\ndora = true\n' + DOG + STEPS,
    ),
    (  # GLoRA's rank dropout and dropout act only in its bypass forward
        rules.glora_dropouts_need_bypass,
        '[adapter]\nkind = "glora"\nrank_dropout = 0.1\n' + DOG + STEPS,
        [("DBS556", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "glora"\nrank_dropout = 0.1\ndropout = 0.1\nbypass = true\n' + DOG + STEPS,
    ),
    (  # T-LoRA's dropout acts only in its bypass forward
        rules.tlora_dropout_needs_bypass,
        '[adapter]\nkind = "tlora"\ndropout = 0.1\n' + DOG + STEPS,
        [("DBS603", "warning", ("adapter", "dropout"))],
        '[adapter]\nkind = "tlora"\ndropout = 0.1\nbypass = true\n' + DOG + STEPS,
    ),
    (  # ... and in a T-LoRA block's own bypass forward (each layer drops in its own mode; DBS605 reserved)
        rules.tlora_dropout_needs_bypass,
        '[adapter]\nkind = "tlora"\ndropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "to_q"\nrank = 4\nalpha = 4.0\nbypass = "off"\n'
        + DOG
        + STEPS,
        [("DBS603", "warning", ("adapter", "dropout"))],
        '[adapter]\nkind = "tlora"\ndropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "to_q"\nrank = 4\nalpha = 4.0\nbypass = "on"\n'
        + DOG
        + STEPS,
    ),
    (  # a T-LoRA adapter's block at alpha 0: only a Diag-OFT / BOFT block's (their constraint)
        rules.tlora_block_alpha,
        '[adapter]\nkind = "tlora"\n[[adapter.blocks]]\npattern = "ff"\nkind = "lokr"\n'
        + "rank = 4\nalpha = 0.0\n"
        + DOG
        + STEPS,
        [("DBS611", "error", ("adapter", "blocks", 0, "alpha"))],
        '[adapter]\nkind = "tlora"\n[[adapter.blocks]]\npattern = "ff"\nkind = "boft"\n'
        + "rank = 4\nalpha = 0.0\n"
        + DOG
        + STEPS,
    ),
    (  # Diag-OFT's rank dropout acts only in its default forward (the norm offsets draw it in bypass too)
        rules.oft_rank_dropout_not_in_bypass,
        '[adapter]\nkind = "diag-oft"\nrank_dropout = 0.1\nbypass = true\n' + DOG + STEPS,
        [("DBS589", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "diag-oft"\nrank_dropout = 0.1\n' + DOG + STEPS,
    ),
    (  # IA3Module never reads rank_dropout: the norm offsets alone draw it
        rules.ia3_rank_dropout_needs_norms,
        '[adapter]\nkind = "ia3"\nrank_dropout = 0.1\n' + DOG + STEPS,
        [("DBS590", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "ia3"\nrank_dropout = 0.1\ndenoiser_norms = ["norm1"]\n' + DOG + STEPS,
    ),
    (  # DyLoraModule never reads rank_dropout: the blocks of kinds whose modules read it alone draw it
        rules.rank_dropout_needs_blocks,
        '[adapter]\nkind = "dylora"\nrank = 4\nrank_dropout = 0.1\n' + DOG + STEPS,
        [("DBS621", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "dylora"\nrank = 4\nrank_dropout = 0.1\n'
        + DOG
        + STEPS
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'full'\nrank = 4\nalpha = 1.0\n",
    ),
    (  # TLoraModule never reads rank_dropout: the blocks of kinds whose modules read it alone draw it
        rules.rank_dropout_needs_blocks,
        '[adapter]\nkind = "tlora"\nrank = 4\nrank_dropout = 0.1\n' + DOG + STEPS,
        [("DBS624", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "tlora"\nrank = 4\nrank_dropout = 0.1\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
        + DOG
        + STEPS,
    ),
    (  # a LoKr adapter's bypass rank-dropout form: blocks to draw it (DBS630), with or without its bypass
        # dropout (DBS629 no longer raised)
        rules.lokr_bypass_rank_dropout,
        '[adapter]\nkind = "lokr"\nrank = 4\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
        + DOG
        + STEPS,
        [("DBS630", "warning", ("adapter", "rank_dropout"))],
        '[adapter]\nkind = "lokr"\nrank = 4\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
        + DOG
        + STEPS,
    ),
    (  # a LoHa adapter's bypass rank-dropout form: its lora blocks' LyCORIS forward, else nothing (DBS631)
        rules.loha_bypass_rank_dropout_form,
        '[adapter]\nkind = "loha"\nrank = 4\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
        + DOG
        + STEPS,
        [("DBS631", "warning", ("adapter", "rank_dropout_form"))],
        '[adapter]\nkind = "loha"\nrank = 4\nrank_dropout = 0.1\nrank_dropout_form = "lycoris_bypass"\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
        + DOG
        + STEPS,
    ),
    (  # an IA^3 / DyLoRA adapter's dropout: its lora / loha / lokr blocks' in bypass, else nothing (DBS632)
        rules.host_dropout_unread,
        '[adapter]\nkind = "ia3"\ndropout = 0.1\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
        + DOG
        + STEPS,
        [("DBS632", "warning", ("adapter", "dropout"))],
        '[adapter]\nkind = "ia3"\ndropout = 0.1\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"
        + DOG
        + STEPS,
    ),
    (  # a T-LoRA block's random start: on its own T-LoRA layers
        rules.tlora_block_start,
        '[adapter]\nkind = "tlora"\n[[adapter.blocks]]\npattern = "ff"\nkind = "lora"\n'
        + "rank = 4\nalpha = 1.0\ndata_init = false\n"
        + DOG
        + STEPS,
        [("DBS622", "error", ("adapter", "blocks", 0, "data_init"))],
        '[adapter]\nkind = "tlora"\n[[adapter.blocks]]\npattern = "ff"\n'
        + "rank = 4\nalpha = 1.0\ndata_init = false\n"
        + DOG
        + STEPS,
    ),
    (  # a T-LoRA block's own sig_type: on T-LoRA layers, beside a lora adapter's too (not on a dylora
        # adapter's block of kind lora; was a lokr adapter's tlora block, then a dylora one's, whose T-LoRA
        # layers start their own way since)
        rules.tlora_block_start,
        '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\n[[adapter.text_encoder_blocks]]\npattern = "q"\n'
        + 'kind = "lora"\nrank = 4\nalpha = 1.0\nsig_type = "last"\n'
        + DOG
        + STEPS,
        [("DBS622", "error", ("adapter", "text_encoder_blocks", 0, "sig_type"))],
        '[adapter]\nkind = "lora"\n[[adapter.blocks]]\npattern = "ff"\nkind = "tlora"\n'
        + 'rank = 4\nalpha = 1.0\nsig_type = "last"\n'
        + DOG
        + STEPS,
    ),
    (  # an IA^3 block's input side (LyCORIS's train_on_input): on a block of kind ia3 beside lora layers
        rules.ia3_block_on_input,
        '[adapter]\nkind = "lora"\nrank = 4\n[[adapter.blocks]]\npattern = "ff"\nkind = "lokr"\n'
        + "rank = 4\nalpha = 1.0\non_input = true\n"
        + DOG
        + STEPS,
        [("DBS618", "error", ("adapter", "blocks", 0, "on_input"))],
        '[adapter]\nkind = "lora"\nrank = 4\n[[adapter.blocks]]\npattern = "ff"\nkind = "ia3"\n'
        + "rank = 1\nalpha = 1.0\non_input = true\n"
        + DOG
        + STEPS,
    ),
    (  # the norm offsets' own rank dropout: nothing draws it without norm offsets
        rules.norm_rank_dropout_needs_norms,
        '[adapter]\nkind = "boft"\nnorm_rank_dropout = 0.1\n' + DOG + STEPS,
        [("DBS623", "warning", ("adapter", "norm_rank_dropout"))],
        '[adapter]\nkind = "boft"\nnorm_rank_dropout = 0.1\ndenoiser_norms = ["norm1"]\n' + DOG + STEPS,
    ),
    (  # LoKr full_matrix: nothing is split low-rank
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "lokr"\nfull_matrix = true\ndecompose_both = true\n' + DOG + STEPS,
        [("DBS521", "warning", ("adapter", "decompose_both"))],
        '[adapter]\nkind = "lokr"\nfull_matrix = true\nscalar = true\n' + DOG + STEPS,
    ),
    (  # LyCORIS's full algo copies float weights: a quantised layer has none
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "full"\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
        [("DBS522", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "full"\nconv_targets = ["conv1"]\n' + DOG + STEPS,
    ),
    (  # LyCORIS's GLoRA multiplies the float weight (W a1 a2): a quantised layer has none
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "glora"\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
        [("DBS522", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "glora"\nconv_rank = 2\n' + DOG + STEPS,
    ),
    (  # LyCORIS's T-LoRA starts from the float weight's SVD: a quantised layer has none
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "tlora"\n[precision]\nquantize_denoiser = "int8"\n' + DOG + STEPS,
        [("DBS522", "error", ("precision", "quantize_denoiser"))],
        '[adapter]\nkind = "tlora"\nrank = 4\n' + DOG + STEPS,
    ),
    (  # an IA^3 input-side name scales nothing unless it is a target
        rules.lycoris_switches_fit,
        '[adapter]\nkind = "ia3"\ndenoiser_targets = ["to_k"]\ninput_targets = ["ff.net.2"]\n' + DOG + STEPS,
        [("DBS523", "warning", ("adapter", "input_targets"))],
        '[adapter]\nkind = "ia3"\ndenoiser_targets = ["to_k", "ff.net.2"]\ninput_targets = ["ff.net.2"]\n'
        + DOG
        + STEPS,
    ),
    (
        rules.zero_snr_needs_v,
        'prediction = "epsilon"\n' + DOG + STEPS + "[loss]\nzero_terminal_snr = true\n",
        [("DBS223", "warning", ("loss", "zero_terminal_snr"))],
        'prediction = "v_prediction"\n' + DOG + STEPS + "[loss]\nzero_terminal_snr = true\n",
    ),
    (
        rules.at_zero_inert,  # no text encoder at rate 0 to keep
        DOG + STEPS + TE + '[optimizer]\ntext_encoder_at_zero = "keep"\n',
        [("DBS608", "warning", ("optimizer", "text_encoder_at_zero"))],
        DOG + STEPS + TE + '[optimizer]\ntext_encoder_lr = 0\ntext_encoder_at_zero = "keep"\n',
    ),
    (
        rules.group_order_with_split,  # kohya's group order, but the split cuts in dbspec's own order
        DOG + STEPS + '[optimizer]\ngroup_order = "text_encoders_first"\nsplit = 2\n',
        [("DBS602", "error", ("optimizer", "group_order"))],
        DOG + STEPS + '[optimizer]\ngroup_order = "text_encoders_first"\n',
    ),
    (
        rules.held_at_rate_zero,  # lr 0 with the text encoder at rate 0 too: nothing trains
        DOG + STEPS + TE + "[optimizer]\nlr = 0\n",
        [("DBS200", "error", ("optimizer", "lr"))],
        DOG + STEPS + TE + "[optimizer]\nlr = 1e-6\ntext_encoder_lr = 1e-6\n",
    ),
    (
        rules.prodigy_learning_rate,
        DOG + STEPS + '[optimizer]\nkind = "prodigy"\nlr = 1e-4\n',
        [("DBS224", "warning", ("optimizer", "lr"))],
        DOG + STEPS + '[optimizer]\nkind = "prodigy"\nlr = 1.0\n',
    ),
    (
        rules.two_betas,
        DOG + STEPS + '[optimizer]\nkind = "dadapt_adan"\nlr = 1.0\nbetas = [0.9, 0.99]\n',
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + '[optimizer]\nkind = "dadapt_adan"\nlr = 1.0\nbetas = [0.9, 0.92, 0.99]\n',
    ),
    (
        rules.two_betas,
        DOG + STEPS + '[optimizer]\nkind = "ademamix8bit"\nbetas = [0.9, 0.999]\n',
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + '[optimizer]\nkind = "paged_ademamix"\nbetas = [0.9, 0.99, 0.999]\nalpha = 8.0\n',
    ),
    (
        rules.two_betas,
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\nbetas = [0.9, 0.999]\n',
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\nbetas = [0.9, 0.99, 0.999]\n',
    ),
    (
        rules.two_betas,
        DOG + STEPS + '[optimizer]\nkind = "pytorch_optimizer_came"\nlr = 1e-4\nbetas = [0.9, 0.999]\n',
        [("DBS219", "error", ("optimizer", "betas"))],
        DOG + STEPS + '[optimizer]\nkind = "pytorch_optimizer_came"\nlr = 1e-4\nbetas = [0.9, 0.99, 0.999]\n',
    ),
    (
        rules.came_adam_eps,
        DOG + STEPS + '[optimizer]\nkind = "pytorch_optimizer_came"\nlr = 1e-4\neps = 1e-16\n',
        [("DBS216", "warning", ("optimizer", "eps"))],
        DOG + STEPS + '[optimizer]\nkind = "pytorch_optimizer_came"\nlr = 1e-4\ncame_eps = [1e-29, 1e-15]\n',
    ),
    (  # CAME takes Adafactor's clip_threshold and its own eps pair; Adafactor's other options are inert
        rules.optimizer_args_unused,
        DOG
        + STEPS
        + '[optimizer]\nkind = "came"\nlr = 1e-4\ndecay_rate = -0.5\nadafactor_eps = [1e-30, 1e-3]\n',
        [
            ("DBS270", "warning", ("optimizer", "decay_rate")),
            ("DBS270", "warning", ("optimizer", "adafactor_eps")),
        ],
        DOG
        + STEPS
        + '[optimizer]\nkind = "came"\nlr = 1e-4\nclip_threshold = 2.0\ncame_eps = [1e-29, 1e-15]\n',
    ),
    (
        rules.optimizer_args_unused,
        DOG
        + STEPS
        + '[optimizer]\nkind = "adamw"\nalpha = 8.0\nweight_lr_power = 1.0\nclip_threshold = 2.0\n',
        [
            ("DBS270", "warning", ("optimizer", "clip_threshold")),
            ("DBS270", "warning", ("optimizer", "alpha")),
            ("DBS270", "warning", ("optimizer", "weight_lr_power")),
        ],
        DOG
        + STEPS
        + '[optimizer]\nkind = "radam_schedulefree"\nweight_lr_power = 1.0\nsilent_sgd_phase = false\n',
    ),
    (
        rules.optimizer_args_unused,
        DOG
        + STEPS
        + '[optimizer]\nkind = "dadapt_lion"\nlr = 1.0\ngrowth_rate = 1.02\nscale_parameter = true\n',
        [
            ("DBS270", "warning", ("optimizer", "growth_rate")),
            ("DBS270", "warning", ("optimizer", "scale_parameter")),
        ],
        DOG + STEPS + '[optimizer]\nkind = "dadapt_sgd"\nlr = 1.0\ngrowth_rate = 1.02\nd0 = 1e-5\n',
    ),
    (  # RAdam's decoupled decay and bitsandbytes' min_8bit_size (8-bit kinds only) are inert elsewhere
        rules.optimizer_args_unused,
        DOG
        + STEPS
        + '[optimizer]\nkind = "paged_lion"\ndecoupled_weight_decay = true\nmin_8bit_size = 16384\n',
        [
            ("DBS270", "warning", ("optimizer", "decoupled_weight_decay")),
            ("DBS270", "warning", ("optimizer", "min_8bit_size")),
        ],
        DOG + STEPS + '[optimizer]\nkind = "paged_lion8bit"\nmin_8bit_size = 16384\n',
    ),
    (
        rules.optimizer_args_unused,
        DOG + STEPS + '[optimizer]\nkind = "adamw8bit"\ndecoupled_weight_decay = true\n',
        [("DBS270", "warning", ("optimizer", "decoupled_weight_decay"))],
        DOG + STEPS + '[optimizer]\nkind = "radam"\ndecoupled_weight_decay = true\n',
    ),
    (
        rules.dadapt_learning_rate,
        DOG + STEPS + '[optimizer]\nkind = "dadapt_adam"\nlr = 0.1\n',
        [("DBS271", "warning", ("optimizer", "lr"))],
        DOG + STEPS + '[optimizer]\nkind = "dadapt_adam"\nlr = 0.5\n',
    ),
    (
        rules.dadapt_group_rates,
        LORA + TE + DOG + STEPS + '[optimizer]\nkind = "dadapt_lion"\nlr = 1.0\ntext_encoder_lr = 0.5\n',
        [("DBS274", "error", ("optimizer", "text_encoder_lr"))],
        LORA + TE + DOG + STEPS + '[optimizer]\nkind = "dadapt_lion"\nlr = 1.0\n',
    ),
    (
        rules.dadapt_group_rates,  # prodigyopt raises too; optimizer.split gives each rate its own optimizer
        TE + DOG + STEPS + '[optimizer]\nkind = "prodigy"\nlr = 1.0\ntext_encoder_lr = 0.5\n',
        [("DBS274", "error", ("optimizer", "text_encoder_lr"))],
        TE + DOG + STEPS + '[optimizer]\nkind = "prodigy"\nlr = 1.0\ntext_encoder_lr = 0.5\nsplit = 2\n',
    ),
    (
        rules.dadapt_group_rates,
        TE + DOG + STEPS + '[optimizer]\nkind = "dadapt_lion"\nlr = 1.0\ntext_encoder_lr = 0.5\n',
        [("DBS274", "error", ("optimizer", "text_encoder_lr"))],
        TE + DOG + STEPS + '[optimizer]\nkind = "dadapt_lion"\nlr = 1.0\ntext_encoder_lr = 0.5\nsplit = 3\n',
    ),
    (
        rules.dadapt_group_rates,
        LORA + TE + DOG + STEPS + '[optimizer]\nkind = "dadapt_adan"\nlr = 1.0\ntext_encoder_lr = 0.5\n',
        [("DBS274", "warning", ("optimizer", "text_encoder_lr"))],
        LORA + DOG + STEPS + '[optimizer]\nkind = "dadapt_adan"\nlr = 1.0\ntext_encoder_lr = 0.5\n',
    ),
    (
        rules.dadapt_group_rates,  # a block's own rate is a group of its own: prodigyopt raises at step 1
        LORA
        + DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy"\nlr = 1.0\n'
        + '[[adapter.blocks]]\npattern = "^down_blocks"\nrank = 4\nalpha = 4.0\nlr = 0.5\n',
        [("DBS274", "error", ("adapter", "blocks", 0, "lr"))],
        LORA
        + DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy"\nlr = 1.0\n'
        + '[[adapter.blocks]]\npattern = "^down_blocks"\nrank = 4\nalpha = 4.0\nlr = 1.0\n',
    ),
    (
        rules.dadapt_group_rates,  # lr_scale 0.5 is a group at half the rate; 0 holds the block, in no group
        LORA
        + DOG
        + STEPS
        + '[optimizer]\nkind = "dadapt_adam"\nlr = 1.0\n'
        + '[[adapter.blocks]]\npattern = "^up_blocks"\nrank = 4\nalpha = 4.0\nlr_scale = 0.5\n',
        [("DBS274", "error", ("adapter", "blocks", 0, "lr_scale"))],
        LORA
        + DOG
        + STEPS
        + '[optimizer]\nkind = "dadapt_adam"\nlr = 1.0\n'
        + '[[adapter.blocks]]\npattern = "^up_blocks"\nrank = 4\nalpha = 4.0\nlr_scale = 0.0\n',
    ),
    (
        rules.dadapt_group_rates,  # a denoiser held whole (kohya's U-Net at unet_lr 0) has no group: one rate
        LORA
        + TE
        + DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy"\nlr = 1.0\ntext_encoder_lr = 0.5\n'
        + '[[adapter.blocks]]\npattern = "^up_blocks"\nrank = 4\nalpha = 4.0\nlr_scale = 0.0\n',
        [("DBS274", "error", ("optimizer", "text_encoder_lr"))],
        LORA
        + TE
        + DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy"\nlr = 1.0\ntext_encoder_lr = 0.5\n'
        + '[[adapter.blocks]]\npattern = ""\nrank = 4\nalpha = 4.0\nlr_scale = 0.0\n',
    ),
    (
        rules.dadapt_group_rates,  # LoRA+'s up matrices: the ratio's key
        LORA
        + "loraplus_denoiser_ratio = 4.0\n"
        + DOG
        + STEPS
        + '[optimizer]\nkind = "dadapt_sgd"\nlr = 1.0\n',
        [("DBS274", "error", ("adapter", "loraplus_denoiser_ratio"))],
        LORA + DOG + STEPS + '[optimizer]\nkind = "dadapt_sgd"\nlr = 1.0\n',
    ),
    (
        rules.adafactor_relative_step_schedule,
        DOG + '[optimizer]\nkind = "adafactor"\nrelative_step = true\n' + STEPS + 'lr_schedule = "linear"\n',
        [("DBS272", "error", ("schedule", "lr_schedule"))],
        DOG + STEPS + '[optimizer]\nkind = "adafactor"\nrelative_step = true\nwarmup_init = true\n',
    ),
    (
        rules.adafactor_eps_pair,
        DOG + STEPS + '[optimizer]\nkind = "adafactor"\nadafactor_eps = [1e-30]\n',
        [("DBS220", "error", ("optimizer", "adafactor_eps"))],
        DOG + STEPS + '[optimizer]\nkind = "adafactor"\nadafactor_eps = [1e-30, 2e-3]\n',
    ),
    (
        rules.came_eps_pair,
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\ncame_eps = [1e-30, 0.0]\n',
        [("DBS220", "error", ("optimizer", "came_eps"))],
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\ncame_eps = [1e-29, 1e-15]\n',
    ),
    (
        rules.came_adam_eps,
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\neps = 1e-16\n',
        [("DBS216", "warning", ("optimizer", "eps"))],
        DOG + STEPS + '[optimizer]\nkind = "came"\nlr = 1e-4\ncame_eps = [1e-30, 1e-16]\n',
    ),
    (
        rules.schedulefree_without_schedule,
        DOG
        + '[optimizer]\nkind = "adamw_schedulefree"\n'
        + STEPS
        + 'lr_schedule = "cosine"\nwarmup_steps = 5\n',
        [("DBS228", "error", ("schedule", "lr_schedule")), ("DBS228", "error", ("schedule", "warmup_steps"))],
        DOG + STEPS + '[optimizer]\nkind = "adamw_schedulefree"\nschedulefree_warmup_steps = 5\n',
    ),
    (
        rules.schedulefree_without_schedule,
        DOG
        + '[optimizer]\nkind = "prodigy_plus_schedulefree"\nlr = 1.0\n'
        + STEPS
        + 'lr_schedule = "cosine"\n',
        [("DBS228", "error", ("schedule", "lr_schedule"))],
        DOG + STEPS + '[optimizer]\nkind = "prodigy_plus_schedulefree"\nlr = 1.0\n',
    ),
    (
        rules.prodigy_plus_low_precision_weights,
        DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy_plus_schedulefree"\nlr = 1.0\n[precision]\nmixed = "bf16"\n'
        + 'weights = "bf16"\n',
        [("DBS620", "error", ("precision", "weights"))],
        DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy_plus_schedulefree"\nlr = 1.0\n[precision]\nmixed = "bf16"\n',
    ),
    (
        rules.one_cycle_lengths,
        DOG + STEPS + 'lr_schedule = "one_cycle"\nt_max = 99\n',
        [("DBS273", "error", ("schedule", "t_max"))],
        DOG + STEPS + 'lr_schedule = "one_cycle"\nt_max = 100\n',
    ),
    (
        rules.one_cycle_momentum,
        DOG + '[optimizer]\nkind = "adafactor"\n' + STEPS + 'lr_schedule = "one_cycle"\n',
        [("DBS273", "error", ("schedule", "cycle_momentum"))],
        DOG
        + '[optimizer]\nkind = "adafactor"\n'
        + STEPS
        + 'lr_schedule = "one_cycle"\ncycle_momentum = false\n',
    ),
    (
        rules.schedule_setting_inert,
        DOG + STEPS + 'lr_schedule = "step"\nmilestones = [10]\nmax_lr = 1e-3\n',
        [("DBS255", "warning", ("schedule", "milestones")), ("DBS255", "warning", ("schedule", "max_lr"))],
        DOG + STEPS + 'lr_schedule = "step"\nstep_size = 10\ngamma = 0.5\n',
    ),
    (
        rules.schedule_setting_inert,
        DOG
        + STEPS
        + 'lr_schedule = "cosine_with_min_lr"\nmin_lr_ratio = 0.1\nlr_end = 1e-6\ndecay_type = "linear"\n',
        [("DBS255", "warning", ("schedule", "lr_end")), ("DBS255", "warning", ("schedule", "decay_type"))],
        DOG + STEPS + 'lr_schedule = "step"\nstep_size = 10\ngamma = 0.5\n',
    ),
    (
        rules.base_prior_needs_denoiser,
        "[train]\ndenoiser = false\ntext_encoder = true\n"
        + DOG
        + DOGS
        + STEPS
        + '[loss]\nprior = "base_model"\n',
        [("DBS226", "error", ("loss", "prior"))],
        "[train]\ndenoiser = false\ntext_encoder = true\n" + DOG + DOGS + STEPS,
    ),
    (
        rules.preserve_output_needs_denoiser_adapter,
        DOG + "preserve_output = true\n" + STEPS,
        [("DBS299", "error", ("datasets", 0, "preserve_output"))],
        LORA + DOG + "preserve_output = true\n" + STEPS,
    ),
    (
        rules.preserve_output_needs_denoiser_adapter,
        # the adapter on the text encoder only: the target is the prediction itself (kohya's with
        # --network_train_text_encoder_only; issue 12, was DBS299)
        LORA + "[train]\ndenoiser = false\ntext_encoder = true\n" + DOG + "preserve_output = true\n" + STEPS,
        [("DBS609", "warning", ("datasets", 0, "preserve_output"))],
        LORA + TE + DOG + "preserve_output = true\n" + STEPS,
    ),
    (
        rules.loss_weights_fit_prediction,
        'prediction = "epsilon"\n'
        + DOG
        + STEPS
        + "[loss]\nscale_v_pred_loss_like_noise_pred = true\nzero_terminal_snr = true\n"
        "debiased_estimation = true\n",
        [
            ("DBS235", "error", ("loss", "scale_v_pred_loss_like_noise_pred")),
            ("DBS236", "error", ("loss", "debiased_estimation")),
        ],
        'prediction = "epsilon"\n'
        + DOG
        + STEPS
        + "[loss]\nzero_terminal_snr = true\ndebiased_estimation = true\nmax_timestep = 999\n",
    ),
    (
        rules.loss_weights_fit_prediction,
        'prediction = "v_prediction"\n' + DOG + STEPS + "[loss]\nv_pred_like_loss = 0.1\n",
        [("DBS235", "error", ("loss", "v_pred_like_loss"))],
        'prediction = "v_prediction"\n'
        + DOG
        + STEPS
        + "[loss]\nscale_v_pred_loss_like_noise_pred = true\ndebiased_estimation = true\n"
        "zero_terminal_snr = true\n",
    ),
    (
        rules.loss_fits_objective,
        'prediction = "flow_matching"\n' + DOG + STEPS + "[loss]\nmin_snr_gamma = 5.0\nnoise_offset = 0.05\n",
        [
            ("DBS230", "error", ("loss", "min_snr_gamma")),
            ("DBS230", "error", ("loss", "noise_offset")),
        ],
        'prediction = "flow_matching"\n' + DOG + STEPS + '[loss]\nflow_weighting = "cosmap"\n',
    ),
    (
        rules.flow_shift_once,
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + "[loss]\nflow_dynamic_shift = true\nflow_shift = 3.0\n",
        [("DBS239", "error", ("loss", "flow_shift"))],
        'prediction = "flow_matching"\n' + DOG + STEPS + "[loss]\nflow_dynamic_shift = true\n",
    ),
    (
        rules.flow_shift_once,
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_dynamic_shift = true\nflow_draw = "floored"\n',
        [("DBS239", "error", ("loss", "flow_draw"))],
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_dynamic_shift = true\nflow_draw = "continuous"\n',
    ),
    (
        rules.flow_floored_weight_finite,
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_draw = "floored"\nflow_weighting = "sigma_sqrt"\n',
        [("DBS236", "error", ("loss", "flow_weighting"))],
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_draw = "floored"\nflow_weighting = "sigma_sqrt"\nmin_timestep = 1\n',
    ),
    (  # the floored draw reads the timestep bounds; the other flow draws refuse them
        rules.loss_fits_objective,
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_draw = "continuous"\nmin_timestep = 100\n',
        [("DBS230", "error", ("loss", "min_timestep"))],
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_draw = "floored"\nmin_timestep = 100\n',
    ),
    (
        rules.loss_fits_objective,
        'prediction = "flow_matching"\n' + DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 5\n",
        [("DBS230", "error", ("scheduled_sampling", "max_step_offset"))],
        'prediction = "flow_matching"\n' + DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 0\n",
    ),
    (
        rules.loss_fits_objective,
        'prediction = "epsilon"\n' + DOG + STEPS + "[loss]\nflow_shift = 3.0\n",
        [("DBS231", "warning", ("loss", "flow_shift"))],
        'prediction = "epsilon"\n' + DOG + STEPS,
    ),
    (
        rules.flow_guidance_without_embedding,
        'family = "sd3"\n' + DOG + STEPS + "[loss]\nflow_guidance = 1.0\n",
        [("DBS232", "warning", ("loss", "flow_guidance"))],
        'family = "flux"\n' + DOG + STEPS + "[loss]\nflow_guidance = 1.0\n",
    ),
    (
        rules.noise_options_fit,
        DOG + STEPS + "[loss]\nadaptive_noise_scale = 0.5\nmin_timestep = 600\nmax_timestep = 500\n",
        [
            ("DBS237", "error", ("loss", "adaptive_noise_scale")),
            ("DBS237", "error", ("loss", "min_timestep")),
        ],
        DOG
        + STEPS
        + "[loss]\nadaptive_noise_scale = 0.5\nnoise_offset = 0.05\nmin_timestep = 500\nmax_timestep = 500\n",
    ),
    (  # the floored flow draw takes reversed bounds as kohya's SD3 draw does (from min down toward max)
        rules.noise_options_fit,
        'prediction = "flow_matching"\n' + DOG + STEPS + "[loss]\nmin_timestep = 600\nmax_timestep = 500\n",
        [("DBS237", "error", ("loss", "min_timestep"))],
        'prediction = "flow_matching"\n'
        + DOG
        + STEPS
        + '[loss]\nflow_draw = "floored"\nmin_timestep = 600\nmax_timestep = 500\n',
    ),
    (
        rules.inert_noise_options,
        DOG
        + STEPS
        + "[loss]\nhuber_c = 0.2\nnoise_offset_random_strength = true\nmultires_noise_discount = 0.5\n"
        'ip_noise_gamma_random_strength = true\nprior_reduction = "per_sample"\n',
        [
            ("DBS216", "warning", ("loss", "huber_c")),
            ("DBS216", "warning", ("loss", "noise_offset_random_strength")),
            ("DBS216", "warning", ("loss", "multires_noise_discount")),
            ("DBS216", "warning", ("loss", "ip_noise_gamma_random_strength")),
            ("DBS216", "warning", ("loss", "prior_reduction")),
        ],
        DOG + DOGS + STEPS + '[loss]\nkind = "smooth_l1"\nhuber_c = 0.2\nnoise_offset = 0.1\n'
        "noise_offset_random_strength = true\n"
        "multires_noise_iterations = 6\nmultires_noise_discount = 0.5\nip_noise_gamma = 0.1\n"
        'ip_noise_gamma_random_strength = true\nprior_reduction = "per_sample"\n',
    ),
    (
        rules.caption_separator_usable,
        DOG + 'shuffle_caption = true\ncaption_separator = ""\n' + STEPS,
        [("DBS240", "error", ("datasets", 0, "caption_separator"))],
        DOG + 'shuffle_caption = true\ncaption_separator = ";"\n' + STEPS,
    ),
    (
        rules.caption_separator_usable,
        DOG + 'token_warmup_step = 0.5\ncaption_separator = ""\n' + STEPS,
        [("DBS240", "error", ("datasets", 0, "caption_separator"))],
        DOG + 'secondary_separator = ";"\ncaption_separator = ""\n' + STEPS,  # a replacement: fine
    ),
    (
        rules.caption_options_inert,
        DOG + 'keep_tokens_separator = "|||"\nkeep_tokens = 1\ntoken_warmup_min = 3\n' + STEPS,
        [
            ("DBS241", "warning", ("datasets", 0, "keep_tokens_separator")),
            ("DBS216", "warning", ("datasets", 0, "keep_tokens")),
            ("DBS216", "warning", ("datasets", 0, "token_warmup_min")),
        ],
        DOG
        + 'keep_tokens_separator = "|||"\nkeep_tokens = 1\ntoken_warmup_min = 3\ntoken_warmup_step = 10\n'
        + STEPS,
    ),
    (
        rules.caption_options_inert,
        DOG + 'caption_separator = ";"\ncaption_dropout_rate = 1.0\n' + STEPS,
        [
            ("DBS216", "warning", ("datasets", 0, "caption_separator")),
            ("DBS242", "warning", ("datasets", 0, "caption_dropout_rate")),
        ],
        DOG + 'caption_separator = ";"\ncaption_tag_dropout_rate = 0.1\ncaption_dropout_rate = 0.1\n' + STEPS,
    ),
    (
        rules.kohya_folders_options,
        DOG
        + DOGS.replace('role = "class"\n', 'role = "class"\nlayout = "kohya_folders"\nrecursive = true\n')
        + "generate = 50\n"
        + STEPS,
        [
            ("DBS227", "error", ("datasets", 1, "generate")),
            ("DBS227", "error", ("datasets", 1, "recursive")),
        ],
        DOG + DOGS.replace('role = "class"\n', 'role = "class"\nlayout = "kohya_folders"\n') + STEPS,
    ),
    (
        rules.metadata_options,
        DOG.replace('prompt = "a photo of ohwx dog"\n', 'metadata = "meta.json"\ncaptions = "textfile"\n')
        + 'layout = "folder"\nrecursive = true\n'
        + STEPS,
        [
            ("DBS227", "error", ("datasets", 0, "captions")),
            ("DBS227", "error", ("datasets", 0, "recursive")),
        ],
        DOG.replace('prompt = "a photo of ohwx dog"\n', 'metadata = "meta.json"\n') + STEPS,
    ),
    (
        rules.schedule_setting_inert,
        DOG + STEPS + 'lr_schedule = "cosine"\npower = 2.0\n',
        [("DBS255", "warning", ("schedule", "power"))],
        DOG + STEPS + 'lr_schedule = "polynomial"\npower = 2.0\n',
    ),
    (
        rules.warmup_stable_decay_lengths,
        DOG + STEPS + 'lr_schedule = "warmup_stable_decay"\nwarmup_steps = 10\ndecay_steps = 91\n',
        [("DBS256", "error", ("schedule", "decay_steps"))],
        DOG + STEPS + 'lr_schedule = "warmup_stable_decay"\nwarmup_steps = 10\ndecay_steps = 90\n',
    ),
    (
        rules.torch_schedule_without_warmup,
        DOG + STEPS + 'lr_schedule = "cosine_annealing"\nwarmup_steps = 5\n',
        [("DBS257", "error", ("schedule", "warmup_steps"))],
        DOG + STEPS + 'lr_schedule = "cosine_annealing"\nt_max = 50\n',
    ),
    (  # fp16 weights (kohya's full_fp16) are stepped directly: weights_rounding's bf16 default is refused
        rules.low_precision_weights_settings,
        DOG + STEPS + '[precision]\nweights = "fp16"\n',
        [("DBS259", "error", ("precision", "weights_rounding"))],
        DOG + STEPS + FP16_WEIGHTS,
    ),
    (
        rules.low_precision_weights_settings,
        DOG + STEPS + '[precision]\nmixed = "bf16"\nweights = "fp16"\nweights_rounding = "stochastic"\n',
        [("DBS259", "error", ("precision", "mixed")), ("DBS259", "error", ("precision", "weights_rounding"))],
        DOG + STEPS + FP16_WEIGHTS + 'mixed = "fp16"\n',
    ),
    (
        rules.fp16_weights_optimizer,
        DOG
        + STEPS
        + '[optimizer]\nkind = "adamw"\n[precision]\nweights = "fp16"\nweights_rounding = "nearest"\n',
        [("DBS249", "error", ("optimizer", "kind"))],
        DOG
        + STEPS
        + '[optimizer]\nkind = "adamw8bit"\n[precision]\nweights = "fp16"\nweights_rounding = "nearest"\n',
    ),
    (
        rules.fp16_weights_optimizer,
        DOG + STEPS + '[optimizer]\nkind = "adamw_schedulefree"\n[precision]\nweights = "fp16"\n',
        [("DBS249", "error", ("optimizer", "kind"))],
        DOG
        + STEPS
        + '[optimizer]\nkind = "adafactor"\n[precision]\nweights = "fp16"\nweights_rounding = "nearest"\n',
    ),
    (  # pytorch_optimizer's CAME keeps fp16 statistics (came_pytorch's fp32 ones step fp16 weights)
        rules.fp16_weights_optimizer,
        DOG
        + STEPS
        + '[optimizer]\nkind = "pytorch_optimizer_came"\nlr = 1e-4\n[precision]\nweights = "fp16"\n'
        + 'weights_rounding = "nearest"\n',
        [("DBS249", "error", ("optimizer", "kind"))],
        DOG
        + STEPS
        + '[optimizer]\nkind = "came"\nlr = 1e-4\n[precision]\nweights = "fp16"\n'
        + 'weights_rounding = "nearest"\n',
    ),
    (
        rules.low_precision_weights_settings,
        DOG + STEPS + '[optimizer]\nkind = "prodigy"\n[precision]\nmixed = "no"\nweights = "bf16"\n',
        [("DBS259", "error", ("precision", "mixed")), ("DBS259", "error", ("optimizer", "kind"))],
        DOG + STEPS + '[optimizer]\nkind = "adafactor"\n[precision]\nmixed = "bf16"\nweights = "bf16"\n',
    ),
    (
        rules.low_precision_weights_settings,
        DOG + STEPS + '[optimizer]\nkind = "prodigy"\n[precision]\nweights = "bf16"\n',
        [("DBS259", "error", ("optimizer", "kind"))],
        DOG
        + STEPS
        + '[optimizer]\nkind = "prodigy"\n[precision]\nweights = "bf16"\nweights_rounding = "nearest"\n',
    ),
    (
        rules.weights_rounding_without_bf16_weights,
        DOG + STEPS + '[precision]\nweights_rounding = "nearest"\n',
        [("DBS246", "warning", ("precision", "weights_rounding"))],
        DOG + STEPS + '[precision]\nweights = "bf16"\nweights_rounding = "nearest"\n',
    ),
    (
        rules.weights_rounding_without_bf16_weights,
        DOG + STEPS + '[precision]\nweights = "fp32"\nweights_rounding = "stochastic"\n',
        [("DBS246", "warning", ("precision", "weights_rounding"))],
        DOG + STEPS + FP16_WEIGHTS,
    ),
    (
        rules.nesterov_needs_momentum,
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nnesterov = true\n',
        [("DBS262", "error", ("optimizer", "nesterov"))],
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nnesterov = true\nmomentum = 0.9\n',
    ),
    (
        rules.nesterov_without_dampening,
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nnesterov = true\nmomentum = 0.9\ndampening = 0.1\n',
        [("DBS612", "error", ("optimizer", "dampening"))],
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nmomentum = 0.9\ndampening = 0.1\n',
    ),
    (
        rules.inert_loss_options,
        DOG + STEPS + "[optimizer]\nnesterov = true\n",
        [("DBS216", "warning", ("optimizer", "nesterov"))],
        DOG + STEPS + "[optimizer]\nnesterov = false\n",
    ),
    (
        rules.second_text_encoder_lr_inert,
        DOG + STEPS + TE + "text_encoder_2 = false\n[optimizer]\ntext_encoder_2_lr = 5e-7\n",
        [("DBS264", "warning", ("optimizer", "text_encoder_2_lr"))],
        DOG + STEPS + TE + "[optimizer]\ntext_encoder_2_lr = 5e-7\n",
    ),
    (
        rules.scheduled_sampling_inert,
        DOG + STEPS + '[scheduled_sampling]\nramp_steps = 10\nsampler = "ddim"\n',
        [
            ("DBS297", "warning", ("scheduled_sampling", "ramp_steps")),
            ("DBS297", "warning", ("scheduled_sampling", "sampler")),
        ],
        DOG + STEPS + '[scheduled_sampling]\nmax_step_offset = 5\nramp_steps = 10\nsampler = "ddim"\n',
    ),
    (
        rules.scheduled_sampling_inert,
        DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 5\nprobability = 0.0\nramp_steps = 10\n",
        [("DBS297", "warning", ("scheduled_sampling", "ramp_steps"))],
        DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 5\nprobability = 0.5\nramp_steps = 10\n",
    ),
    (
        rules.scheduled_sampling_ramp_beyond_run,
        DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 5\nramp_steps = 100\n",
        [("DBS298", "warning", ("scheduled_sampling", "ramp_steps"))],
        DOG + STEPS + "[scheduled_sampling]\nmax_step_offset = 5\nramp_steps = 99\n",
    ),
    (
        rules.adapter_block_patterns,
        LORA
        + 'conv_rank = 0\n[[adapter.blocks]]\npattern = "down_blocks["\n'
        + "rank = 2\nalpha = 1.0\nconv_rank = 4\n"
        + DOG
        + STEPS,
        [
            ("DBS265", "error", ("adapter", "blocks", 0, "pattern")),
            ("DBS266", "warning", ("adapter", "blocks", 0, "conv_rank")),
        ],
        LORA
        + 'conv_rank = 4\n[[adapter.blocks]]\npattern = "^down_blocks\\\\.0\\\\."\n'
        + "rank = 2\nalpha = 1.0\nconv_rank = 4\n"
        + DOG
        + STEPS,
    ),
    (
        rules.text_encoder_idle_needs_adapter,
        DOG + STEPS + '[train]\ntext_encoder_idle = "kohya"\n',
        [("DBS597", "error", ("train", "text_encoder_idle"))],
        LORA + DOG + STEPS + '[train]\ntext_encoder_idle = "kohya"\n',
    ),
    (
        rules.norms_without_clip_training,
        LORA + 'text_encoder_norms = ["layer_norm1"]\n' + DOG + STEPS,
        [("DBS585", "warning", ("adapter", "text_encoder_norms"))],
        LORA + 'text_encoder_norms = ["layer_norm1"]\n' + DOG + STEPS + "[train]\ntext_encoder = true\n",
    ),
    (
        rules.norms_without_denoiser_training,
        LORA
        + 'denoiser_norms = ["norm1"]\n'
        + DOG
        + STEPS
        + "[train]\ndenoiser = false\ntext_encoder = true\n",
        [("DBS586", "warning", ("adapter", "denoiser_norms"))],
        LORA + 'denoiser_norms = ["norm1"]\n' + DOG + STEPS,
    ),
    (
        rules.denoiser_norms_need_a_unet,
        'family = "flux"\n' + DOG + STEPS + LORA + 'denoiser_norms = ["norm1"]\n',
        [("DBS587", "error", ("adapter", "denoiser_norms"))],
        'family = "sdxl"\n' + DOG + STEPS + LORA + 'denoiser_norms = ["norm1"]\n',
    ),
    (
        rules.lora_dropouts_without_dora,
        LORA + "dora = true\nrank_dropout = 0.1\n" + DOG + STEPS,
        [("DBS267", "error", ("adapter", "rank_dropout"))],
        LORA + "rank_dropout = 0.1\n" + DOG + STEPS,
    ),
    (
        rules.lora_dropouts_without_dora,
        LORA + "dora = true\ndown_dropout = 0.1\n" + DOG + STEPS,
        [("DBS267", "error", ("adapter", "down_dropout"))],
        LORA + "down_dropout = 0.1\n" + DOG + STEPS,
    ),
    (  # LyCORIS's weight decomposition takes LoConModule's draws: module dropout, the row mask
        rules.lora_dropouts_without_dora,
        LORA + 'dora = true\ndora_form = "lycoris"\nrank_dropout = 0.1\nmodule_dropout = 0.2\n' + DOG + STEPS,
        [("DBS267", "error", ("adapter", "rank_dropout"))],  # kohya's form: masks ranks, not rows
        LORA
        + 'dora = true\ndora_form = "lycoris"\nrank_dropout = 0.1\nrank_dropout_form = "lycoris"\n'
        + "module_dropout = 0.2\n"
        + DOG
        + STEPS,
    ),
    (  # ... with fused_projections too (one draw its parts share; per input column the norm spans every
        # part's masked rows; beside blocks of other kinds alike), in peft's form not
        rules.lora_dropouts_without_dora,
        'family = "flux"\n'
        + DOG
        + STEPS
        + LORA
        + "dora = true\nfused_projections = true\nmodule_dropout = 0.2\n",
        [("DBS267", "error", ("adapter", "module_dropout"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + LORA
        + 'dora = true\ndora_form = "lycoris"\nfused_projections = true\nmodule_dropout = 0.2\n'
        + 'dora_axis = "input"\n'
        + '[[adapter.blocks]]\npattern = "^proj_out$"\nkind = "lokr"\nrank = 2\nalpha = 1\n',
    ),
    (
        rules.best_checkpoint_metric_runs,
        DOG + STEPS + '[checkpoints]\nselect = "eval_loss"\n',
        [("DBS275", "error", ("checkpoints", "select"))],
        DOG + STEPS + '[checkpoints]\nselect = "eval_loss"\n[evaluation]\nholdout = 1\n',
    ),
    (
        rules.weighted_checkpoint_selection,
        DOG + STEPS + '[checkpoints]\nselect = "weighted"\nselect_weight_eval_loss = 1.0\n',
        [("DBS292", "error", ("checkpoints", "select_weight_eval_loss"))],
        DOG
        + STEPS
        + '[checkpoints]\nselect = "weighted"\nselect_weight_eval_loss = 1.0\n[evaluation]\nholdout = 1\n',
    ),
    (
        rules.evaluation_subject_words,
        DOG
        + STEPS
        + PROMPTS
        + '[evaluation]\nmetrics = ["clip_t"]\nidentifier = "ohwx"\n',  # no class prompt
        [("DBS276", "error", ("evaluation", "class_word"))],
        DOG + DOGS + STEPS + PROMPTS + '[evaluation]\nmetrics = ["clip_t"]\n',  # derived: ohwx, dog
    ),
    (
        rules.evaluation_needs_prompts,
        DOG + DOGS + STEPS + '[evaluation]\nmetrics = ["dino"]\n',
        [("DBS277", "error", ("evaluation", "metrics"))],
        DOG + DOGS + STEPS + PROMPTS + '[evaluation]\nmetrics = ["dino"]\n',
    ),
    (
        rules.evaluation_bands_fit,
        DOG + STEPS + "[evaluation]\nholdout = 1\ntimesteps = 3\nbands = 4\n",
        [("DBS278", "error", ("evaluation", "bands"))],
        DOG + STEPS + "[evaluation]\nholdout = 1\ntimesteps = 4\nbands = 4\n",
    ),
    (
        rules.preview_options_inert,
        DOG + STEPS + "[validation]\npreview_every = 5\n",
        [("DBS285", "warning", ("validation", "preview_every"))],
        DOG + STEPS + '[validation]\nprompts = ["a photo of ohwx dog"]\npreview_every = 5\n',
    ),
    (
        rules.preview_options_inert,
        DOG
        + STEPS
        + '[validation]\nprompts = ["a dog"]\nwebhook = "http://127.0.0.1:8000/p"\nwebhook_timeout = 1.0\n',
        [
            ("DBS285", "warning", ("validation", "webhook")),
            ("DBS285", "warning", ("validation", "webhook_timeout")),
        ],
        DOG
        + STEPS
        + '[validation]\nprompts = ["a dog"]\npreview_every = 10\nwebhook = "http://127.0.0.1:8000/p"\n',
    ),
    (
        rules.preview_options_inert,
        DOG + STEPS + '[validation]\nprompts = ["a dog"]\nsteps = 20\npreview_every = 21\n',
        [("DBS285", "warning", ("validation", "preview_every"))],
        DOG + STEPS + '[validation]\nprompts = ["a dog"]\nsteps = 20\npreview_every = 20\n',
    ),
    (
        rules.split_group_bounds,  # one schedule per chunk optimizer: group tables cannot apply
        DOG + STEPS + 'lr_schedule = "one_cycle"\nmax_lr = { denoiser = 1e-3 }\n[optimizer]\nsplit = 3\n',
        [("DBS510", "error", ("schedule", "max_lr"))],
        DOG + STEPS + 'lr_schedule = "one_cycle"\nmax_lr = 1e-3\n[optimizer]\nsplit = 3\n',
    ),
    (
        rules.optimizer_implementation_kind,
        DOG + STEPS + '[optimizer]\nkind = "lion"\nimplementation = "fused"\n',
        [("DBS287", "error", ("optimizer", "implementation"))],
        DOG + STEPS + '[optimizer]\nkind = "sgd"\nimplementation = "fused"\n',
    ),
    (
        rules.webhook_not_http,
        DOG + STEPS + '[validation]\nprompts = ["a dog"]\npreview_every = 10\nwebhook = "127.0.0.1:8000/p"\n',
        [("DBS286", "error", ("validation", "webhook"))],
        DOG
        + STEPS
        + '[validation]\nprompts = ["a dog"]\npreview_every = 10\nwebhook = "https://example.org/p"\n',
    ),
    (
        rules.pivotal_with_text_encoder,
        DOG + STEPS + TE + '[pivotal]\ntokens = ["ohwx"]\n',
        [("DBS280", "error", ("train", "text_encoder"))],
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx"]\n',
    ),
    (
        rules.pivotal_tokens_valid,
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx", "o hwx", "", "ohwx_1"]\nvectors = 2\n',
        [
            ("DBS281", "error", ("pivotal", "tokens", 1)),
            ("DBS281", "error", ("pivotal", "tokens", 2)),
            ("DBS281", "error", ("pivotal", "tokens", 3)),
        ],
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx", "zkw"]\nvectors = 2\n',
    ),
    (
        rules.pivotal_token_unused,
        DOG + STEPS + '[pivotal]\ntokens = ["<zkw>"]\n',
        [("DBS282", "warning", ("pivotal", "tokens", 0))],
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx"]\n',
    ),
    (
        rules.pivotal_options_inert,
        DOG + STEPS + '[pivotal]\nvectors = 2\ninit_word = "dog"\n',
        [("DBS284", "warning", ("pivotal", "vectors")), ("DBS284", "warning", ("pivotal", "init_word"))],
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx"]\nvectors = 2\ninit_word = "dog"\n',
    ),
    (
        rules.pivotal_stop_beyond_run,
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx"]\nstop_step = 100\n',
        [("DBS283", "warning", ("pivotal", "stop_step"))],
        DOG + STEPS + '[pivotal]\ntokens = ["ohwx"]\nstop_step = 50\n',
    ),
    (
        rules.distributed_setting_inert,
        DOG + STEPS + "[distributed]\nfsdp_cpu_offload = true\nzero_stage = 3\n",
        [
            ("DBS269", "warning", ("distributed", "fsdp_cpu_offload")),
            ("DBS269", "warning", ("distributed", "zero_stage")),
        ],
        DOG + STEPS + '[distributed]\nstrategy = "fsdp"\nfsdp_cpu_offload = true\n',
    ),
    (
        rules.distributed_setting_inert,  # ZeRO-2 has no weight shard to offload
        DOG + STEPS + '[distributed]\nstrategy = "deepspeed"\nzero_offload_params = true\n',
        [("DBS268", "error", ("distributed", "zero_offload_params"))],
        DOG + STEPS + '[distributed]\nstrategy = "deepspeed"\nzero_stage = 3\nzero_offload_params = true\n',
    ),
    (
        rules.distributed_combinations,  # gathered: each part that cannot run sharded yet, one error each
        DOG
        + STEPS
        + PROMPTS
        + '[ema]\nenabled = true\n[optimizer]\nkind = "adamw8bit"\nsplit = 2\n'
        + '[precision]\nquantize_denoiser = "int8"\n'
        + TE
        + '[distributed]\nstrategy = "fsdp"\n',
        [
            ("DBS268", "error", ("validation", "prompts")),
            ("DBS268", "error", ("ema", "enabled")),
            ("DBS268", "error", ("precision", "quantize_denoiser")),
            ("DBS268", "error", ("optimizer", "split")),
            ("DBS268", "error", ("optimizer", "kind")),
            ("DBS268", "error", ("train", "text_encoder")),  # accelerate's FSDP2 prepares one model
        ],
        DOG + STEPS + PROMPTS + '[ema]\nenabled = true\n[optimizer]\nkind = "adamw8bit"\n',
    ),
    (
        rules.distributed_combinations,  # DeepSpeed counts accumulation; accelerate shards one model
        DOG
        + STEPS.replace("steps = 100", "steps = 100\naccumulation = 2")
        + TE
        + '[distributed]\nstrategy = "deepspeed"\n',
        [("DBS268", "error", ("schedule", "accumulation")), ("DBS268", "error", ("train", "text_encoder"))],
        DOG + STEPS + '[distributed]\nstrategy = "deepspeed"\nzero_stage = 3\n',
    ),
    (
        rules.fused_projection_dropout,
        '[adapter]\nkind = "lora"\nfused_projections = true\ndropout = 0.1\n' + DOG + STEPS,
        [("DBS508", "warning", ("adapter", "dropout"))],
        # kohya's dropouts are drawn once per fused layer (runtime/fused_dropout.py)
        '[adapter]\nkind = "lora"\nfused_projections = true\nrank_dropout = 0.1\nmodule_dropout = 0.1\n'
        "down_dropout = 0.1\n" + DOG + STEPS,
    ),
    # per-text-encoder dropout (kohya's SD3 --clip_l/--clip_g/--t5_dropout_rate): one rate per encoder
    (
        rules.text_encoder_dropout_fits,
        'family = "sd3"\n' + DOG + STEPS + "[loss]\ntext_encoder_dropout = [0.1, 0.2]\n",
        [("DBS540", "error", ("loss", "text_encoder_dropout"))],
        'family = "sd3"\n' + DOG + STEPS + "[loss]\ntext_encoder_dropout = [0.1, 0.2, 0.0]\n",
    ),
    (
        rules.text_encoder_dropout_fits,
        'family = "sd3"\n' + DOG + STEPS + "[loss]\ntext_encoder_dropout = [0.1, 1.5, -0.1]\n",
        [
            ("DBS541", "error", ("loss", "text_encoder_dropout", 1)),
            ("DBS541", "error", ("loss", "text_encoder_dropout", 2)),
        ],
        'family = "sd3"\n' + DOG + STEPS + "[loss]\ntext_encoder_dropout = [0.1, 1.0, 0.0]\n",
    ),
    (
        rules.text_encoder_dropout_fits,
        'family = "sdxl"\n' + DOG + STEPS + "[loss]\ntext_encoder_dropout = [0.1, 0.2]\n",
        [("DBS542", "error", ("loss", "text_encoder_dropout"))],
        'family = "sdxl"\n' + DOG + STEPS,
    ),
    # kohya's SD3 random position-embedding window: SD3 only, never compiled
    (
        rules.pos_embed_crop_fits,
        'family = "sdxl"\n' + DOG + STEPS + "[loss]\npos_embed_random_crop_rate = 0.2\n",
        [("DBS543", "error", ("loss", "pos_embed_random_crop_rate"))],
        'family = "sd3"\n' + DOG + STEPS + "[loss]\npos_embed_random_crop_rate = 0.2\n",
    ),
    (
        rules.pos_embed_crop_fits,
        'family = "sd3"\n'
        + DOG
        + STEPS
        + "[loss]\npos_embed_random_crop_rate = 0.2\n[precision]\ncompile = true\n",
        [("DBS544", "error", ("loss", "pos_embed_random_crop_rate"))],
        'family = "sd3"\n' + DOG + STEPS + "[precision]\ncompile = true\n",
    ),
    # model.scaled_pos_embed: kohya's scaled SD3 position tables, SD3 only, never compiled
    (
        rules.scaled_pos_embed_fits,
        'family = "flux"\nscaled_pos_embed = true\n' + DOG + STEPS,
        [("DBS550", "error", ("model", "scaled_pos_embed"))],
        'family = "sd3"\nscaled_pos_embed = true\n' + DOG + STEPS,
    ),
    (
        rules.scaled_pos_embed_fits,
        'family = "sd3"\nscaled_pos_embed = true\n' + DOG + STEPS + "[precision]\ncompile = true\n",
        [("DBS551", "error", ("model", "scaled_pos_embed"))],
        'family = "sd3"\n' + DOG + STEPS + "[precision]\ncompile = true\n",
    ),
    # precision.attention = "eager": a plain attention the family's registry names (none for SD3)
    (
        rules.eager_attention_fits,
        'family = "sd3"\n' + DOG + STEPS + '[precision]\nattention = "eager"\n',
        [("DBS547", "error", ("precision", "attention"))],
        'family = "flux"\n' + DOG + STEPS + '[precision]\nattention = "eager"\n',
    ),
    # DyLoRA: rank and conv_rank whole blocks of adapter.unit
    (
        rules.dylora_blocks_fit,
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 6\nunit = 4\nconv_rank = 8\n',
        [("DBS548", "error", ("adapter", "rank"))],
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nconv_rank = 8\n',
    ),
    (  # and each block's ranks (kohya --dim_from_weights, LyCORIS's file alphas)
        rules.dylora_blocks_fit,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nconv_rank = 8\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 4\nalpha = 1.0\nconv_rank = 2\n"
        + "[[adapter.text_encoder_blocks]]\npattern = 'layers'\nrank = 6\nalpha = 1.0\n",
        [
            ("DBS548", "error", ("adapter", "blocks", 0, "conv_rank")),
            ("DBS548", "error", ("adapter", "text_encoder_blocks", 0, "rank")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nconv_rank = 8\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 4\nalpha = 1.0\nconv_rank = 0\n"
        + "[[adapter.text_encoder_blocks]]\npattern = 'layers'\nrank = 12\nalpha = 1.0\n",
    ),
    (  # a text-encoder block's own unit: DyLoRA's only
        rules.block_unit_dylora,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'layers'\nrank = 8\nalpha = 1.0\nunit = 2\n",
        [("DBS584", "error", ("adapter", "text_encoder_blocks", 0, "unit"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'layers'\nrank = 6\nalpha = 1.0\nunit = 2\n",
    ),
    (  # a GLoRA adapter's alphas may be negative (GLoRAModule keeps the sign), its DyLoRA blocks' not (was a
        # LoRA block: LoRA / LoHa / LoKr blocks keep the sign too, as LyCORIS's modules do)
        rules.negative_block_alpha,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 8\nalpha = -4.0\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'full'\nrank = 4\nalpha = -1.0\n",
        [("DBS581", "error", ("adapter", "blocks", 0, "alpha"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 8\nalpha = -4.0\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nrank = 4\nalpha = -1.0\n"
        + "[[adapter.blocks]]\npattern = 'attn'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n",
    ),
    (  # a lora adapter's GLoRA blocks may be negative (a LyCORIS GLoRA entry's own alpha), its full ones
        # not (was its own blocks', then its DyLoRA ones': LoConModule and DyLoraModule keep the sign too)
        rules.negative_block_alpha,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'full'\nrank = 4\nalpha = 1.0\n"
        + "conv_alpha = -1.0\n",
        [("DBS581", "error", ("adapter", "blocks", 0, "conv_alpha"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'glora'\nrank = 4\nalpha = -2.0\n",
    ),
    (  # a block with its own unit (a LyCORIS map entry's block_size): its ranks are whole blocks of it
        rules.dylora_blocks_fit,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nconv_rank = 8\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 6\nalpha = 1.0\nconv_rank = 8\nunit = 4\n",
        [("DBS548", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nconv_rank = 8\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 6\nalpha = 1.0\nconv_rank = 8\nunit = 2\n",
    ),
    (  # blocks of kind "dylora" beside a LoKr adapter (LyCORIS's DyLoraModule): their own unit, needed
        rules.block_unit_dylora,
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 4\nalpha = 1.0\n"
        + "[[adapter.blocks]]\npattern = 'attn'\nkind = 'lora'\nrank = 4\nalpha = 1.0\nunit = 2\n",
        [
            ("DBS584", "error", ("adapter", "blocks", 0, "unit")),
            ("DBS584", "error", ("adapter", "blocks", 1, "unit")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 4\nalpha = 1.0\nunit = 2\n"
        + "[[adapter.text_encoder_blocks]]\npattern = 'mlp'\nkind = 'dylora'\nrank = 4\nalpha = 1.0\n"
        + "unit = 4\n",
    ),
    (  # and their ranks whole blocks of it
        rules.dylora_blocks_fit,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 6\nalpha = 1.0\nunit = 4\n",
        [("DBS548", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 8\nalpha = 1.0\nunit = 4\n",
    ),
    (  # DyLoRA blocks beside other kinds on Flux / SD3 / Chroma: one DyLoraModule per fused Linear, so
        # fused_projections (issue 12)
        rules.mixed_kinds_family,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 4\nalpha = 1.0\nunit = 4\n",
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 4\nalpha = 1.0\nunit = 4\n",
    ),
    (  # a DyLoRA adapter with blocks of other kinds on SD3: fused_projections too (issue 12)
        rules.mixed_kinds_family,
        'family = "sd3"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 2\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lokr'\nrank = 4\nalpha = 1.0\n",
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "sd3"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 2\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lokr'\nrank = 4\nalpha = 1.0\n",
    ),
    (  # a DyLoRA adapter's blocks of another kind (LyCORIS map entries on an algo=dylora network): their
        # ranks are not cut into blocks, and a unit of their own is refused
        rules.block_unit_dylora,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 6\nalpha = 1.0\nunit = 2\n",
        [("DBS584", "error", ("adapter", "blocks", 0, "unit"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 6\nalpha = 1.0\n"
        + "[[adapter.blocks]]\npattern = 'attn'\nrank = 6\nalpha = 1.0\nunit = 2\n",
    ),
    (
        rules.mixed_block_kinds,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 8\nmodule_dropout = 0.1\nbypass = true\ndropout = 0.1\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'mlp'\nkind = 'full'\nrank = 1\nalpha = 1.0\n",
        # module_dropout: each kind draws its own (issue 12); GLoRA's bypass and its dropout not the full
        # layers' (FullModule raises on bypass_mode)
        [("DBS578", "error", ("adapter", "dropout")), ("DBS578", "error", ("adapter", "bypass"))],
        # a GLoRA adapter's bypass and its dropout beside lora / loha / lokr blocks (issue 12): LyCORIS's
        # bypass Dropout on every module (rules.glora_bypass_inert; was DBS578 with the dropout)
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 8\nmodule_dropout = 0.1\nbypass = true\ndropout = 0.1\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 6\nalpha = 1.0\n",
    ),
    (  # a GLoRA / DyLoRA adapter's max_norm scales its LoCon / LoHa / LoKr / Diag-OFT / BOFT blocks alone
        rules.blocks_max_norm_scales_something,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 8\nmax_norm = 1.0\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'full'\nrank = 1\nalpha = 1.0\n",
        [("DBS610", "warning", ("adapter", "max_norm"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\nmax_norm = 1.0\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 6\nalpha = 1.0\n",
    ),
    (  # LyCORIS's max norm beside other kinds (issue 12); kohya's form has no other kinds
        rules.mixed_block_kinds,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\nmax_norm = 1.0\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 6\nalpha = 1.0\n",
        [("DBS578", "error", ("adapter", "max_norm"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank = 8\nmax_norm = 1.0\nmax_norm_form = "lycoris"\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 6\nalpha = 1.0\n",
    ),
    (
        rules.dylora_blocks_fit,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nrank = 6\nalpha = 1.0\n",
        [("DBS548", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lokr'\nrank = 6\nalpha = 1.0\n",
    ),
    # DyLoRA bypass: LyCORIS's bypass forward runs with one block per layer only
    (
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 8\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n',
        [("DBS549", "error", ("adapter", "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\nconv_rank = 4\ndylora_form = "lycoris"\n'
        + "bypass = true\n",
    ),
    (  # a block's rank of several blocks too
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 8\nalpha = 1.0\n",
        [("DBS549", "error", ("adapter", "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 4\nalpha = 3.0\n",
    ),
    (  # a DyLoRA's blocks of another kind (LyCORIS map entries) are not cut into blocks
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 8\nalpha = 1.0\n",
        [("DBS549", "error", ("adapter", "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"loha\"\nrank = 2\nalpha = 1.0\n",
    ),
    (  # a block's own bypass (a LyCORIS map entry's bypass_mode): its DyLoRA layers one block each too, and
        # the adapter's bypass no effect where every such block sets its own (issue 12)
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 8\nalpha = 1.0\nunit = 4\n"
        + 'bypass = "on"\n'
        + '[[adapter.blocks]]\npattern = \'down\'\nkind = "ia3"\nrank = 1\nalpha = 1.0\nbypass = "off"\n',
        [("DBS216", "warning", ("adapter", "bypass")), ("DBS549", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 4\nalpha = 1.0\nunit = 4\n"
        + 'bypass = "on"\n'
        + "[[adapter.blocks]]\npattern = 'down'\nkind = \"dylora\"\nrank = 8\nalpha = 1.0\nunit = 4\n",
    ),
    (  # a block's own bypass acts on a lora / loha / lokr adapter's Diag-OFT, BOFT, DyLoRA, IA^3 blocks only
        rules.block_own_bypass,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + '[[adapter.blocks]]\npattern = \'up\'\nkind = "glora"\nrank = 4\nalpha = 1.0\nbypass = "on"\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 4\nalpha = 1.0\nbypass = \"off\"\n",
        [
            ("DBS592", "error", ("adapter", "blocks", 0, "bypass")),
            ("DBS592", "error", ("adapter", "text_encoder_blocks", 0, "bypass")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = \'up\'\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "on"\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nkind = \"ia3\"\nrank = 1\nalpha = 1.0\n"
        + 'bypass = "off"\n',
    ),
    (  # ... and a dylora / glora adapter's blocks of those kinds other than its own (was DBS403 converted),
        # a dylora adapter's own (its network's own entries': was DBS403 converted), not a glora adapter's own
        rules.block_own_bypass,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 4\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 4\nalpha = 1.0\nbypass = \"on\"\n",
        [("DBS592", "error", ("adapter", "blocks", 0, "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = \'up\'\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "on"\n'
        + "[[adapter.blocks]]\npattern = 'down'\nrank = 4\nalpha = 1.0\nbypass = \"on\"\n"
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nkind = \"ia3\"\nrank = 1\nalpha = 1.0\n"
        + 'bypass = "off"\n',
    ),
    (  # ... and an ia3 adapter's own blocks (an algo=ia3 network's own entries': was DBS403 converted), and
        # a full / ia3 adapter's blocks of kind diag-oft / boft / dylora / ia3 (their entries': was DBS403);
        # not a full adapter's own (no bypass forward) nor its blocks of a kind without one
        rules.block_own_bypass,
        DOG
        + STEPS
        + '[adapter]\nkind = "full"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nbypass = \"on\"\n"
        + '[[adapter.blocks]]\npattern = \'down\'\nkind = "lokr"\nrank = 4\nalpha = 1.0\nbypass = "on"\n',
        [
            ("DBS592", "error", ("adapter", "blocks", 0, "bypass")),
            ("DBS592", "error", ("adapter", "blocks", 1, "bypass")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "ia3"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nbypass = \"on\"\n"
        + '[[adapter.blocks]]\npattern = \'down\'\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "on"\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 1\nalpha = 1.0\nbypass = \"off\"\n",
    ),
    (  # (a full adapter's blocks of those kinds)
        rules.block_own_bypass,
        DOG
        + STEPS
        + '[adapter]\nkind = "full"\n'
        + '[[adapter.blocks]]\npattern = \'up\'\nkind = "glora"\nrank = 4\nalpha = 1.0\nbypass = "off"\n',
        [("DBS592", "error", ("adapter", "blocks", 0, "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "full"\n'
        + "[[adapter.blocks]]\npattern = 'down'\nkind = \"dylora\"\nrank = 4\nalpha = 1.0\nunit = 4\n"
        + 'bypass = "on"\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nkind = \"boft\"\nrank = 2\nalpha = 0.0\n"
        + 'bypass = "off"\n',
    ),
    (  # ... and a diag-oft / boft adapter's own blocks (an algo=diag-oft / boft network's entries of its own
        # algorithm with their own bypass_mode; was DBS403 converted)
        rules.block_own_bypass,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nrank = 4\n'
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 4\nalpha = 1.0\nbypass = \"off\"\n",
        [("DBS592", "error", ("adapter", "text_encoder_blocks", 0, "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "boft"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nblock_size = 8\nbypass = \"off\"\n"
        + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nblock_size = 2\nbypass = \"on\"\n",
    ),
    (  # a DyLoRA adapter's own block with a bypass of its own: one block per layer where it is on (DBS549),
        # any where it is off (LyCORIS builds that entry's modules in the default forward)
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 8\nalpha = 1.0\nbypass = \"on\"\n",
        [("DBS549", "error", ("adapter", "blocks", 0, "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "dylora"\nrank = 4\nunit = 4\ndylora_form = "lycoris"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nrank = 8\nalpha = 1.0\nbypass = \"off\"\n"
        + "[[adapter.blocks]]\npattern = 'down'\nrank = 4\nalpha = 1.0\nbypass = \"on\"\n",
    ),
    (  # a GLoRA adapter's DyLoRA block with a bypass of its own: one block per layer (DBS549)
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 8\nalpha = 1.0\nunit = 4\n"
        + 'bypass = "on"\n',
        [("DBS549", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "glora"\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 4\nalpha = 1.0\nunit = 4\n"
        + 'bypass = "on"\n',
    ),
    (  # ... on Flux's fused layers too (was DBS582): each part in its block's forward; not a GLoRA block's
        rules.block_own_bypass,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = \'ff\'\nkind = "glora"\nrank = 4\nalpha = 1.0\nbypass = "on"\n',
        [("DBS592", "error", ("adapter", "blocks", 0, "bypass"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = \'ff\'\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nbypass = "on"\n',
    ),
    (  # a LoRA adapter's bypass: its Diag-OFT / BOFT / DyLoRA blocks' LyCORIS bypass forward, else nothing
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"glora\"\nrank = 4\nalpha = 1.0\n",
        [("DBS216", "warning", ("adapter", "bypass"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"diag-oft\"\nrank = 4\nalpha = 0.0\n",
    ),
    (  # ... DyLoRA blocks on fused layers too (was DBS578), one block per layer
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nbypass = true\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 8\nalpha = 1.0\nunit = 4\n",
        [("DBS549", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nbypass = true\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 4\nalpha = 1.0\nunit = 4\n",
    ),
    (  # ... a DyLoRA block of one block per layer only (LyCORIS's bypass forward)
        rules.dylora_bypass_runs,
        DOG
        + STEPS
        + '[adapter]\nkind = "loha"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 8\nalpha = 1.0\nunit = 4\n",
        [("DBS549", "error", ("adapter", "blocks", 0, "rank"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "loha"\nbypass = true\n'
        + "[[adapter.blocks]]\npattern = 'up'\nkind = \"dylora\"\nrank = 4\nalpha = 1.0\nunit = 4\n",
    ),
    # kohya's networks.oft (diag-oft form kohya): a block count, no LyCORIS rescale / bypass / max norm, no
    # text encoder; block_count only with that form
    (
        rules.kohya_oft_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "diag-oft"\nform = "kohya"\nrescaled = true\nbypass = true\nmax_norm = 1.0\n'
        + "rank_dropout = 0.1\n[train]\ntext_encoder = true\n",
        [
            ("DBS574", "error", ("adapter", "block_count")),
            ("DBS574", "error", ("adapter", "rescaled")),
            ("DBS574", "error", ("adapter", "bypass")),
            ("DBS574", "error", ("adapter", "max_norm")),
            ("DBS574", "error", ("adapter", "rank_dropout")),
            ("DBS574", "error", ("train", "text_encoder")),
        ],
        DOG + STEPS + '[adapter]\nkind = "diag-oft"\nform = "kohya"\nblock_count = 4\nconstraint = 0.001\n',
    ),
    (
        rules.kohya_oft_fits,
        DOG + STEPS + '[adapter]\nkind = "diag-oft"\nblock_count = 4\n',
        [("DBS574", "error", ("adapter", "block_count"))],
        DOG + STEPS + '[adapter]\nkind = "diag-oft"\nblock_size = 4\n',
    ),
    (  # per-layer block sizes (a LyCORIS preset file's dims) are LyCORIS's form's
        rules.kohya_oft_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "diag-oft"\nform = "kohya"\nblock_count = 4\n'
        + '[[adapter.blocks]]\npattern = "ff"\nblock_size = 8\n',
        [("DBS574", "error", ("adapter", "blocks"))],
        DOG + STEPS + '[adapter]\nkind = "diag-oft"\n[[adapter.blocks]]\npattern = "ff"\nblock_size = 8\n',
    ),
    (
        rules.split_chunk_options,  # only the first chunk steps / steps per micro-batch: chunks needed
        DOG + STEPS + '[optimizer]\nsplit_train = "first"\nsplit_first_step = "micro_batch"\n',
        [
            ("DBS554", "error", ("optimizer", "split_train")),
            ("DBS554", "error", ("optimizer", "split_first_step")),
        ],
        DOG + STEPS + '[optimizer]\nsplit = 2\nsplit_train = "first"\nsplit_first_step = "micro_batch"\n',
    ),
    (
        rules.scaled_fp16_gradients,  # still-scaled gradients: no bf16 weights, no clip; later chunks
        DOG + STEPS + '[precision]\nweights = "bf16"\nfp16_gradients = "scaled_first"\n',
        [
            ("DBS555", "error", ("precision", "fp16_gradients")),
            ("DBS555", "error", ("optimizer", "max_grad_norm")),
            ("DBS555", "error", ("precision", "fp16_gradients")),
        ],
        DOG
        + STEPS
        + '[optimizer]\nkind = "adafactor"\nmax_grad_norm = 0.0\n'
        + '[precision]\nmixed = "fp16"\nweights = "fp16"\n'
        + 'weights_rounding = "nearest"\nfp16_gradients = "scaled"\n',
    ),
    # adapter.fused_dropout (kohya's split_qkv draws) with no dropout to draw
    (
        rules.lycoris_rank_dropout_unfused,
        DOG + STEPS + LORA + 'fused_dropout = true\nrank_dropout = 0.1\nrank_dropout_form = "lycoris"\n',
        [("DBS573", "error", ("adapter", "rank_dropout_form"))],
        DOG + STEPS + LORA + 'rank_dropout = 0.1\nrank_dropout_form = "lycoris"\n',
    ),
    # a block's own Tucker form on a DoRA adapter: peft's DoRA refused, LyCORIS's weight decomposition taken
    # (each Tucker layer decomposed as LoConModule does: a dora_wd network's own use_tucker; was DBS579)
    (
        rules.block_scalar_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\ndora = true\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n',
        [("DBS579", "error", ("adapter", "blocks", 0, "tucker"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\ndora = true\ndora_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n',
    ),
    # a block's own Tucker form with LyCORIS's max norm (was DBS579: LoConModule / LohaModule.apply_max_norm
    # take the Tucker update, tests/runtime/test_lycoris_block_dora_max_norm.py), and a block's own scalar
    # (was DBS579: apply_max_norm multiplies use_scalar's trained scalar as it does the fixed one,
    # tests/runtime/test_lycoris_block_scalar_max_norm.py); not in kohya's form (it reads lora_up / lora_down
    # alone)
    (
        rules.block_scalar_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nmax_norm = 1.0\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
        [
            ("DBS579", "error", ("adapter", "blocks", 1, "scalar")),
            ("DBS579", "error", ("adapter", "blocks", 0, "tucker")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nmax_norm = 1.0\nmax_norm_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
    ),
    # a block's own Tucker form with LyCORIS's module and rank dropout (was DBS579: LoConModule draws as
    # without it, tests/runtime/test_lycoris_block_tucker_dropout.py); not with kohya's down dropout
    (
        rules.block_scalar_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nmodule_dropout = 0.1\ndown_dropout = 0.1\n'
        + 'rank_dropout = 0.1\nrank_dropout_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n',
        [("DBS579", "error", ("adapter", "blocks", 0, "tucker"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nmodule_dropout = 0.1\n'
        + 'rank_dropout = 0.1\nrank_dropout_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n',
    ),
    # a block's own LyCORIS scalar / LoCon Tucker form (map entries' use_scalar / use_tucker) with LoRA-FA
    (
        rules.block_scalar_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nfreeze_down = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\ntucker = "on"\n',
        [
            ("DBS579", "error", ("adapter", "blocks", 0, "scalar")),
            ("DBS579", "error", ("adapter", "blocks", 0, "tucker")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\ntucker = "on"\n',
    ),
    # a block's own LyCORIS weight decomposition (map entries' weight_decompose) in peft's form, with LoRA-FA
    (
        rules.block_dora_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfreeze_down = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
        [
            ("DBS583", "error", ("adapter", "blocks", 0, "dora")),
            ("DBS583", "error", ("adapter", "text_encoder_blocks", 0, "dora")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\ndora_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
    ),
    # LoConModule's row mask (rank_dropout_form "lycoris") on a LoCon network's layers, decomposed by their
    # block or not (was DBS583; tests/runtime/test_lycoris_block_dora_rank_dropout.py); kohya's form, or
    # beside blocks of other kinds, not
    (
        rules.block_dora_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\ndora_form = "lycoris"\nrank_dropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "loha"\nrank = 4\nalpha = 4.0\n',
        [("DBS583", "error", ("adapter", "blocks", 0, "dora"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\ndora_form = "lycoris"\nrank_dropout = 0.1\n'
        + 'rank_dropout_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora = "on"\ndora_axis = "input"\n',
    ),
    # a block's own weight-decomposition axis (map entries' wd_on_out) on decomposed layers: peft's form and
    # the other dropouts refused (on fused projections, was refused: its parts share one (1, in) magnitude
    # and module dropout's draw, tests/runtime/test_lycoris_flux_block_columns.py); on layers that do not
    # decompose it is nothing (issue 12)
    (
        rules.block_dora_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "loha"\ndora = true\nfused_projections = true\noutput_dropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora_axis = "input"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\ndora = "off"\n'
        + 'dora_axis = "input"\n',
        [
            ("DBS583", "error", ("adapter", "text_encoder_blocks", 0, "dora")),
            ("DBS583", "error", ("adapter", "blocks", 0, "dora_axis")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\ndora = true\ndora_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\ndora_axis = "input"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\ndora = "off"\n'
        + 'dora_axis = "input"\n',
    ),
    # a block's own weight decomposition beside blocks of other kinds: LoRA / LoHa / LoKr layers on the
    # U-Net families (each kind's pass decomposes its own, runtime/mixed_kinds.py; was DBS583), not on a
    # full block, which LyCORIS's FullModule never decomposes (issue 12)
    (
        rules.block_dora_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "conv"\nkind = "full"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
        [("DBS583", "error", ("adapter", "blocks", 1, "dora"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "conv"\nkind = "lora"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
    ),
    # a block's own tucker beside a block's own weight decomposition (a LyCORIS map entry with use_tucker and
    # weight_decompose on k x k convolutions; was DBS583): each layer's Tucker factors decomposed alone, as
    # LoConModule / LohaModule / LokrModule (tests/runtime/test_lycoris_block_dora.py); with LyCORIS's
    # max_norm too (was DBS583; tests/runtime/test_lycoris_block_dora_max_norm.py), not kohya's form, whose
    # networks.lora has no weight decomposition
    (
        rules.block_dora_fits,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\ndora_form = "lycoris"\nconv_rank = 4\nmax_norm = 1.0\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ndora = "on"\n',
        [("DBS583", "error", ("adapter", "blocks", 0, "dora"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nconv_rank = 4\nmax_norm = 1.0\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "loha"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n'
        + 'tucker = "on"\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "down"\nkind = "lora"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n'
        + 'tucker = "on"\ndora = "on"\n',
    ),
    # on a GLoRA / DyLoRA adapter (no dora of its own: a LyCORIS network's dora_wd reaches its LoCon / LoHa /
    # LoKr entries' modules, issue 12) the blocks of those kinds decompose, its own GLoRA / DyLoRA layers not
    # (GLoRAModule and DyLoraModule never read weight_decompose), a lone block of its kind neither
    *(
        (
            rules.block_dora_fits,
            DOG
            + STEPS
            + f'[adapter]\nkind = "{kind}"\n'
            + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + '[[adapter.blocks]]\npattern = "attn"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
            [
                ("DBS583", "error", ("adapter", "blocks", 1, "dora")),
                ("DBS583", "error", ("adapter", "text_encoder_blocks", 0, "dora")),
            ],
            DOG
            + STEPS
            + f'[adapter]\nkind = "{kind}"\n'
            + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nkind = "lokr"\nrank = 4\nalpha = 4.0\n'
            + 'dora = "on"\ndora_axis = "input"\n',
        )
        for kind in ("glora", "dylora")
    ),
    # ... and on Flux / SD3 / Chroma's runs of several kinds, each kind's fused Linears whole (was DBS583;
    # tests/runtime/test_lycoris_mixed_flow.py), a full block's not
    (
        rules.block_dora_fits,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\ndora = "on"\n',
        [("DBS583", "error", ("adapter", "blocks", 1, "dora"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\n',
    ),
    # module_dropout skips a decomposed LoHa / LoKr / LoRA layer's whole update (LohaModule / LokrModule /
    # LoConModule; a decomposed LoRA one was DBS583, a decomposed LoRA part of a fused layer too: its parts
    # share LoConModule's draw, tests/runtime/test_lycoris_mixed_flow_dropout.py), another kind's not
    (
        rules.block_dora_fits,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nmodule_dropout = 0.1\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "ia3"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
        [("DBS583", "error", ("adapter", "blocks", 1, "dora"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nmodule_dropout = 0.1\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
    ),
    # ... a GLoRA / DyLoRA adapter's LoRA / LoHa / LoKr blocks on Flux too (was DBS583 "fused_projections";
    # tests/runtime/test_lycoris_mixed_flow_glora.py, test_lycoris_mixed_flow_dylora.py), not its own kind's
    # layers (on fused layers a block's own axis, with module_dropout too, was DBS583:
    # tests/runtime/test_lycoris_flux_block_columns.py)
    *(
        (
            rules.block_dora_fits,
            'family = "flux"\n'
            + DOG
            + STEPS
            + f'[adapter]\nkind = "{kind}"\nfused_projections = true\n'
            + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + 'dora_axis = "input"\n'
            + '[[adapter.blocks]]\npattern = "attn"\nrank = 4\nalpha = 4.0\ndora = "on"\n',
            [("DBS583", "error", ("adapter", "blocks", 1, "dora"))],
            'family = "flux"\n'
            + DOG
            + STEPS
            + f'[adapter]\nkind = "{kind}"\nfused_projections = true\nmodule_dropout = 0.1\n'
            + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + 'dora_axis = "input"\n'
            + '[[adapter.blocks]]\npattern = "attn"\nkind = "lokr"\nrank = 4\nalpha = 4.0\ndora = "on"\n'
            + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nkind = "lora"\nrank = 4\nalpha = 4.0\n'
            + 'dora = "on"\n',
        )
        for kind in ("glora", "dylora")
    ),
    # a block's own LoKr factor (LyCORIS preset files' map entries) on another kind
    (
        rules.block_factor_lokr,
        DOG
        + STEPS
        + '[adapter]\nkind = "loha"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nfactor = 4\ndecompose_both = "off"\n'
        + 'rank_stabilized = "on"\n',
        [
            ("DBS576", "error", ("adapter", "blocks", 0, "factor")),
            ("DBS576", "error", ("adapter", "blocks", 0, "decompose_both")),
            ("DBS576", "error", ("adapter", "blocks", 0, "rank_stabilized")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nfactor = 4\n',
    ),
    # a block's own OFT row rescale (a LyCORIS map entry's `rescaled`, a --dim_from_weights file's `rescale`)
    # acts on blocks of kind diag-oft / boft only (issue 12)
    (
        rules.block_oft_rescaled,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 4.0\nrescaled = "on"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\nrescaled = "off"\n',
        [
            ("DBS591", "error", ("adapter", "blocks", 0, "rescaled")),
            ("DBS591", "error", ("adapter", "text_encoder_blocks", 0, "rescaled")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nrescaled = "on"\n',
    ),
    # a full adapter's [[adapter.blocks]] (ScaleBlock) too: a Diag-OFT / BOFT entry's own rescaled (issue 12)
    (
        rules.block_oft_rescaled,
        DOG + STEPS + '[adapter]\nkind = "full"\n'
        '[[adapter.blocks]]\npattern = "ff"\nkind = "lora"\nrank = 4\nalpha = 4.0\nrescaled = "on"\n',
        [("DBS591", "error", ("adapter", "blocks", 0, "rescaled"))],
        DOG + STEPS + '[adapter]\nkind = "full"\n'
        '[[adapter.blocks]]\npattern = "ff"\nkind = "boft"\nrank = 4\nalpha = 0.0\nrescaled = "on"\n',
    ),
    # a GLoRA / DyLoRA / full / IA^3 adapter's block's own scalar: on its LoRA / LoHa / LoKr blocks alone
    # (a LyCORIS map entry's use_scalar, issue 12)
    (
        rules.block_scalar_kind,
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 4\n'
        '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
        [("DBS625", "error", ("adapter", "blocks", 0, "scalar"))],
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 4\n'
        '[[adapter.blocks]]\npattern = "ff"\nkind = "lokr"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
    ),
    # a T-LoRA adapter's k x k convolutions: its blocks of other kinds' alone, on a U-Net (issue 12)
    (
        rules.tlora_block_conv,
        DOG + STEPS + '[adapter]\nkind = "tlora"\nrank = 4\nconv_targets = ["conv1"]\n'
        '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n',
        [("DBS633", "error", ("adapter", "blocks", 0, "conv_rank"))],
        DOG + STEPS + '[adapter]\nkind = "tlora"\nrank = 4\nconv_targets = ["conv1"]\n'
        '[[adapter.blocks]]\npattern = "resnets"\nkind = "lora"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n',
    ),
    (
        rules.tlora_block_conv,
        'family = "flux"\n' + DOG + STEPS + '[adapter]\nkind = "tlora"\nrank = 4\nconv_targets = ["proj"]\n',
        [("DBS633", "error", ("adapter", "conv_targets"))],
        DOG + STEPS + '[adapter]\nkind = "tlora"\nrank = 4\n',
    ),
    # a GLoRA adapter's own blocks take a scalar of their own (each GLoRA layer its block's: issue 12, was
    # DBS625), a T-LoRA adapter's own not
    (
        rules.block_scalar_kind,
        DOG + STEPS + '[adapter]\nkind = "tlora"\nrank = 4\n'
        '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
        [("DBS625", "error", ("adapter", "blocks", 0, "scalar"))],
        DOG + STEPS + '[adapter]\nkind = "glora"\nrank = 4\nscalar = true\n'
        '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nscalar = "off"\n',
    ),
    # a GLoRA adapter's [[adapter.blocks]] (GloraBlock) too: a Diag-OFT / BOFT entry's own rescaled (issue 12)
    (
        rules.block_oft_rescaled,
        DOG + STEPS + '[adapter]\nkind = "glora"\nrank = 4\n'
        '[[adapter.blocks]]\npattern = "ff"\nkind = "lora"\nrank = 4\nalpha = 4.0\nrescaled = "on"\n',
        [("DBS591", "error", ("adapter", "blocks", 0, "rescaled"))],
        DOG + STEPS + '[adapter]\nkind = "glora"\nrank = 4\n'
        '[[adapter.blocks]]\npattern = "ff"\nkind = "diag-oft"\nrank = 4\nalpha = 0.0\nrescaled = "on"\n',
    ),
    # a DyLoRA adapter's block's own Tucker form: on its LoCon / LoHa / LoKr blocks (a LyCORIS map entry's
    # use_tucker, issue 12), not its own DyLoRA layers
    (
        rules.block_factor_lokr,
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 4\nconv_rank = 4\n'
        '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nconv_rank = 4\ntucker = "on"\n',
        [("DBS576", "error", ("adapter", "blocks", 0, "tucker"))],
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 4\nconv_rank = 4\n'
        '[[adapter.blocks]]\npattern = "resnets"\nkind = "loha"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n'
        'tucker = "on"\n',
    ),
    # ... and on the U-Net families alone (checked against LyCORIS there; issue 12)
    (
        rules.mixed_kinds_family,
        'family = "flux"\n' + DOG + STEPS + '[adapter]\nkind = "glora"\nfused_projections = true\n'
        '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\ntucker = "on"\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "tucker"))],
        'family = "flux"\n' + DOG + STEPS + '[adapter]\nkind = "glora"\nfused_projections = true\n'
        '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\n',
    ),
    # a block's own rank-dropout rescale (a LyCORIS map entry's) off LoHa / LoKr and LyCORIS's LoRA masks
    # (LoHa's with the bypass dropouts: each layer's draw takes its block's rescale, issue 12)
    (
        rules.block_rank_dropout_scale,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank_dropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nrank_dropout_scale = "on"\n',
        [("DBS580", "error", ("adapter", "blocks", 0, "rank_dropout_scale"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank_dropout = 0.1\nrank_dropout_form = "lycoris"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nrank_dropout_scale = "on"\n',
    ),
    (
        rules.block_rank_dropout_scale,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nrank_dropout = 0.1\nrank_dropout_form = "kohya"\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = 4\nalpha = 4.0\n'
        + 'rank_dropout_scale = "on"\n',
        [("DBS580", "error", ("adapter", "text_encoder_blocks", 0, "rank_dropout_scale"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "loha"\nrank_dropout = 0.1\noutput_dropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nrank_dropout_scale = "on"\n',
    ),
    (
        rules.block_rank_dropout_scale,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nrank = 4\nalpha = 4.0\nrank_dropout_scale = "off"\n',
        [("DBS580", "error", ("adapter", "blocks", 0, "rank_dropout_scale"))],
        DOG + STEPS + '[adapter]\nkind = "lora"\n',
    ),
    # blocks of another kind (LyCORIS preset maps' algo) with an option one kind lacks (issue 12)
    (
        rules.mixed_block_kinds,
        # the adapter's dora beside other kinds: each LoRA / LoHa / LoKr layer's (runtime/mixed_kinds.py;
        # issue 12), on Flux's fused layers too (was DBS578)
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\ndora = true\nrank_dropout = 0.1\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "lora"\nrank = 4\nalpha = 4.0\n',
        [("DBS578", "error", ("adapter", "rank_dropout"))],
        # module_dropout: each kind's layers draw as their LyCORIS class does (runtime/mixed_kinds.py)
        DOG
        + STEPS
        # a lokr adapter's full_matrix (its LoKr layers' alone), a starting file (runtime/mixed_init.py) and
        # module_dropout (each kind's module draws its own)
        + '[adapter]\nkind = "lokr"\ndecompose_both = true\nfull_matrix = true\nmodule_dropout = 0.1\n'
        + 'init_weights = "prev.safetensors"\ndora = true\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "lora"\nrank = 4\nalpha = 4.0\n',
    ),
    (  # a block's own Tucker form in a run of several kinds: LoCon, LoHa and LoKr blocks' only (issue 12)
        rules.mixed_block_kinds,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "full"\nrank = 1\nalpha = 1.0\ntucker = "on"\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "tucker"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nconv_rank = 4\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "loha"\nrank = 4\nalpha = 4.0\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nkind = "lora"\nrank = 4\nalpha = 4.0\nconv_rank = 4\n'
        + 'tucker = "on"\n'
        + '[[adapter.blocks]]\npattern = "downsamplers"\nkind = "loha"\nrank = 4\nalpha = 4.0\n'
        + 'conv_rank = 4\ntucker = "on"\n'
        + '[[adapter.blocks]]\npattern = "upsamplers"\nrank = 4\nalpha = 4.0\nconv_rank = 2\ntucker = "on"\n',
    ),
    (  # a LoCon block's own Tucker form with fused_projections; a LoHa / LoKr block's beside other kinds on
        # SD3's patch convolution builds as LyCORIS does (was DBS596, issue 12)
        rules.block_scalar_fits,
        'family = "sd3"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 4\nalpha = 1.0\n"
        + "[[adapter.blocks]]\npattern = 'pos_embed'\nrank = 4\nalpha = 1.0\nconv_rank = 2\n"
        + "tucker = 'on'\n",
        [("DBS579", "error", ("adapter", "blocks", 1, "tucker"))],
        'family = "sd3"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nconv_rank = 4\nfused_projections = true\n'
        + "[[adapter.blocks]]\npattern = 'ff'\nkind = 'loha'\nrank = 4\nalpha = 1.0\n"
        + "[[adapter.blocks]]\npattern = 'pos_embed'\nkind = 'lokr'\nrank = 4\nalpha = 1.0\nconv_rank = 2\n"
        + "tucker = 'on'\n",
    ),
    (  # a block's own LoKr split or rs_lora on LoRA layers in a run of several kinds; a LoKr block's own
        # split, rs_lora and scalar, a LoRA block's scalar: each kind built alone (issue 12, was DBS578)
        rules.mixed_block_kinds,
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "lokr"\nrank = 4\nalpha = 4.0\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nfactor = 4\n'
        + 'rank_stabilized = "on"\n',
        [
            ("DBS578", "error", ("adapter", "blocks", 1, "rank_stabilized")),
            ("DBS578", "error", ("adapter", "blocks", 1, "factor")),
        ],
        DOG
        + STEPS
        + '[adapter]\nkind = "lora"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "lokr"\nrank = 4\nalpha = 4.0\nfactor = 4\n'
        + 'rank_stabilized = "on"\nfull_matrix = "on"\nscalar = "on"\n'
        + '[[adapter.blocks]]\npattern = "resnets"\nrank = 4\nalpha = 4.0\nscalar = "on"\n',
    ),
    (  # a lora / loha / lokr adapter's init_scale scales its full blocks' start from the file only
        rules.init_scale_without_full_blocks,
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\ninit_scale = 2.0\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\n',
        [("DBS588", "warning", ("adapter", "init_scale"))],
        DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\ninit_scale = 2.0\ninit_weights = "prev.safetensors"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\n',
    ),
    (  # LyCORIS's BOFT beside other kinds on Flux: one module per fused Linear (its blocks shared by the
        # parts: runtime/lycoris_boft.py), so fused_projections
        rules.mixed_kinds_family,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "boft"\nrank = 4\nalpha = 4.0\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "boft"\nrank = 4\nalpha = 4.0\n',
    ),
    (  # LyCORIS's DyLoRA beside other kinds on Flux: one module per fused Linear (its down blocks and draw
        # shared by the parts: runtime/dylora.py tie_fused_dylora), so fused_projections
        rules.mixed_kinds_family,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "dylora"\nrank = 4\nalpha = 4.0\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "dylora"\nrank = 4\nalpha = 4.0\nunit = 2\n',
    ),
    (  # LyCORIS's full algo (IA^3 alike) beside other kinds on Flux / SD3: one module per fused Linear
        rules.mixed_kinds_family,
        'family = "sd3"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "ia3"\nrank = 1\nalpha = 1.0\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\n'
        + '[[adapter.blocks]]\npattern = "ff"\nkind = "ia3"\nrank = 1\nalpha = 1.0\n',
    ),
    (  # full / IA^3 blocks (Diag-OFT, BOFT, GLoRA alike) use the float weight: no quantised base (issue 12);
        # the cast backend leaves the denoiser's full blocks' layers float (kohya's --fp8_base after apply_to)
        rules.block_kinds_quantized,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "ia3"\nrank = 1\nalpha = 1.0\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nkind = "full"\nrank = 1\nalpha = 1.0\n'
        + '[precision]\nquantize_denoiser = "fp8"\nquantize_text_encoder = "fp8"\n'
        + 'quantize_backend = "cast"\n',
        [
            ("DBS522", "error", ("adapter", "blocks", 0, "kind")),
            ("DBS522", "error", ("adapter", "text_encoder_blocks", 0, "kind")),
        ],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 1\nalpha = 1.0\n'
        + '[precision]\nquantize_denoiser = "fp8"\nquantize_backend = "cast"\n',
    ),
    (  # several kinds on Chroma's fused layers as on Flux: a full block needs fused_projections there too
        rules.mixed_kinds_family,
        'family = "chroma"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 4\nalpha = 4.0\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "chroma"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "lokr"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "full"\nrank = 4\nalpha = 4.0\n',
    ),
    (  # a GLoRA's blocks of other kinds on Flux: one module per fused Linear, fused_projections (issue 12)
        rules.mixed_kinds_family,
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "glora"\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\n',
        [("DBS578", "error", ("adapter", "blocks", 0, "kind"))],
        'family = "flux"\n'
        + DOG
        + STEPS
        + '[adapter]\nkind = "glora"\nfused_projections = true\n'
        + '[[adapter.blocks]]\npattern = "attn"\nkind = "lora"\nrank = 4\nalpha = 4.0\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "fc1"\nkind = "lokr"\nrank = 4\nalpha = 4.0\n',
    ),
    (
        rules.fused_dropout_draws,
        DOG + STEPS + LORA + "fused_dropout = true\n",
        [("DBS553", "warning", ("adapter", "fused_dropout"))],
        DOG + STEPS + LORA + "fused_dropout = true\nmodule_dropout = 0.1\n",
    ),
    (
        rules.start_given_twice,
        DOG + STEPS + "start_step = 10\nstart_epoch = 2\n",
        [("DBS561", "error", ("schedule", "start_epoch"))],
        DOG + STEPS + "start_epoch = 2\n",
    ),
    (
        rules.start_settings_inert,
        DOG + STEPS + 'skip_data = true\nstart_lr = "start_step"\nstart_epoch = 1\n',
        [("DBS562", "warning", ("schedule", "skip_data")), ("DBS562", "warning", ("schedule", "start_lr"))],
        DOG + STEPS + 'skip_data = true\nstart_lr = "start_step"\nstart_step = 10\n',
    ),
    (
        rules.optimizer_blocks_apply,
        DOG + STEPS + LORA + "[[optimizer.blocks]]\npattern = '^mid_block\\.'\nlr = 1e-6\n",
        [("DBS563", "error", ("optimizer", "blocks"))],
        DOG + STEPS + "[[optimizer.blocks]]\npattern = '^mid_block\\.'\nlr = 1e-6\n",
    ),
    # adapter.max_norm (kohya's scale_weight_norms): kohya's plain LoRA only, whole weights on each process
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + "max_norm = 1.0\nscalar = true\n",
        [("DBS558", "error", ("adapter", "max_norm"))],
        DOG + STEPS + LORA + "max_norm = 1.0\n",
    ),
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + "max_norm = 1.0\nconv_rank = 4\ntucker = true\ndora = true\n",
        [("DBS558", "error", ("adapter", "max_norm"))],
        DOG + STEPS + LORA + "max_norm = 1.0\nconv_rank = 4\n",
    ),
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + 'max_norm = 1.0\nmax_norm_form = "lycoris"\nfreeze_down = true\n',
        [("DBS558", "error", ("adapter", "max_norm"))],
        DOG
        + STEPS
        + LORA
        + 'max_norm = 1.0\nmax_norm_form = "lycoris"\nscalar = true\nconv_rank = 4\ntucker = true\n',
    ),
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + 'max_norm = 1.0\nmax_norm_form = "lycoris"\ndora = true\n',
        [("DBS558", "error", ("adapter", "max_norm"))],
        DOG
        + STEPS
        + LORA
        + 'max_norm = 1.0\nmax_norm_form = "lycoris"\ndora = true\ndora_form = "lycoris"\n',
    ),
    (  # LoCon's, LoHa's and LoKr's rank-dropout mask is drawn inside the norm (runtime/max_norm.py)
        rules.max_norm_fits,
        DOG + STEPS + LORA + 'max_norm = 1.0\nmax_norm_form = "lycoris"\nrank_dropout = 0.2\ndora = true\n',
        [("DBS558", "error", ("adapter", "max_norm"))],
        DOG + STEPS + LORA + 'max_norm = 1.0\nmax_norm_form = "lycoris"\nrank_dropout = 0.2\n',
    ),
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + 'max_norm = 1.0\n[distributed]\nstrategy = "fsdp"\n',
        [("DBS559", "error", ("adapter", "max_norm"))],
        DOG + STEPS + LORA + 'max_norm = 1.0\n[distributed]\nstrategy = "ddp"\n',
    ),
    (
        rules.max_norm_fits,
        DOG + STEPS + LORA + 'max_norm = 0.5\n[distributed]\nstrategy = "deepspeed"\n',
        [("DBS559", "error", ("adapter", "max_norm"))],
        DOG + STEPS + LORA + 'max_norm = 0.0\n[distributed]\nstrategy = "deepspeed"\n',
    ),
    # adapter.freeze_down (LoRA-FA): plain LoRA only
    (
        rules.freeze_down_fits,
        DOG + STEPS + LORA + "freeze_down = true\ndora = true\n",
        [("DBS560", "error", ("adapter", "freeze_down"))],
        DOG + STEPS + LORA + "freeze_down = true\n",
    ),
    (
        rules.ggpo_fits,
        DOG + STEPS + LORA + "ggpo = true\ndora = true\n",
        [("DBS566", "error", ("adapter", "ggpo"))],
        DOG + STEPS + LORA + "ggpo = true\n",
    ),
    (
        rules.t5_needs_lora,
        DOG + STEPS + '[adapter]\nkind = "none"\n[train]\nt5 = true\n',
        [("DBS568", "error", ("train", "t5"))],
        DOG + STEPS + '[adapter]\nkind = "ia3"\n[train]\nt5 = true\n',
    ),
    (
        rules.t5_needs_lora,
        DOG + STEPS + '[adapter]\nkind = "dylora"\ndylora_form = "kohya"\n[train]\nt5 = true\n',
        [("DBS568", "error", ("train", "t5"))],
        DOG + STEPS + '[adapter]\nkind = "dylora"\ndylora_form = "lycoris"\n[train]\nt5 = true\n',
    ),
    (
        rules.t5_idle_needs_t5_layers,
        DOG + STEPS + LORA + '[train]\nt5 = true\nt5_idle = "kohya"\n',
        [("DBS600", "error", ("train", "t5_idle"))],
        DOG + STEPS + LORA + '[train]\nt5_idle = "kohya"\n',
    ),
    (
        rules.t5_idle_needs_t5_layers,
        DOG + STEPS + '[adapter]\nkind = "diag-oft"\nform = "kohya"\n[train]\nt5_idle = "kohya"\n',
        [("DBS600", "error", ("train", "t5_idle"))],
        DOG + STEPS + '[adapter]\nkind = "glora"\n[train]\nt5_idle = "kohya"\n',
    ),
    # a full adapter's exclude patterns (LyCORIS full files without some layers' modules)
    (
        rules.adapter_block_patterns,
        DOG + STEPS + '[adapter]\nkind = "full"\nexclude = ["^proj_out$", "(("]\n',
        [("DBS265", "error", ("adapter", "exclude", 1))],
        DOG + STEPS + '[adapter]\nkind = "full"\nexclude = ["^proj_out$"]\n',
    ),
    (
        rules.third_text_encoder_lr_inert,
        DOG + STEPS + LORA + "[optimizer]\ntext_encoder_3_lr = 1e-5\n",
        [("DBS572", "warning", ("optimizer", "text_encoder_3_lr"))],
        DOG + STEPS + LORA + "[optimizer]\ntext_encoder_3_lr = 1e-5\n[train]\nt5 = true\n",
    ),
    # a dataset's eval_split (kohya's per-dataset validation_split) where no split splits it
    (
        rules.dataset_eval_split_applies,
        DOG + "eval_split = 0.5\n" + STEPS,
        [("DBS570", "error", ("datasets", 0, "eval_split"))],
        DOG + "eval_split = 0.5\n" + STEPS + "[evaluation]\nsplit = 0.2\n",
    ),
    (
        rules.dataset_eval_split_applies,
        DOG + "eval_seed = 5\n" + STEPS,
        [("DBS570", "error", ("datasets", 0, "eval_seed"))],
        DOG + "eval_seed = 5\n" + STEPS + "[evaluation]\nsplit = 0.2\n",
    ),
    # kohya's validation loader order: only of a split, capped by max_batches
    (
        rules.loader_order_applies,
        DOG + STEPS + '[evaluation]\norder = "kohya_loader"\nholdout = 1\nmax_images = 1\n',
        [("DBS216", "warning", ("evaluation", "order")), ("DBS216", "warning", ("evaluation", "max_images"))],
        DOG + STEPS + '[evaluation]\norder = "kohya_loader"\nsplit = 0.2\nmax_batches = 1\n',
    ),
    (
        rules.loader_order_applies,
        DOG + STEPS + "[evaluation]\nsplit = 0.2\nmax_batches = 1\n",
        [("DBS216", "warning", ("evaluation", "max_batches"))],
        DOG + STEPS + "[evaluation]\nsplit = 0.2\nmax_images = 1\n",
    ),
    # evaluation.score = false (kohya train_db.py's split): nothing held out, a loss setting it turns off
    (
        rules.unscored_evaluation,
        DOG + STEPS + "[evaluation]\nscore = false\nbands = 2\n",
        [("DBS571", "warning", ("evaluation", "score")), ("DBS571", "warning", ("evaluation", "bands"))],
        DOG + STEPS + "[evaluation]\nscore = false\nsplit = 0.2\n",
    ),
    (
        rules.adapter_block_rates,
        DOG + STEPS + LORA + "[[adapter.blocks]]\npattern = '^mid_block\\.'\nrank = 4\nalpha = 1.0\n"
        "lr = 1e-3\nlr_scale = 0.5\n",
        [("DBS564", "error", ("adapter", "blocks", 0, "lr"))],
        DOG + STEPS + LORA + "[[adapter.blocks]]\npattern = '^mid_block\\.'\nrank = 4\nalpha = 1.0\n"
        "lr = 1e-3\n",
    ),
    # a text-encoder block's rate (kohya Flux network_reg_lrs on CLIP-L / T5-XXL): lr or lr_scale, on
    # LoRA / LoHa / LoKr layers of a text encoder that trains
    (
        rules.text_encoder_block_rates,
        DOG + STEPS + LORA + "[[adapter.text_encoder_blocks]]\npattern = '^text_encoder\\.'\nrank = 4\n"
        "alpha = 1.0\nlr = 1e-4\nlr_scale = 0.5\n[[adapter.text_encoder_blocks]]\npattern = 'fc1'\n"
        'rank = 4\nalpha = 1.0\nlr_scale = 0\nkind = "full"\n[train]\ntext_encoder = true\n',
        [
            ("DBS599", "error", ("adapter", "text_encoder_blocks", 0, "lr")),
            ("DBS599", "error", ("adapter", "text_encoder_blocks", 1, "lr_scale")),
        ],
        DOG + STEPS + LORA + "[[adapter.text_encoder_blocks]]\npattern = '^text_encoder\\.'\nrank = 4\n"
        "alpha = 1.0\nlr = 1e-4\n[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 4\n"
        "alpha = 1.0\nlr_scale = 0\n[train]\ntext_encoder = true\n",
    ),
    (
        rules.text_encoder_block_rates,
        DOG + STEPS + LORA + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 4\nalpha = 1.0\n"
        "lr_scale = 0.5\n",
        [("DBS599", "error", ("adapter", "text_encoder_blocks", 0, "lr_scale"))],
        DOG + STEPS + LORA + "[[adapter.text_encoder_blocks]]\npattern = 'fc1'\nrank = 4\nalpha = 1.0\n",
    ),
    # a block held at lr_scale 0 (kohya network_reg_lrs at rate 0) has no group; a block of another kind
    # is held alike (runtime/blocks.py splits every kind's `lora_` weights)
    (
        rules.held_adapter_blocks,
        DOG + STEPS + LORA + "[[adapter.blocks]]\npattern = '^mid_block\\.'\nrank = 4\nalpha = 1.0\n"
        'lr_scale = 0\ngroup = "mid"\n[[adapter.blocks]]\npattern = "^up"\nrank = 4\nalpha = 1.0\n'
        'lr_scale = 0\nkind = "ia3"\n',
        [("DBS593", "error", ("adapter", "blocks", 0, "lr_scale"))],
        DOG + STEPS + LORA + "[[adapter.blocks]]\npattern = '^mid_block\\.'\nrank = 4\nalpha = 1.0\n"
        'lr_scale = 0\n[[adapter.blocks]]\npattern = "^up"\nrank = 4\nalpha = 1.0\nlr_scale = 0\n'
        'kind = "ia3"\n',
    ),
    # an update scaled by 0 (LyCORIS's DyLoRA alpha buffer a file set to 0): a DyLoRA adapter's own layers
    (
        rules.zero_scale_blocks,
        DOG + STEPS + '[adapter]\nkind = "glora"\nrank = 4\n[[adapter.text_encoder_blocks]]\n'
        "pattern = 'fc1'\nrank = 4\nalpha = 1.0\nzero_scale = true\n[train]\ntext_encoder = true\n",
        [("DBS617", "error", ("adapter", "text_encoder_blocks", 0, "zero_scale"))],
        DOG + STEPS + '[adapter]\nkind = "dylora"\nrank = 4\nmodule_dropout = 0.1\n[[adapter.blocks]]\n'
        "pattern = 'attn1'\nrank = 4\nalpha = 0.0\nzero_scale = true\n",
    ),
]


def test_ggpo_refuses_split_parts_and_warns_on_shares_without_it():
    assert hits_of(rules.ggpo_fits, DOG + STEPS + LORA + "ggpo = true\nfused_dropout = true\n") == [
        ("DBS566", "error", ("adapter", "ggpo"))
    ]
    fsdp = '[distributed]\nstrategy = "fsdp"\n'
    assert hits_of(rules.ggpo_fits, DOG + STEPS + fsdp + LORA + "ggpo = true\n") == [
        ("DBS566", "error", ("adapter", "ggpo"))
    ]
    assert hits_of(rules.ggpo_fits, DOG + STEPS + LORA + "ggpo_beta = 0.02\n") == [
        ("DBS567", "warning", ("adapter", "ggpo_beta"))
    ]


def test_an_eval_split_needs_an_instance_dataset_the_split_names():
    two = DOG + DOG.replace('"dog"', '"cat"', 1) + "eval_split = 0.5\n" + STEPS
    assert hits_of(
        rules.dataset_eval_split_applies, two + '[evaluation]\nsplit = 0.2\nsplit_datasets = ["dog"]\n'
    ) == [("DBS570", "error", ("datasets", 1, "eval_split"))]
    klass = DOG + DOGS + "eval_split = 0.5\n" + STEPS + "[evaluation]\nsplit = 0.2\n"
    assert hits_of(rules.dataset_eval_split_applies, klass) == [
        ("DBS570", "error", ("datasets", 1, "eval_split"))
    ]


def test_optimizer_blocks_refuse_what_they_cannot_combine_with():
    block = "[[optimizer.blocks]]\npattern = '^mid_block\\.'\nlr = 0.0\n"
    assert hits_of(
        rules.optimizer_blocks_apply, DOG + STEPS + "[train]\ndenoiser = false\ntext_encoder = true\n" + block
    )
    # optimizer.split cuts the block groups into kohya's chunks (--block_lr with --fused_optimizer_groups)
    assert not hits_of(rules.optimizer_blocks_apply, DOG + STEPS + "[optimizer]\nsplit = 2\n" + block)
    bad = "[[optimizer.blocks]]\npattern = '(mid'\nlr = 1e-6\n"
    assert hits_of(rules.optimizer_blocks_apply, DOG + STEPS + bad) == [
        ("DBS563", "error", ("optimizer", "blocks", 0, "pattern"))
    ]


@pytest.mark.parametrize(("rule", "bad", "expected", "good"), CASES, ids=[c[0].__name__ for c in CASES])
def test_rule_fires_on_the_broken_spec(rule, bad, expected, good):
    assert hits_of(rule, bad) == expected


@pytest.mark.parametrize(("rule", "bad", "expected", "good"), CASES, ids=[c[0].__name__ for c in CASES])
def test_rule_is_silent_on_the_nearest_valid_spec(rule, bad, expected, good):
    assert hits_of(rule, good) == []


def test_every_rule_has_a_case():
    assert {rule.__name__ for rule in rules_of("spec", "plan")} == {case[0].__name__ for case in CASES}


@pytest.mark.parametrize("good", sorted({case[3] for case in CASES}))
def test_the_valid_specs_pass_every_rule_but_their_known_warnings(good):
    """The nearest valid specs are valid for all rules, not only their own (no error from any rule)."""
    data = tomli.loads(HEAD + good)
    spec, _ = structure_spec(data)
    hits = run_spec_rules(spec, given_in(data)) + run_plan_rules(spec, given_in(data), spec.schedule.steps)
    errors = [h for h in hits if h.severity == "error"]
    assert errors == []


def test_hits_carry_a_message_and_a_known_severity():
    for rule, bad, _, _ in CASES:
        data = tomli.loads(HEAD + bad)
        spec, _ = structure_spec(data)
        for hit in run_one(rule, spec, given_in(data)):
            assert hit.message and hit.severity in ("error", "warning")
            assert hit.code.startswith(("DBS2", "DBS5", "DBS6"))  # DBS5xx, DBS6xx: DBS2xx continued


# --- DBS225: the output folder overlaps an input (a path rule: it needs the spec file's location) -----------
def overlaps(tmp_path, body: str) -> list[str]:
    spec_file = tmp_path / "project" / "spec.toml"
    spec, problems = structure_spec(tomli.loads(HEAD + body))
    assert problems == [], problems
    return [h.message for h in rules.output_overlaps_inputs(spec, spec_file)]


EVERYTHING = (
    'it contains the spec file spec.toml, contains datasets[0].path "data/dog", contains '
    'datasets[0].masks "masks", contains cache.dir "cache"'
)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (".", EVERYTHING),
        ("/", EVERYTHING),
        ("data/dog", 'it is datasets[0].path "data/dog"'),
        ("data/dog/out", 'it is inside datasets[0].path "data/dog"'),
        ("data", 'it contains datasets[0].path "data/dog"'),
        ("masks/x", 'it is inside datasets[0].masks "masks"'),
        ("cache/out", 'it is inside cache.dir "cache"'),
        ("../project/data/./dog", 'it is datasets[0].path "data/dog"'),  # another spelling of the same folder
    ],
)
def test_output_overlapping_an_input_is_an_error_naming_both(tmp_path, output, expected):
    body = DOG + 'masks = "masks"\n' + STEPS + f'[cache]\ndir = "cache"\n[output]\ndir = "{output}"\n'
    found = overlaps(tmp_path, body)
    assert found == [f'output.dir "{output}" overlaps the run\'s inputs: {expected}']


def test_output_reached_through_a_symlink_is_compared_as_its_target(tmp_path):
    (tmp_path / "project" / "data" / "dog").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "project" / "data")
    found = overlaps(tmp_path, DOG + STEPS + f'[output]\ndir = "{tmp_path / "link" / "dog" / "out"}"\n')
    assert len(found) == 1 and found[0].endswith('it is inside datasets[0].path "data/dog"')


@pytest.mark.parametrize("output", ["output", "../outputs/dog", "data/dog-out", "cache-out"])
def test_output_beside_the_inputs_is_fine(tmp_path, output):
    body = DOG + 'masks = "masks"\n' + STEPS + f'[cache]\ndir = "cache"\n[output]\ndir = "{output}"\n'
    assert overlaps(tmp_path, body) == []


# --- DBS379: W&B logging needs the wandb package (a path rule: it looks at this machine) --------------------
def wandb_hits(tmp_path, body: str) -> list[tuple[str, str, tuple, str]]:
    spec, problems = structure_spec(tomli.loads(HEAD + DOG + STEPS + body))
    assert problems == [], problems
    return [(h.code, h.severity, h.path, h.help) for h in rules.wandb_installed(spec, tmp_path / "spec.toml")]


def test_wandb_logging_without_wandb_installed_is_an_error_naming_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own way to make a package unimportable
    found = wandb_hits(tmp_path, "[logging]\nwandb = true\n")
    assert [f[:3] for f in found] == [("DBS379", "error", ("logging", "wandb"))]
    assert "pip install wandb" in found[0][3]
    assert wandb_hits(tmp_path, "[logging]\nwandb = false\n") == []


def test_wandb_logging_with_wandb_installed_is_fine(tmp_path):
    pytest.importorskip("wandb")
    assert wandb_hits(tmp_path, "[logging]\nwandb = true\n") == []


# --- phases: every rule declares one, and each runner runs exactly its phase's rules ------------------------
def test_every_rule_function_declares_a_phase():
    """A module-level function yielding Hits with a rule's signature is registered with a phase."""
    import inspect

    found = {
        name
        for name, fn in inspect.getmembers(rules, inspect.isfunction)
        if fn.__module__ == rules.__name__
        and inspect.signature(fn).return_annotation == "Iterator[Hit]"
        and not name.startswith("_")
    }
    assert found == set(PHASE_OF)
    assert {PHASE_OF[fn.__name__] for fn in rules_of("paths")} == {"paths"}
    assert [fn.__name__ for fn in rules_of("paths")] == [
        "output_overlaps_inputs",
        "identifier_tokens",
        "wandb_installed",
    ]
    assert [fn.__name__ for fn in rules_of("plan")] == [
        "text_encoder_stop_beyond_run",
        "interval_beyond_run",
        "warmup_covers_run",
        "warmup_stable_decay_lengths",
        "one_cycle_lengths",
        "scheduled_sampling_ramp_beyond_run",
        "pivotal_stop_beyond_run",
    ]


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="phase"):
        rules.rule("later")


def test_plan_rules_run_at_check_time_only_when_the_spec_gives_steps(tmp_path):
    body = TE + "text_encoder_stop_step = 100\n" + DOG
    for schedule, expected in ((STEPS, ["DBS202"]), ("[schedule]\nepochs = 2\n", [])):
        data = tomli.loads(HEAD + body + schedule)
        spec, problems = structure_spec(data)
        assert problems == []
        hits = check_rules(spec, given_in(data), tmp_path / "spec.toml")
        assert [h.code for h in hits if h.code in ("DBS202", "DBS204")] == expected


def test_adamw8bit_needs_a_cuda_or_cpu_target():
    spec, _ = structure_spec(tomli.loads(HEAD + DOG + STEPS + '[optimizer]\nkind = "adamw8bit"\n'))
    mps = TargetEnv(device="mps", memory_bytes=8 << 30, bf16=False)
    cpu = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=False)
    cuda = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
    assert [(h.code, h.path) for h in run_environment_rules(spec, mps)] == [("DBS343", ("optimizer", "kind"))]
    assert run_environment_rules(spec, cuda) == run_environment_rules(spec, cpu) == []


@pytest.mark.parametrize("kind", ["paged_adamw", "paged_adamw8bit", "paged_ademamix", "paged_ademamix8bit"])
def test_paged_optimizers_warn_on_the_cpu_and_need_cuda_or_cpu(kind):
    """bitsandbytes pages optimizer state on CUDA only: the CPU plan says it runs the unpaged optimizer
    (DBS314, a warning); MPS has no bitsandbytes (DBS343)."""
    spec, _ = structure_spec(tomli.loads(HEAD + DOG + STEPS + f'[optimizer]\nkind = "{kind}"\n'))
    mps = TargetEnv(device="mps", memory_bytes=8 << 30, bf16=False)
    cpu = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=False)
    cuda = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
    assert [(h.code, h.path) for h in run_environment_rules(spec, mps)] == [("DBS343", ("optimizer", "kind"))]
    on_cpu = run_environment_rules(spec, cpu)
    assert [(h.code, h.severity) for h in on_cpu] == [("DBS314", "warning")]
    assert "unpaged" in on_cpu[0].message and kind in on_cpu[0].message
    assert run_environment_rules(spec, cuda) == []


def test_compile_is_refused_on_the_cpu():
    spec, _ = structure_spec(tomli.loads(HEAD + DOG + STEPS + "[precision]\ncompile = true\n"))
    cpu = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=False)
    cuda = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
    assert [(h.code, h.path) for h in run_environment_rules(spec, cpu)] == [
        ("DBS336", ("precision", "compile"))
    ]
    assert run_environment_rules(spec, cuda) == []


def test_bf16_weights_need_a_bf16_target():
    spec, _ = structure_spec(tomli.loads(HEAD + DOG + STEPS + '[precision]\nweights = "bf16"\n'))
    old = TargetEnv(device="cuda", memory_bytes=16 << 30, bf16=False, compute_capability="7.5")
    ampere = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.6")
    assert [(h.code, h.path) for h in run_environment_rules(spec, old)] == [
        ("DBS355", ("precision", "weights"))
    ]
    assert run_environment_rules(spec, ampere) == []


def test_clip_i_without_a_subject_prompt_warns():
    body = (
        DOG
        + DOGS
        + STEPS
        + '[validation]\nprompts = ["a photo of a dog"]\n[evaluation]\nmetrics = ["clip_i"]\n'
    )
    assert hits_of(rules.evaluation_subject_words, body) == [("DBS279", "warning", ("validation", "prompts"))]


def test_an_unsettled_identifier_is_an_error_naming_the_identifier_key():
    body = DOG + STEPS + PROMPTS + '[evaluation]\nmetrics = ["dino"]\n'  # no class prompt to compare with
    assert hits_of(rules.evaluation_subject_words, body) == [
        ("DBS276", "error", ("evaluation", "identifier"))
    ]
    assert hits_of(rules.evaluation_subject_words, body + 'identifier = "ohwx"\n') == []


# --- [distributed] against the target (DBS319, DBS328, DBS329) ----------------------------------------------
def _distributed_hits(body: str, env: TargetEnv) -> list[tuple[str, str, tuple]]:
    spec, problems = structure_spec(tomli.loads(HEAD + DOG + STEPS + "[distributed]\n" + body))
    assert problems == []
    return [(h.code, h.severity, h.path) for h in run_environment_rules(spec, env) if h.code[3] == "3"]


def test_distributed_strategies_against_the_target():
    gpus = TargetEnv(device="cuda", memory_bytes=80 << 30, bf16=True, compute_capability="9.0", processes=8)
    one_gpu = attrs.evolve(gpus, processes=1)
    cpus = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=True, processes=2)
    mps = TargetEnv(device="mps", memory_bytes=32 << 30, bf16=True)
    strategy = ("distributed", "strategy")
    assert _distributed_hits('strategy = "deepspeed"\nzero_stage = 3', gpus) == []
    assert _distributed_hits('strategy = "fsdp"', cpus) == []  # FSDP2 runs on the CPU with gloo
    assert _distributed_hits('strategy = "deepspeed"', cpus) == [("DBS328", "error", strategy)]
    assert _distributed_hits('strategy = "deepspeed"', mps) == [("DBS328", "error", strategy)]
    assert _distributed_hits('strategy = "fsdp"', mps) == [("DBS328", "error", strategy)]
    assert _distributed_hits('strategy = "fsdp"', one_gpu) == [("DBS319", "warning", strategy)]
    assert _distributed_hits('strategy = "fsdp"\nfsdp_cpu_offload = true', cpus) == [
        ("DBS329", "warning", ("distributed", "fsdp_cpu_offload"))
    ]
    assert _distributed_hits("fsdp_cpu_offload = true", one_gpu) == []  # DDP: one process is no warning


def _messages_of(rule, body: str) -> list[str]:
    data = tomli.loads(HEAD + body)
    spec, problems = structure_spec(data)
    assert problems == [], problems
    return [h.message for h in run_one(rule, spec, given_in(data))]


def test_denoiser_at_rate_zero_warns_where_it_holds_and_refuses_what_cannot_hold_it():
    """optimizer.lr = 0: a warning (DBS229) with a training text encoder at its own rate and an optimizer that
    steps by the group's rate; DBS200 without a denoiser, a training text encoder, or with an optimizer that
    estimates its own step (or averages iterates by the rate)."""
    rule, opt = rules.held_at_rate_zero, "[optimizer]\nlr = 0\ntext_encoder_lr = 1e-6\n"
    assert hits_of(rule, DOG + STEPS + TE + opt) == [("DBS229", "warning", ("optimizer", "lr"))]
    assert hits_of(rule, DOG + STEPS + TE + opt + "max_grad_norm = 0\n") == [
        ("DBS229", "warning", ("optimizer", "lr"))
    ]
    assert hits_of(rule, DOG + STEPS + opt) == [("DBS200", "error", ("optimizer", "lr"))]
    frozen = "[train]\ntext_encoder = true\ndenoiser = false\n"
    assert hits_of(rule, DOG + STEPS + frozen + opt) == [("DBS200", "error", ("optimizer", "lr"))]
    zero_te = "[optimizer]\nlr = 0\ntext_encoder_lr = 0\n"
    assert hits_of(rule, DOG + STEPS + TE + zero_te) == [
        ("DBS200", "error", ("optimizer", "text_encoder_lr"))
    ]
    for kind in ("prodigy", "dadapt_adam", "dadapt_adan", "dadapt_lion", "came", "prodigy_plus_schedulefree"):
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS200", "error", ("optimizer", "lr"))], kind
    # why: the constructor refuses lr 0 as kohya builds it, or the step moves a group at rate 0 anyway
    said = {
        k: _messages_of(rule, DOG + STEPS + TE + opt + f'kind = "{k}"\n')
        for k in ("dadapt_sgd", "dadapt_lion")
    }
    assert "raises ValueError for lr 0" in said["dadapt_sgd"][0]
    assert "d x the largest group's rate" in said["dadapt_lion"][0]
    # dadaptation allows a group at rate 0 beside the others' common rate: no DBS274 on top of DBS200
    assert hits_of(rules.dadapt_group_rates, DOG + STEPS + TE + opt + 'kind = "dadapt_lion"\n') == []
    prodigy = _messages_of(rule, DOG + STEPS + TE + opt + 'kind = "prodigy"\n')[0]
    assert "ValueError" in prodigy and "kohya's run stops there too" in prodigy
    # the schedulefree classes hold a group at rate 0 (averaging weight 0, a step of 0 x its gradient)
    for kind in ("adamw_schedulefree", "sgd_schedulefree", "radam_schedulefree"):
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\nschedulefree_warmup_steps = 5\n'
        assert hits_of(rule, body) == [("DBS229", "warning", ("optimizer", "lr"))], kind
        assert "averaging weight of 0" in _messages_of(rule, body)[0]
    body = DOG + STEPS + TE + opt + 'kind = "adafactor"\nrelative_step = true\n'
    assert hits_of(rule, body) == [("DBS200", "error", ("optimizer", "lr"))]
    for kind in ("adamw", "sgd", "lion", "adafactor", "adamw8bit"):
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS229", "warning", ("optimizer", "lr"))], kind
    # a LoRA's denoiser adapters at rate 0: the same, and DBS215 (lr very low for LoRA) stays silent
    assert hits_of(rules.lora_learning_rate, DOG + STEPS + LORA + TE + opt) == []


def test_a_denoiser_kept_at_rate_zero_moves_as_the_schedule_moves_it():
    """optimizer.denoiser_at_zero = "keep" (kohya train_db.py's U-Net at learning_rate 0 under a schedule
    that lifts it): DBS606 where the schedule (or DAdaptLion, Adafactor's relative step) moves the denoiser,
    naming why; DBS229 where nothing does (OneCycleLR at a max_lr of 0 for it); still DBS200 where the class
    refuses lr 0 when built (kohya's run stops there too); DBS608 where nothing is at rate 0 to keep."""
    rule, where = rules.held_at_rate_zero, ("optimizer", "lr")
    opt = "[optimizer]\nlr = 0\ntext_encoder_lr = 1e-6\n"
    keep = 'denoiser_at_zero = "keep"\n'
    for schedule, why in (
        ('lr_schedule = "cosine_annealing"\neta_min = 1e-7\n', "lifts the LR to eta_min 1e-07"),
        ('lr_schedule = "one_cycle"\nmax_lr = 1e-4\n', "(max_lr 0.0001)"),
        ('lr_schedule = "cyclic"\nbase_lr = 1e-7\nmax_lr = 1e-5\n', "(base_lr 1e-07, max_lr 1e-05)"),
        ('lr_schedule = "one_cycle"\nmax_lr = { denoiser = 2e-5, text_encoder = 1e-6 }\n', "(max_lr 2e-05)"),
    ):
        body = DOG + TE + opt + "[schedule]\nsteps = 100\n" + schedule
        assert hits_of(rule, body) == [("DBS200", "error", where)], schedule
        said = _messages_of(rule, body)[0]
        assert "the denoiser would move" in said and why in said, said
        assert 'denoiser_at_zero = "keep"' in run_one(rule, *_structured(body))[0].help
        assert hits_of(rule, DOG + TE + opt + keep + "[schedule]\nsteps = 100\n" + schedule) == [
            ("DBS606", "warning", where)
        ], schedule
        said = _messages_of(rule, DOG + TE + opt + keep + "[schedule]\nsteps = 100\n" + schedule)[0]
        assert 'optimizer.lr is 0 with denoiser_at_zero = "keep": the denoiser' in said and why in said
    # OneCycleLR at max_lr 0 for the denoiser (its own rate, 0) holds it: nothing moves it
    for bounds in ("", "max_lr = { denoiser = 0, text_encoder = 1e-6 }\n"):
        body = DOG + TE + opt + keep + '[schedule]\nsteps = 100\nlr_schedule = "one_cycle"\n' + bounds
        assert hits_of(rule, body) == [("DBS229", "warning", where)], bounds
    assert hits_of(rule, DOG + STEPS + TE + opt + keep) == [("DBS229", "warning", where)]
    # the classes that move a group at rate 0 whatever its rate: kept, DBS606
    for kind, more, why in (
        ("adafactor", "relative_step = true\n", "relative_step"),
        ("dadapt_lion", "", "d x the largest group's rate"),
    ):
        body = DOG + STEPS + TE + opt + keep + f'kind = "{kind}"\n' + more
        assert hits_of(rule, body) == [("DBS606", "warning", where)], kind
        assert why in _messages_of(rule, body)[0], kind
    # the classes that refuse lr 0 when built stay refused: keep cannot run them
    for kind in ("prodigy", "dadapt_adam", "dadapt_sgd", "came"):
        body = DOG + STEPS + TE + opt + keep + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS200", "error", where)], kind
    inert, path = rules.at_zero_inert, ("optimizer", "denoiser_at_zero")
    assert hits_of(inert, DOG + STEPS + TE + opt + keep) == []
    moving = "[optimizer]\nlr = 1e-4\n" + keep
    assert hits_of(inert, DOG + STEPS + TE + moving) == [("DBS608", "warning", path)]
    assert "optimizer.lr is not 0" in _messages_of(inert, DOG + STEPS + TE + moving)[0]


def test_the_denoiser_kept_at_rate_zero_trains_alone_where_the_schedule_lifts_it():
    """kohya train_db.py's U-Net at learning_rate 0 with no text encoder, under an eta_min above 0 or
    OneCycleLR / CyclicLR bounds above 0: one group the schedule lifts, so the U-Net trains on it alone.
    With optimizer.denoiser_at_zero = "keep" that is DBS606 (was DBS200); without it DBS200 says to keep it;
    where nothing lifts it, or the class refuses lr 0, it stays DBS200."""
    rule, where = rules.held_at_rate_zero, ("optimizer", "lr")
    opt, keep = "[optimizer]\nlr = 0\n", 'denoiser_at_zero = "keep"\n'
    for schedule, why in (
        ('lr_schedule = "cosine_annealing"\neta_min = 1e-7\n', "lifts the LR to eta_min 1e-07"),
        ('lr_schedule = "one_cycle"\nmax_lr = 1e-4\n', "(max_lr 0.0001)"),
        ('lr_schedule = "cyclic"\nbase_lr = 1e-7\nmax_lr = 1e-5\n', "(base_lr 1e-07, max_lr 1e-05)"),
    ):
        steps = "[schedule]\nsteps = 100\n" + schedule
        assert hits_of(rule, DOG + opt + steps) == [("DBS200", "error", where)], schedule
        said = _messages_of(rule, DOG + opt + steps)[0]
        assert "no text encoder trains" in said and "on the schedule alone" in said and why in said, said
        assert 'denoiser_at_zero = "keep"' in run_one(rule, *_structured(DOG + opt + steps))[0].help
        assert hits_of(rule, DOG + opt + keep + steps) == [("DBS606", "warning", where)], schedule
        assert why in _messages_of(rule, DOG + opt + keep + steps)[0]
        assert hits_of(rules.at_zero_inert, DOG + opt + keep + steps) == []
    # nothing lifts it: a run that changes nothing, keep or not
    for body in (
        DOG + STEPS + opt + keep,
        DOG + opt + keep + '[schedule]\nsteps = 100\nlr_schedule = "one_cycle"\n',
    ):
        assert hits_of(rule, body) == [("DBS200", "error", where)]
        assert "a run that changes nothing" in _messages_of(rule, body)[0]
    # a class that refuses lr 0 when built (kohya's run stops too)
    body = (
        DOG
        + opt
        + keep
        + 'kind = "prodigy"\n[schedule]\nsteps = 100\nlr_schedule = "one_cycle"\nmax_lr = 1e-4\n'
    )
    assert hits_of(rule, body) == [("DBS200", "error", where)]


def test_a_text_encoder_at_rate_zero_warns_where_it_holds_and_refuses_what_cannot_hold_it():
    """optimizer.text_encoder_lr = 0 with the denoiser training (kohya networks.lora_fa's text-encoder group
    kept at rate 0): DBS229 names the cost; DBS200 where nothing else trains, or where the optimizer or the
    schedule would move it. The optimizer is built at the denoiser's positive rate, so CAME (which scales its
    update and decay by the group's rate) holds it; D-Adaptation's classes and Prodigy share one step size."""
    rule, opt = rules.held_at_rate_zero, "[optimizer]\nlr = 1e-4\ntext_encoder_lr = 0\n"
    path = ("optimizer", "text_encoder_lr")
    assert hits_of(rule, DOG + STEPS + TE + opt) == [("DBS229", "warning", path)]
    said = _messages_of(rule, DOG + STEPS + TE + opt)[0]
    assert said.startswith("the text encoder(s) train at learning rate 0: their weights never move")
    assert "clipped together with the denoiser's to max_grad_norm 1" in said
    unclipped = _messages_of(rule, DOG + STEPS + TE + opt + "max_grad_norm = 0\n")[0]
    assert "train.text_encoder = false would give the same run, cheaper" in unclipped
    # nothing else trains at a positive rate: refused
    frozen = "[train]\ntext_encoder = true\ndenoiser = false\n"
    assert hits_of(rule, DOG + STEPS + frozen + opt) == [("DBS200", "error", path)]
    assert "a run that changes nothing" in _messages_of(rule, DOG + STEPS + frozen + opt)[0]
    # optimizers that step a group at rate 0 anyway (not: they refuse lr 0, which is the denoiser's here):
    # D-Adaptation's and Prodigy's as dbspec/compiler/zero_group.py says (tests/runtime/test_optim_zero_group)
    moving = {
        "prodigy": "weight decay (0.01)",  # the spec's default weight_decay, decoupled in Prodigy
        "dadapt_adam": "decouple = true",
        "dadapt_adan": "the first group's rate",
        "dadapt_lion": "whatever its own",
        "dadapt_sgd": "momentum",
    }
    settings = {"dadapt_adam": "decouple = true\n", "dadapt_sgd": "momentum = 0.9\n"}
    for kind, why in moving.items():
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\n' + settings.get(kind, "")
        assert hits_of(rule, body) == [("DBS200", "error", path)], kind
        said = _messages_of(rule, body)[0]
        assert "ValueError" not in said and why in said, (kind, said)
    # ... and the ones that hold it to the bit with d estimated from the denoiser's group alone
    holding = {
        "prodigy": "weight_decay = 0\n",
        "dadapt_adam": "weight_decay = 0.1\n",  # coupled: it only adds to the gradient
        "dadapt_adam_preprint": "decouple = true\n",  # its decoupled decay skips a group at rate 0
        "dadapt_sgd": "",
    }
    for kind, more in holding.items():
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\n' + more
        assert hits_of(rule, body) == [("DBS229", "warning", path)], kind
    relative = DOG + STEPS + TE + opt + 'kind = "adafactor"\nrelative_step = true\n'
    assert hits_of(rule, relative) == [("DBS200", "error", path)]
    for kind in ("adamw", "came", "lion", "sgd", "adafactor", "adamw8bit", "adamw_schedulefree"):
        body = DOG + STEPS + TE + opt + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS229", "warning", path)], kind
    # schedules that set or lift every group's rate
    lifting = (
        'lr_schedule = "cosine_annealing"\neta_min = 1e-7\n',
        'lr_schedule = "one_cycle"\nmax_lr = 1e-4\n',
        'lr_schedule = "cyclic"\nbase_lr = 1e-6\n',
        'lr_schedule = "one_cycle"\nmax_lr = { denoiser = 1e-4, text_encoder = 1e-5 }\n',
    )
    for schedule in lifting:
        body = DOG + TE + opt + "[schedule]\nsteps = 100\n" + schedule
        assert hits_of(rule, body) == [("DBS200", "error", path)], schedule
        assert "the text encoder would move" in _messages_of(rule, body)[0]
    # OneCycleLR / CyclicLR at bounds of 0 for the group (max_lr 0: its own rate, 0; or a peak of 0) hold it
    holding_schedules = (
        'lr_schedule = "one_cycle"\n',
        'lr_schedule = "one_cycle"\nmax_lr_zero = "literal"\n',
        'lr_schedule = "cyclic"\n',
        'lr_schedule = "one_cycle"\nmax_lr = { denoiser = 1e-4, text_encoder = 0 }\n',
    )
    for schedule in holding_schedules:
        body = DOG + TE + opt + "[schedule]\nsteps = 100\n" + schedule
        assert hits_of(rule, body) == [("DBS229", "warning", path)], schedule
    # text_encoder_at_zero = "keep": the group stays at rate 0 and moves as kohya networks.lora_fa's does
    # (DBS606 says how), except where the groups' order changes the run (compiler/zero_group.py)
    keep = 'text_encoder_at_zero = "keep"\n'
    for kind, more, why in (
        ("prodigy", "", "weight decay (0.01)"),
        ("dadapt_adam", "decouple = true\n", "decouple = true"),
        ("dadapt_sgd", "momentum = 0.9\n", "momentum"),
        ("adafactor", "relative_step = true\n", "relative_step"),
    ):
        body = DOG + STEPS + TE + opt + keep + f'kind = "{kind}"\n' + more
        assert hits_of(rule, body) == [("DBS606", "warning", path)], kind
        assert why in _messages_of(rule, body)[0], kind
    for kind in ("dadapt_lion", "dadapt_adan", "dadapt_adagrad", "dadapt_adan_ip"):
        body = DOG + STEPS + TE + opt + keep + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS200", "error", path)], kind
        assert "the groups' order changes that run" in _messages_of(rule, body)[0], kind
        said = 'group_order = "text_encoders_first" is kohya' in _messages_of(rule, body)[0]
        assert said == (kind == "dadapt_lion"), kind
    # in kohya's group order (the text encoders' first) DAdaptLion's kept group is kohya's run (DBS606 says
    # how it moves); the first-group-rate classes train nothing there: still refused
    first = keep + 'group_order = "text_encoders_first"\n'
    body = DOG + STEPS + TE + opt + first + 'kind = "dadapt_lion"\n'
    assert hits_of(rule, body) == [("DBS606", "warning", path)]
    assert "whatever its own" in _messages_of(rule, body)[0]
    for kind in ("dadapt_adan", "dadapt_adagrad", "dadapt_adan_ip"):
        body = DOG + STEPS + TE + opt + first + f'kind = "{kind}"\n'
        assert hits_of(rule, body) == [("DBS200", "error", path)], kind
    # the split cuts the groups in dbspec's own order
    split = rules.group_order_with_split
    for chunks, hits in ((2, [("DBS602", "error", ("optimizer", "group_order"))]), (1, [])):
        body = DOG + STEPS + f'[optimizer]\ngroup_order = "text_encoders_first"\nsplit = {chunks}\n'
        assert hits_of(split, body) == hits, chunks
    body = (
        DOG + TE + opt + keep + '[schedule]\nsteps = 100\nlr_schedule = "cosine_annealing"\neta_min = 1e-7\n'
    )
    assert hits_of(rule, body) == [("DBS606", "warning", path)]
    assert "lifts the LR to eta_min 1e-07" in _messages_of(rule, body)[0]
    # OneCycleLR moves the kept group where its max_lr is above 0 (DBS606 names the bound), not at 0: held
    cycle = DOG + TE + opt + keep + '[schedule]\nsteps = 100\nlr_schedule = "one_cycle"\n'
    assert hits_of(rule, cycle + "max_lr = 1e-4\n") == [("DBS606", "warning", path)]
    assert "(max_lr 0.0001)" in _messages_of(rule, cycle + "max_lr = 1e-4\n")[0]
    for bounds in ("", "max_lr = { denoiser = 1e-4, text_encoder = 0 }\n"):
        assert hits_of(rule, cycle + bounds) == [("DBS229", "warning", path)], bounds
    # where nothing moves it, "keep" is the held text encoder: DBS229
    assert hits_of(rule, DOG + STEPS + TE + opt + keep) == [("DBS229", "warning", path)]
    inert = rules.at_zero_inert
    assert hits_of(inert, DOG + STEPS + TE + opt + keep) == []
    moving = "[optimizer]\nlr = 1e-4\ntext_encoder_lr = 1e-5\n" + keep
    assert hits_of(inert, DOG + STEPS + TE + moving) == [
        ("DBS608", "warning", ("optimizer", "text_encoder_at_zero"))
    ]
    assert hits_of(inert, DOG + STEPS + moving) == [
        ("DBS608", "warning", ("optimizer", "text_encoder_at_zero"))
    ]
    # SDXL's second encoder alone at 0 (its own key), the first training: the fix names it
    second = "[optimizer]\nlr = 1e-4\ntext_encoder_lr = 1e-5\ntext_encoder_2_lr = 0\n"
    assert hits_of(rule, DOG + STEPS + TE + second) == [
        ("DBS229", "warning", ("optimizer", "text_encoder_2_lr"))
    ]
    hit = run_one(rule, *_structured(DOG + STEPS + TE + second))[0]
    assert hit.message.startswith("the second text encoder trains at") and "train.text_encoder_2" in hit.help
    # the denoiser and the first text encoder held, the second training: two warnings
    both = "[optimizer]\nlr = 0\ntext_encoder_lr = 0\ntext_encoder_2_lr = 1e-5\n"
    assert hits_of(rule, DOG + STEPS + TE + both) == [
        ("DBS229", "warning", ("optimizer", "lr")),
        ("DBS229", "warning", ("optimizer", "text_encoder_lr")),
    ]


def _structured(body: str):
    data = tomli.loads(HEAD + body)
    spec, problems = structure_spec(data)
    assert problems == [], problems
    return spec, given_in(data)


def test_dylora_trains_in_one_process_only():
    """DBS384: with several processes each would draw its own blocks (DDP expects the same gradients)."""
    spec, problems = structure_spec(tomli.loads(HEAD + DOG + STEPS + '[adapter]\nkind = "dylora"\n'))
    assert problems == []
    gpus = TargetEnv(device="cuda", memory_bytes=80 << 30, bf16=True, compute_capability="9.0", processes=2)
    hits = [(h.code, h.path) for h in run_environment_rules(spec, gpus) if h.code == "DBS384"]
    assert hits == [("DBS384", ("adapter", "kind"))]
    one = attrs.evolve(gpus, processes=1)
    assert not [h for h in run_environment_rules(spec, one) if h.code == "DBS384"]


def test_an_adapter_blocks_own_rate_needs_a_training_denoiser():
    block = "[[adapter.blocks]]\npattern = '^mid_block\\.'\nrank = 4\nalpha = 1.0\nlr = 1e-3\n"
    frozen = "[train]\ndenoiser = false\ntext_encoder = true\n"
    assert hits_of(rules.adapter_block_rates, DOG + STEPS + LORA + block + frozen) == [
        ("DBS564", "error", ("adapter", "blocks", 0, "lr"))
    ]


def _group_rate_hits(body: str, family: str = "auto") -> list[tuple[str, str, tuple]]:
    """DBS274 on a T5 family's spec (`family` spelled out, or "auto" as `dbspec check` sees it)."""
    return [(h.code, h.severity, h.path) for h in _group_rate_hit_objects(body, family)]


def _group_rate_hit_objects(body: str, family: str = "auto") -> list:
    head = f'spec_version = 2\n[model]\nbase = "builtin:tiny-flux"\nfamily = "{family}"\n'
    data = tomli.loads(head + LORA + DOG + STEPS + body)
    spec, problems = structure_spec(data)
    assert problems == [], problems
    return list(rules.dadapt_group_rates(spec, given_in(data)))


T5_ONLY = '[train]\nt5 = true\ntext_encoder_idle = "kohya"\n[optimizer]\nkind = "prodigy"\nlr = 1.0\n'
T5_BLOCK = '[[adapter.text_encoder_blocks]]\npattern = "encoder.block.0"\nrank = 4\nalpha = 4.0\nlr = {}\n'


@pytest.mark.parametrize("family", ["auto", "flux", "sd3", "chroma"])
def test_group_rates_see_t5_groups_while_clip_is_idle(family):
    """train.t5 with CLIP idle: T5-XXL's group is the only text-encoder group (runtime param_groups), at
    text_encoder_lr on every family while text_encoder_2_lr / 3_lr are not given, and its
    text_encoder_blocks' own rates split it; Prodigy refuses the second rate."""
    block = ("adapter", "text_encoder_blocks", 0, "lr")
    assert _group_rate_hits(T5_ONLY + T5_BLOCK.format(0.5), family) == [("DBS274", "error", block)]
    assert _group_rate_hits(T5_ONLY + T5_BLOCK.format(1.0), family) == []
    te_lr = ("optimizer", "text_encoder_lr")
    assert _group_rate_hits(T5_ONLY + "text_encoder_lr = 0.5\n", family) == [("DBS274", "error", te_lr)]
    assert _group_rate_hits(T5_ONLY.replace("t5 = true", "t5 = false") + "text_encoder_lr = 0.5\n") == []


def test_group_rates_of_the_t5_encoder_follow_the_family():
    """T5-XXL trains at Flux's text_encoder_2_lr, SD3's text_encoder_3_lr, Chroma's text_encoder_lr: each
    family sees its own key; "auto" (`dbspec check`) leaves them to the compiler."""
    second, third = T5_ONLY + "text_encoder_2_lr = 0.5\n", T5_ONLY + "text_encoder_3_lr = 0.5\n"
    assert _group_rate_hits(second, "flux") == [("DBS274", "error", ("optimizer", "text_encoder_2_lr"))]
    assert _group_rate_hits(third, "sd3") == [("DBS274", "error", ("optimizer", "text_encoder_3_lr"))]
    # Chroma's only encoder is T5-XXL, at text_encoder_lr; SD3's CLIP-G is idle here, but its T5-XXL's
    # text_encoder_3_lr defaults to text_encoder_2_lr: 0.5, a group of its own (_third_text_encoder_lr),
    # named by the key the user wrote (issue 12: it named the unset text_encoder_3_lr)
    assert _group_rate_hits(second, "chroma") == []
    assert _group_rate_hits(second, "sd3") == [("DBS274", "error", ("optimizer", "text_encoder_2_lr"))]
    assert _group_rate_hits(second) == _group_rate_hits(third) == []


def test_group_rates_name_the_key_a_derived_rate_takes():
    """SD3's T5-XXL group at text_encoder_3_lr, not set: DBS274 points at text_encoder_2_lr, which the user
    wrote, and says the odd rate is text_encoder_3_lr's, derived from it; with nothing written along the
    chain (text_encoder_3_lr -> text_encoder_2_lr -> text_encoder_lr -> lr) it names lr."""
    second = T5_ONLY + "text_encoder_2_lr = 0.5\n"
    [hit] = _group_rate_hit_objects(second, "sd3")
    assert hit.path == ("optimizer", "text_encoder_2_lr")
    assert "`optimizer.text_encoder_3_lr`, not set, which takes `optimizer.text_encoder_2_lr`'s value" in (
        hit.message
    )
    [hit] = _group_rate_hit_objects(T5_ONLY + "text_encoder_3_lr = 0.5\n", "sd3")
    assert hit.path == ("optimizer", "text_encoder_3_lr") and "not set" not in hit.message
    given = {("optimizer", "text_encoder_2_lr")}
    assert rules._written_rate(("optimizer", "text_encoder_3_lr"), given.__contains__) == (
        "optimizer",
        "text_encoder_2_lr",
    )
    assert rules._written_rate(("optimizer", "text_encoder_3_lr"), set().__contains__) == ("optimizer", "lr")
    assert rules._written_rate(("adapter", "blocks", 0, "lr"), set().__contains__) == (
        "adapter",
        "blocks",
        0,
        "lr",
    )


def test_group_rates_count_full_blocks_and_pivotal_tokens():
    """A full fine-tune's [[optimizer.blocks]] and the pivotal tokens' group are groups of the same
    optimizer (runtime/setup.py): their rates count."""
    body = '[optimizer]\nkind = "dadapt_adam"\nlr = 1.0\n'
    blocks = '[[optimizer.blocks]]\npattern = "^down_blocks"\nlr = 0.5\n'
    full = DOG + STEPS + body + blocks
    assert hits_of(rules.dadapt_group_rates, full) == [("DBS274", "error", ("optimizer", "blocks", 0, "lr"))]
    assert hits_of(rules.dadapt_group_rates, full.replace("lr = 0.5", "lr = 1.0")) == []
    pivotal = '[pivotal]\ntokens = ["<s0>"]\nlr = 0.5\n'
    hits = hits_of(rules.dadapt_group_rates, LORA + DOG + STEPS + body + pivotal)
    assert hits == [("DBS274", "error", ("pivotal", "lr"))]


def test_the_plan_checks_group_rates_with_the_detected_family(tmp_path):
    """family = "auto": `dbspec check` cannot tell whose rate text_encoder_2_lr is; the compiler runs DBS274
    again with the detected family (Flux: T5-XXL's group at text_encoder_2_lr)."""
    from PIL import Image

    from dbspec.frontend import check_spec, plan_spec

    (tmp_path / "dog").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 20, 30)).save(tmp_path / "dog" / f"{i}.png")
    body = T5_ONLY.replace("[optimizer]", "[optimizer]\ntext_encoder_2_lr = 0.5")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'spec_version = 2\n[model]\nbase = "builtin:tiny-flux"\n' + LORA + STEPS + body
        + '[[datasets]]\nname = "dog"\npath = "dog"\nprompt = "a photo of ohwx dog"\n'
    )  # fmt: skip
    assert not [d for d in check_spec(spec).diagnostics if d.code == "DBS274"]
    planned = plan_spec(spec, TargetEnv(device="cpu", memory_bytes=0, bf16=False))
    assert planned.plan is None
    found = [(d.code, d.path) for d in planned.diagnostics if d.code == "DBS274"]
    assert found == [("DBS274", "optimizer.text_encoder_2_lr")]
    spec.write_text(spec.read_text().replace("text_encoder_2_lr = 0.5", "text_encoder_2_lr = 1.0"))
    planned = plan_spec(spec, TargetEnv(device="cpu", memory_bytes=0, bf16=False))
    assert planned.plan is not None and planned.plan.optimizer.text_encoder_2_lr is None
    # SD3 detected: T5-XXL trains at text_encoder_3_lr, unset, so text_encoder_2_lr's 0.5: the plan names
    # the key written, saying which rate derives from it (issue 12)
    text = spec.read_text().replace("tiny-flux", "tiny-sd3")
    spec.write_text(text.replace("text_encoder_2_lr = 1.0", "text_encoder_2_lr = 0.5"))
    planned = plan_spec(spec, TargetEnv(device="cpu", memory_bytes=0, bf16=False))
    found = [(d.code, d.path, d.message) for d in planned.diagnostics if d.code == "DBS274"]
    assert [f[:2] for f in found] == [("DBS274", "optimizer.text_encoder_2_lr")]
    assert "`optimizer.text_encoder_3_lr`, not set" in found[0][2]


@pytest.mark.parametrize(
    ("dataset", "inert"),
    [
        ('captions = "textfile"\nprompt = ""\n', False),  # read for every image without a caption file
        ('layout = "kohya_folders"\ncaptions = "textfile"\n', False),  # a folder's tokens may be empty
        ('captions = "textfile"\n', True),  # DOG's prompt stands in for every missing caption file
        ('captions = "filename"\n', True),
        ("", True),  # captions = "prompt"
        ('metadata = "meta.json"\n', True),
    ],
)
def test_missing_captions_inert_where_no_caption_file_can_be_missing(dataset, inert):
    body = DOG.replace('prompt = "a photo of ohwx dog"\n', 'prompt = "a photo of ohwx dog"\n' + dataset)
    if 'prompt = ""' in dataset:
        body = body.replace('prompt = "a photo of ohwx dog"\n', "", 1)
    rule = rules.missing_captions_inert
    expected = [("DBS614", "warning", ("datasets", 0, "missing_captions"))] if inert else []
    assert hits_of(rule, body + 'missing_captions = "empty"\n' + STEPS) == expected
    assert hits_of(rule, body + STEPS) == []  # not given: nothing to say


def test_a_tlora_adapter_s_blocks_of_other_kinds():
    """A tlora adapter takes blocks of kind lora, loha, lokr, full, ia3, glora, diag-oft, boft and dylora
    (their rank and alpha, DyLoRA's unit), not with its bypass or max_norm (DBS578) but its bypass (with its
    dropout and rank_dropout) beside LoRA / LoHa / LoKr / IA^3 / Diag-OFT / BOFT / GLoRA / DyLoRA blocks
    undecomposed (rules.tlora_bypass_inert; its dropout not beside Diag-OFT ones there), its dropout outside
    bypass beside any, and its max_norm beside Diag-OFT / BOFT blocks alone; on Flux too (DBS604 reserved);
    alpha 0 only on a Diag-OFT / BOFT block (their constraint; DBS611)."""
    tlora = '[adapter]\nkind = "tlora"\n' + DOG + STEPS
    block = '[[adapter.blocks]]\npattern = "ff"\nkind = "{}"\nrank = 4\nalpha = 4.0\n'
    for kind in ("lokr", "diag-oft", "boft", "dylora"):
        assert hits_of(rules.mixed_block_kinds, tlora + block.format(kind) + "unit = 4\n") == []
    for kind, code in (("diag-oft", []), ("boft", []), ("lokr", [("adapter", "blocks", 0, "alpha")])):
        zero = tlora + block.format(kind).replace("alpha = 4.0", "alpha = 0.0")
        assert [h[2] for h in hits_of(rules.tlora_block_alpha, zero) if h[0] == "DBS611"] == code, kind
    assert hits_of(rules.tlora_block_alpha, tlora + block.format("boft")) == []
    bypass = tlora.replace('"tlora"\n', '"tlora"\nbypass = true\nmax_norm = 1.0\n')
    ranks = bypass.replace("max_norm = 1.0\n", "max_norm = 1.0\nrank_dropout = 0.1\n")
    dropped = ranks.replace("rank_dropout = 0.1\n", "rank_dropout = 0.1\ndropout = 0.1\n")
    for kind in ("lora", "loha", "lokr", "ia3", "boft"):  # (its max_norm beside OFT blocks alone)
        normed = set() if kind == "boft" else {("adapter", "max_norm")}
        assert {h[2] for h in hits_of(rules.mixed_block_kinds, dropped + block.format(kind))} == normed, kind
    assert hits_of(rules.mixed_block_kinds, ranks + block.format("diag-oft")) == []
    # DiagOFTModule's bypass Dropout raises; GLoRA's / full's / DyLoRA's bypass forward is not built here;
    # LyCORIS's bypass forward never decomposes
    assert ("adapter", "dropout") in {
        h[2] for h in hits_of(rules.mixed_block_kinds, dropped + block.format("diag-oft"))
    }
    hits = {h[2] for h in hits_of(rules.mixed_block_kinds, bypass + block.format("full"))}
    assert ("adapter", "bypass") in hits  # FullModule raises on bypass_mode
    for kind in ("glora", "dylora"):  # their bypass forward (GLoRA's dropouts, DyLoRA's one block)
        hits = {h[2] for h in hits_of(rules.mixed_block_kinds, dropped + block.format(kind) + "unit = 4\n")}
        assert hits == {("adapter", "max_norm")}, kind
    decomposed = bypass + block.format("lora") + 'dora = "on"\n'
    assert ("adapter", "bypass") in {h[2] for h in hits_of(rules.mixed_block_kinds, decomposed)}
    for kind in ("diag-oft", "boft"):
        assert (
            hits_of(
                rules.mixed_block_kinds,
                tlora.replace('"tlora"\n', '"tlora"\nmax_norm = 1.0\ndropout = 0.1\n') + block.format(kind),
            )
            == []
        )
    # outside bypass its dropout is the T-LoRA layers' in their own bypass forward alone: beside any kind
    dropped = tlora.replace('"tlora"\n', '"tlora"\ndropout = 0.1\n')
    for kind in ("lora", "loha", "lokr", "glora", "full"):
        assert hits_of(rules.mixed_block_kinds, dropped + block.format(kind)) == [], kind


def test_a_tlora_adapter_s_fused_blocks_keep_its_bypass_and_max_norm():
    """With fused_projections (Flux / SD3 / Chroma) a tlora adapter's max_norm beside Diag-OFT / BOFT blocks
    and its bypass (with its rank_dropout and dropout) beside LoRA blocks pass mixed_block_kinds as on SD
    (each fused Linear one LyCORIS module, one norm and one rank mask:
    tests/runtime/test_lycoris_flow_tlora_mixed_opts.py, test_lycoris_tlora_bypass_entries.py; was DBS578);
    beside full blocks its bypass stays DBS578."""
    tlora = 'family = "flux"\n' + DOG + STEPS + '[adapter]\nkind = "tlora"\nfused_projections = true\n'
    block = '[[adapter.blocks]]\npattern = "qkv"\nkind = "{}"\nrank = 4\nalpha = 4.0\n'
    for kind in ("diag-oft", "boft"):
        normed = tlora.replace("true\n", "true\nmax_norm = 1.0\n")
        assert hits_of(rules.mixed_block_kinds, normed + block.format(kind)) == [], kind
    ranks = tlora.replace("true\n", "true\nbypass = true\nrank_dropout = 0.1\n")
    assert hits_of(rules.mixed_block_kinds, ranks + block.format("lora")) == []
    dropped = ranks.replace("rank_dropout = 0.1\n", "rank_dropout = 0.1\ndropout = 0.1\n")
    assert hits_of(rules.mixed_block_kinds, dropped + block.format("lora")) == []
    assert ("adapter", "bypass") in {
        h[2] for h in hits_of(rules.mixed_block_kinds, dropped + block.format("full"))
    }
