"""The diagnostic codes: one row per code, like ruff's rule table. Adding a code is adding one row here.

Each row holds the code, the severity its diagnostics have ("either" for codes reported as an error or a
warning depending on the spec, e.g. `on_bad_image = "skip"`), a one-line title, the explanation docs/errors.md
shows (Markdown, generated from this table by `dbspec schema --errors docs/errors.md`) and, optionally, the
default help line a diagnostic prints (`help(code)`). `reserved` marks a code no call site needs to use yet (a
rule being added) or any more. tests/unit/test_codes.py checks that every `DBSnnn` literal in dbspec/ and
runtime/ is a row here, that every row is used or reserved, and that call sites use the row's severity.
"""

from __future__ import annotations

from typing import Literal

import attrs

Severity = Literal["error", "warning", "either"]
ERROR: Severity = "error"
WARNING: Severity = "warning"
EITHER: Severity = "either"  # error or warning, depending on the spec (the message says which)


@attrs.frozen
class Code:
    code: str  # "DBS" and three digits; the first digit is the group
    severity: Severity
    title: str  # one line, no final full stop
    explanation: str  # Markdown for docs/errors.md; may span paragraphs
    help: str = ""  # the default `= help:` line, for call sites that take it from here
    reserved: bool = False  # no call site needs to use it (yet, or any more)


@attrs.frozen
class Group:
    digit: str  # the first digit of its codes
    heading: str
    intro: str = ""  # Markdown shown under the heading, before the codes


INTRO = """\
Every message dbspec prints has a code. `dbspec check` and `dbspec plan` gather all of them and report once;
errors fail the command (exit 1), warnings fail it only with `--strict`. `--format json` gives \
the same records."""

GROUPS: tuple[Group, ...] = (
    Group("0", "DBS0xx: reading the file"),
    Group("1", "DBS1xx: the schema"),
    Group("2", "DBS2xx: options that contradict each other"),
    Group("3", "DBS3xx: data, models and the target machine (`dbspec plan`)"),
    Group(
        "4",
        "DBS4xx: converting legacy configs (`dbspec convert`)",
        """\
`dbspec convert kohya|diffusers|simpletuner` writes no spec while any of these is an error (exit 1);
`--report` lists what became of every legacy key. See [converting.md](converting.md).""",
    ),
    Group(
        "5",
        "DBS5xx: options that contradict each other (continued)",
        "The same kind of check as DBS2xx (whose numbers ran out): spec options that cannot work together.",
    ),
    Group(
        "6",
        "DBS6xx: options that contradict each other (continued)",
        "The same kind of check as DBS2xx and DBS5xx (whose numbers ran out): spec options that cannot work "
        "together.",
    ),
)

CODES: tuple[Code, ...] = (
    # --- DBS0xx: reading the file ---------------------------------------------------------------------------
    Code(
        "DBS001",
        ERROR,
        "TOML syntax error",
        """\
TOML syntax error. The position is where the parser stopped; the help line guesses the \
usual cause (an unquoted
string, an unclosed quote or bracket).""",
    ),
    Code(
        "DBS002",
        ERROR,
        "The spec file cannot be read",
        """\
The spec file cannot be read (missing, a folder, no permission).""",
    ),
    Code(
        "DBS003",
        ERROR,
        "The spec file is not UTF-8",
        """\
The spec file is not UTF-8. TOML files must be UTF-8; re-save it.""",
    ),
    Code(
        "DBS004",
        ERROR,
        "A `--set` override cannot be read or applied",
        """\
A `--set` override cannot be read or applied. Write `--set table.key=value`; values are TOML
(`--set optimizer.lr=2e-6`, `--set 'validation.prompts=["a", "b"]'`); a bare word is taken as a string.""",
    ),
    Code(
        "DBS005",
        ERROR,
        "A key path more than 32 levels deep",
        """\
A key path more than 32 levels deep: arrays and inline tables nested past 32 levels, a dotted key or `[table]`
header of more than 32 parts, or both together (in the file or through `--set`). Real specs \
are 4 levels deep at
most; the limit keeps every reader far inside Python's stack. It is checked before anything else reads the
values, so it is the only error reported; it points at the first bracket or key past the limit.""",
        help="no spec nests more than a few levels; look for brackets or dots repeated by mistake",
    ),
    Code(
        "DBS006",
        ERROR,
        "A number of more than 100 digits",
        """\
A number of more than 100 digits. No setting needs one (seeds, the longest, have 20), and Python refuses to
convert integers of more than 4300 digits; it is checked on the text, before the values are read.""",
        help="no setting needs a number this long; look for digits pasted by mistake",
    ),
    # --- DBS1xx: the schema ---------------------------------------------------------------------------------
    Code(
        "DBS101",
        ERROR,
        "Wrong type",
        """\
Wrong type. dbspec never coerces: `"5"` is not a number, `2.7` is not an integer, `true` is not an integer.
An integer is accepted where a number is expected.""",
    ),
    Code(
        "DBS102",
        ERROR,
        "Unknown key",
        """\
Unknown key. The help suggests the closest key of the same table, the table the key belongs \
to, or the dbspec name
of a kohya/diffusers option (`learning_rate` -> `lr` in `[optimizer]`).""",
    ),
    Code(
        "DBS103",
        ERROR,
        "A required key is missing",
        """\
A required key is missing (`spec_version`, `[model] base`, `[[datasets]]` with `name` and `path`).""",
    ),
    Code(
        "DBS104",
        ERROR,
        "A value outside an option's allowed set",
        """\
A value outside an option's allowed set; the message lists them.""",
    ),
    Code(
        "DBS105",
        ERROR,
        "A number outside an option's bounds",
        """\
A number outside an option's bounds (e.g. `repeats` >= 1).""",
    ),
    Code(
        "DBS106",
        ERROR,
        "Unsupported `spec_version`",
        """\
Unsupported `spec_version`.""",
    ),
    Code(
        "DBS107",
        WARNING,
        "A spec of an older `spec_version`, upgraded when read",
        """\
The file says an older `spec_version` (1) and is read as the current one (2): its keys are \
renamed in memory and
the run is the same as before. The message lists each renamed key with its line; errors in \
the file still point at
the lines as written. `dbspec upgrade FILE` rewrites the file to the current version (only \
the renamed keys and
the `spec_version` line change; comments and layout stay), which silences this warning. Renames in version 2:
`train.unet` -> `train.denoiser`, `adapter.unet_targets` -> `adapter.denoiser_targets`,
`precision.quantize_unet` -> `precision.quantize_denoiser` (the trained network is the denoiser: a UNet, or a
transformer in later model families).""",
        help="run `dbspec upgrade FILE` to rewrite the file as the current spec_version",
    ),
    Code(
        "DBS108",
        ERROR,
        "A key name of another `spec_version`",
        """\
A key named as another `spec_version` names it: a new name (`train.denoiser`) in a \
`spec_version = 1` file, both
the old and the new name of one option, or an old name (`train.unet`) in a `spec_version = 2` file. Use one
version's names throughout: keep version 1's names and let dbspec upgrade the file when it reads it, or run
`dbspec upgrade FILE` and use the new names.""",
    ),
    # --- DBS2xx: options that contradict each other ---------------------------------------------------------
    Code(
        "DBS200",
        ERROR,
        "A part held at learning rate 0 that cannot stay still",
        """\
`optimizer.lr = 0` holds the denoiser at learning rate 0 while the text encoder(s) train at their own rate
(kohya train_db.py's `learning_rate 0` with `learning_rate_te`); `optimizer.text_encoder_lr = 0` (or
`text_encoder_2_lr = 0`) holds a training text encoder at rate 0 while the denoiser or another text encoder
trains (kohya networks.lora_fa's text-encoder group at `text_encoder_lr 0`, which it keeps in the optimizer).
It needs the part to train (`optimizer.lr = 0` with `train.denoiser = false` has no meaning: give the text
encoder its rate with `optimizer.text_encoder_lr`), another part training at a positive rate (or, for the
denoiser with no text encoder training, `optimizer.denoiser_at_zero = "keep"` and a schedule that lifts it:
it trains on that schedule alone, as kohya train_db.py's U-Net does; with the text encoders at rate 0 too, a
schedule that lifts one of them, each lifted part kept by `denoiser_at_zero` / `text_encoder_at_zero`, as
train_db.py's groups at `learning_rate 0` with `learning_rate_te 0` or none), and an optimizer that holds
a group at rate 0. Refused: D-Adaptation's classes but DAdaptLion and Prodigy raise
ValueError for lr 0 as kohya builds them (`lr=learning_rate`, the denoiser's rate), and Prodigy's step also
applies the decoupled weight decay (and, with betas[0] = 0, the gradient) to every group at d x the largest
rate; DAdaptLion accepts a group at rate 0 but steps every group at d x the largest rate (the part would
train: that run is the two parts at one rate); with the denoiser at a positive rate, a text encoder at 0
is held where the class leaves a group at rate 0 out of its estimate of d and never moves it (dadapt_adam
without decoupled weight decay, dadapt_adam_preprint, dadapt_sgd without momentum, prodigy with
`weight_decay = 0` and betas[0] > 0) and refused with the others (DAdaptAdaGrad, DAdaptAdan and DAdaptAdanIP
step every group at the first group's rate, which kohya's networks.lora_fa order makes the text encoder's;
DAdaptLion steps it at the largest; DAdaptAdam's (decouple) and Prodigy's decoupled weight decay shrink it at
d x the largest rate; DAdaptSGD's momentum averaging rounds it off its weights); Adafactor with
`relative_step` ignores the groups' rates; CAME asserts
lr > 0 (the denoiser's; it scales each group's step by that group's rate, so it holds a text encoder at 0).
So are the `one_cycle` and `cyclic` schedules (they set every group's LR) and a positive `schedule.eta_min`
(it lifts the held part's LR above 0). The schedule-free optimizers hold it (a group at rate 0 keeps an
averaging weight of 0).""",
        help="give the part a rate above 0, or stop training it (train.denoiser / text_encoder = false)",
    ),
    Code(
        "DBS201",
        WARNING,
        "A prior-preservation setting without a class dataset",
        """\
`loss.prior_weight` or `loss.prior` set without a class dataset (warning: it has no effect).""",
    ),
    Code(
        "DBS202",
        ERROR,
        "`train.text_encoder_stop_step` is not below the run's step count",
        """\
`train.text_encoder_stop_step` is not below the run's step count.""",
    ),
    Code(
        "DBS203",
        ERROR,
        "An adapter option under the wrong `adapter.kind`",
        """\
An adapter option under the wrong `adapter.kind` (e.g. `rank` with `kind = "none"`).""",
    ),
    Code(
        "DBS204",
        WARNING,
        "A checkpoint or validation interval longer than the run",
        """\
`checkpoints.every` or `validation.every` larger than the run (warning).""",
    ),
    Code(
        "DBS205",
        ERROR,
        "`validation.every` without `validation.prompts`",
        """\
`validation.every` set but no `validation.prompts` (and no `evaluation.holdout`, whose evaluation loss runs at
the validation steps without sampling).""",
    ),
    Code(
        "DBS206",
        WARNING,
        "Text-encoder options while the text encoder does not train",
        """\
Text-encoder options while `train.text_encoder` is false (warning).""",
    ),
    Code(
        "DBS207",
        ERROR,
        "The run length is not set exactly once",
        """\
The run length: set exactly one of `schedule.steps` and `schedule.epochs`.""",
    ),
    Code(
        "DBS208",
        ERROR,
        "A dataset that needs a prompt has none",
        """\
A dataset that needs a prompt has none (captions = "prompt", or class images to generate).""",
    ),
    Code(
        "DBS209",
        ERROR,
        "Two datasets share a name",
        """\
Two datasets share a name.""",
    ),
    Code(
        "DBS210",
        ERROR,
        "No instance dataset",
        """\
No instance dataset.""",
    ),
    Code(
        "DBS211",
        WARNING,
        "Warm-up with a constant learning rate",
        """\
`warmup_steps` with `lr_schedule = "constant"` (warning: no effect).""",
    ),
    Code(
        "DBS212",
        ERROR,
        "Quantising weights that are fully fine-tuned",
        """\
Quantising weights that are fully fine-tuned.""",
    ),
    Code(
        "DBS213",
        WARNING,
        "Cached text embeddings while the text encoder trains",
        """\
`cache.text_embeddings` while the text encoder trains (warning).""",
    ),
    Code(
        "DBS214",
        ERROR,
        "`generate` on an instance dataset",
        """\
`generate` on an instance dataset.""",
    ),
    Code(
        "DBS215",
        WARNING,
        "A very low LoRA learning rate",
        """\
A LoRA learning rate that is very low (warning).""",
    ),
    Code(
        "DBS216",
        WARNING,
        "An option that has no effect with the chosen variant",
        """\
An option that has no effect with the chosen variant (warning): `huber_delta` without huber loss, `momentum`
without SGD, dadapt_sgd or dadapt_adagrad, `nesterov` without SGD, `bf16_fallback` without bf16,
`huber_c`/`huber_schedule` without a pseudo-Huber loss, a noise option whose switch is off
(`noise_offset_random_strength` without `noise_offset`,
`multires_noise_discount` without `multires_noise_iterations`, `ip_noise_gamma_random_strength` without
`ip_noise_gamma`), `prior_reduction` without class data, `keep_tokens` or `caption_separator` when no caption
is cut into tags, `token_warmup_min` without `token_warmup_step`, `eps` with came (its regularisers are the
pair `came_eps`), `evaluation.order = "kohya_loader"` without `evaluation.split`, `evaluation.max_batches`
without that order or `evaluation.max_images` with it.""",
    ),
    Code(
        "DBS217",
        ERROR,
        "Nothing trains",
        """\
Nothing trains.""",
    ),
    Code(
        "DBS218",
        EITHER,
        "Bucket settings that do not fit together",
        """\
Bucket settings: min above max, a step that is not a multiple of 8, a resolution not a multiple of 8.""",
    ),
    Code(
        "DBS219",
        ERROR,
        "`optimizer.betas` out of range",
        """\
`optimizer.betas` must be two numbers in [0, 1) (three for dadapt_adan, dadapt_adan_ip, the ademamix
kinds and came).""",
    ),
    Code(
        "DBS220",
        ERROR,
        "`optimizer.adafactor_eps` or `optimizer.came_eps` is not a pair of positive numbers",
        """\
`optimizer.adafactor_eps` is transformers' Adafactor `eps`: two positive numbers, the regulariser of the
squared gradient and the floor of the parameter scale (default [1e-30, 1e-3]); Adafactor indexes both.
`optimizer.came_eps` is came_pytorch's CAME `eps`: two positive numbers, the regulariser of the squared
gradient and that of the instability (default [1e-30, 1e-16]).""",
    ),
    Code(
        "DBS221",
        ERROR,
        "Two mask sources on one dataset",
        """\
Two mask sources on one dataset.""",
    ),
    Code(
        "DBS222",
        ERROR,
        "An export format that does not fit the run",
        """\
An export format that does not fit the run (single_file for LoRA, kohya_lora for full runs).""",
    ),
    Code(
        "DBS223",
        WARNING,
        "Zero terminal SNR with epsilon prediction",
        """\
Zero terminal SNR with epsilon prediction (warning).""",
    ),
    Code(
        "DBS224",
        WARNING,
        "Prodigy with a small learning rate",
        """\
Prodigy with a small learning rate (warning): Prodigy adapts its step size and expects `lr = 1.0`.""",
    ),
    Code(
        "DBS225",
        ERROR,
        "`output.dir` overlaps the run's inputs",
        """\
`output.dir` overlaps the run's inputs: it is, contains or sits inside a dataset folder, a mask folder or the
cache folder, or it contains the spec file (`.`, the spec's own folder, `/`). The run writes checkpoints,
samples and logs into `output.dir`, and `--overwrite` moves the whole folder aside, so it \
must be a folder of its
own. Paths are compared after resolving them against the spec's folder and following symlinks.""",
    ),
    Code(
        "DBS226",
        ERROR,
        "A base-model prior with a frozen denoiser",
        """\
`loss.prior = "base_model"` with `train.denoiser = false` and `train.text_encoder = true`. The \
base-model prior compares
the trained denoiser's (UNet's) prediction with the base model's (LoRA adapters switched \
off, or a frozen copy of
the denoiser in a full fine-tune). When only the text encoder trains, the base would need the untouched text
encoder, which is not kept. Train the denoiser too, or use `loss.prior = "images"`.""",
        help='set train.denoiser = true, or use loss.prior = "images" (class images as targets)',
    ),
    Code(
        "DBS227",
        ERROR,
        "An option that does not apply to kohya folders or a metadata file",
        """A dataset with `layout = "kohya_folders"` sets `generate` or `recursive`. Its images \
are those of kohya's
`N_class tokens` sub-folders, read one level deep as kohya reads them, so there is no one \
folder to generate class
images into and no deeper folder to scan. Generate class images into a `layout = "folder"` dataset (or a
sub-folder such as `1_dog` made beforehand).

A dataset with `metadata` (kohya's fine-tuning metadata file) sets `layout`, `captions`,
`caption_extension`, `recursive` or `generate`: the file lists its images and their captions, so no folder
is scanned, no caption file is read and no class image is generated.""",
        help='remove the option, or use layout = "folder" (without `metadata`)',
    ),
    Code(
        "DBS228",
        ERROR,
        "A schedule-free optimizer with an LR schedule",
        """\
The schedule-free optimizers (`adamw_schedulefree`, `sgd_schedulefree`, `radam_schedulefree`) replace the LR
schedule by averaging the iterates: kohya gives them a dummy scheduler that never changes the LR. So
`schedule.lr_schedule` must stay "constant" without `schedule.warmup_steps`; the optimizer's own warm-up is
`optimizer.schedulefree_warmup_steps` (AdamW and SGD).""",
        help="remove the schedule settings; use optimizer.schedulefree_warmup_steps for a warm-up",
    ),
    Code(
        "DBS229",
        WARNING,
        "A trained part at learning rate 0",
        """\
`optimizer.lr = 0` with `train.denoiser = true`, or `optimizer.text_encoder_lr = 0` (`text_encoder_2_lr = 0`)
with the text encoder(s) training: the part's weights never move (every optimizer dbspec allows here scales
its step and its decoupled weight decay by the group's rate: AdamW multiplies by 1 - lr x weight_decay = 1;
the schedule-free ones give the group an averaging weight of 0 and a step of 0), but its gradients are
computed every step (the cost of training it: memory for its gradients and optimizer state, and the
backward pass through it) and `optimizer.max_grad_norm` clips them together with the other parts', so a
large gradient of the held part shrinks the others' steps. This is kohya train_db.py's `learning_rate 0`
with `learning_rate_te`, and kohya networks.lora_fa's `text_encoder_lr 0` (its text-encoder group stays in
the optimizer); `train.denoiser = false` (`train.text_encoder = false`) is cheaper and the same when
`max_grad_norm = 0`.""",
        help="stop training the held part (train.denoiser / train.text_encoder = false): cheaper, unless you "
        "want kohya's joint clip norm",
    ),
    Code(
        "DBS230",
        ERROR,
        "A DDPM-only loss option on a flow-matching model",
        """\
A loss option that reads the DDPM noise schedule (its alphas, SNR or integer timesteps) on a
flow-matching model (SD3): `min_snr_gamma`, `zero_terminal_snr`, `debiased_estimation`,
`scale_v_pred_loss_like_noise_pred`, `v_pred_like_loss`, `noise_offset` (and its variants),
`min_timestep`/`max_timestep` (except with `loss.flow_draw = "floored"`, whose bounds they are), or
`kind = "pseudo_huber"` / `"smooth_l1"`; also scheduled sampling
(`scheduled_sampling.max_step_offset`), whose rollout samplers and targets are DDPM's. Flow matching draws
sigma with `loss.flow_timesteps` and weights the loss with `loss.flow_weighting`. With `model.prediction =
"auto"` the check runs once the compiler knows the family.""",
        help="remove the option; flow-matching models use loss.flow_timesteps and loss.flow_weighting",
    ),
    Code(
        "DBS231",
        WARNING,
        "A flow-matching loss option on a DDPM model",
        """\
A `loss.flow_*` option on a model that is not flow-matching (warning): SD1, SD2 and SDXL draw integer
timesteps and ignore it.""",
        help="remove the option; it only applies to flow-matching models (SD3)",
    ),
    Code(
        "DBS232",
        WARNING,
        "A training guidance for a model without a guidance embedding",
        """\
`loss.flow_guidance` on a flow-matching family whose denoiser has no guidance embedding (SD3): only
guidance-distilled models (Flux.1 dev) are given a guidance value in training, so the option is inert.""",
        help="remove loss.flow_guidance",
    ),
    Code(
        "DBS233",
        ERROR,
        "A face-crop range that is not two positive numbers, low first",
        """\
`datasets[].face_crop` must be empty (off) or two positive numbers [lo, hi]: the face of an image named
`name_cx_cy_w_h.ext` is scaled to span between 1/hi and 1/lo of the resolution; a 0 divides by zero in
kohya's crop. A reversed pair runs as kohya's dataset config runs it (DBS616).""",
        help="write face_crop = [2.0, 4.0] (the face spans a quarter to a half of the image), or remove it",
    ),
    Code(
        "DBS234",
        ERROR,
        "Face crop with aspect buckets",
        """\
`datasets[].face_crop` on a dataset whose buckets are aspect-ratio buckets (`buckets.mode = "aspect"`, or its
group's `bucket_mode`). kohya crops around the face only with buckets off (`enable_bucket = false`): with
buckets it loads the face box and ignores it. dbspec refuses instead of ignoring it.""",
        help='set buckets.mode = "square" (or the group\'s bucket_mode), or remove face_crop',
    ),
    Code(
        "DBS235",
        ERROR,
        "A loss weighting for the other prediction type",
        """\
`loss.scale_v_pred_loss_like_noise_pred` on an epsilon model, or `loss.v_pred_like_loss` on \
a v_prediction model.
The first rescales a v-prediction loss like an epsilon loss, the second adds a v-prediction-like term to an
epsilon loss; kohya-ss refuses both combinations. With `model.prediction = "auto"` the check runs once the
compiler has read the model's prediction type.""",
    ),
    Code(
        "DBS236",
        ERROR,
        "A loss weight that can be infinite",
        """\
`loss.debiased_estimation` or `loss.v_pred_like_loss` with `loss.zero_terminal_snr` on an epsilon model: both
divide by the signal-to-noise ratio, which is exactly 0 at the last timestep of a \
zero-terminal-SNR schedule, so
the loss of such a step is infinite. Use a v_prediction model, or stop the timesteps short of the last one
(`loss.max_timestep = 999`). Likewise flow matching's `loss.flow_weighting = "sigma_sqrt"` (σ⁻²) with
`loss.flow_draw = "floored"` and `loss.min_timestep = 0`: that draw can take timestep 0, σ = 0 (kohya's
sd3_train_network.py then gets 0 · ∞, a NaN loss); set `loss.min_timestep = 1`.""",
    ),
    Code(
        "DBS237",
        ERROR,
        "Noise settings that contradict each other",
        """\
`loss.adaptive_noise_scale` without `loss.noise_offset` (the adaptive part adds to the \
offset; kohya-ss refuses
it too), or `loss.min_timestep` above `loss.max_timestep`.""",
    ),
    Code(
        "DBS238",
        WARNING,
        "A warm-up at least as long as the run",
        """\
`schedule.warmup_steps` is not below the run's step count: the LR climbs for the whole run (linearly:
step / warmup_steps x `optimizer.lr`; warmup_stable_decay's `warmup_type` shapes it) and never reaches
`optimizer.lr`; whatever the schedule does after its warm-up never happens. kohya and diffusers run such a
schedule as written (a common slip when the run was shortened), and so does dbspec; the plan's LR points show
the curve, its last step the highest LR reached.""",
        help="shorten the warm-up (a tenth of the run is usual), or keep it if the ramp is what you meant",
    ),
    Code(
        "DBS239",
        ERROR,
        "Two sigma shifts for flow matching",
        """\
`loss.flow_dynamic_shift = true` (σ shifted by the image size, Flux's time shift; kohya's `timestep_sampling =
"flux_shift"`) with a fixed `loss.flow_shift` other than 0: each shifts σ, and only one can. Also with
`loss.flow_draw = "floored"`: the image-size shift draws σ continuously, not as integer timesteps.""",
        help="remove loss.flow_shift (or set loss.flow_dynamic_shift = false for a fixed shift)",
    ),
    # Caption processing (kohya's options on [[datasets]]): DBS240-DBS249.
    Code(
        "DBS240",
        ERROR,
        "An empty `caption_separator` where captions are cut into tags",
        """\
`caption_separator = ""` on a dataset that shuffles tags, drops tags or warms up tokens: a \
caption cannot be cut
into tags at an empty separator (kohya stops with `ValueError: empty separator`).""",
        help='use the separator your captions have between tags, e.g. ","',
    ),
    Code(
        "DBS241",
        WARNING,
        "`keep_tokens_separator` stays in the caption text",
        """\
`keep_tokens_separator` is set, but the dataset neither shuffles tags (`shuffle_caption`), drops tags
(`caption_tag_dropout_rate`) nor warms up tokens (`token_warmup_step`). Only those cut the caption at the
separator; otherwise, as in kohya, the caption trains as written, separator included (warning).""",
        help="turn on shuffle_caption, or remove the separator from the captions",
    ),
    Code(
        "DBS242",
        WARNING,
        "Every caption of a dataset is dropped",
        """\
`caption_dropout_rate = 1` or `caption_dropout_every_n_epochs = 1`: every sample of the dataset trains with an
empty caption, so its captions teach nothing (warning).""",
    ),
    Code(
        "DBS243",
        WARNING,
        "`loss.mask_mean` without masks",
        """\
`loss.mask_mean` is set but no dataset has `masks` or `mask_from_alpha`: it only says how a masked sample's
loss is averaged (over the mask's area, or over the whole image as kohya does), so it changes nothing
(warning).""",
        help="add a dataset's masks, or remove loss.mask_mean",
    ),
    Code(
        "DBS244",
        ERROR,
        "`evaluation.holdout` and `evaluation.split` both set",
        """\
The evaluation holds images out one way: `evaluation.holdout` (dbspec's seeded sample of N images of one
dataset) or `evaluation.split` (kohya's validation split, drawn as kohya draws it). Both are set; or the
split's options (`split_datasets`, `split_draw`) are set without `split`, or `holdout_dataset` with it.""",
        help="keep one: evaluation.holdout = 0, or evaluation.split = 0",
    ),
    Code(
        "DBS245",
        ERROR,
        "Cropping without resizing needs square buckets",
        """\
A dataset sets `resize = "none"` (the unresized image cropped to the resolution, kohya's behaviour with
buckets and `cache_latents` off) while its buckets are aspect buckets. kohya crops without resizing only when
buckets are off; with buckets every image is resized into its bucket.""",
        help='set buckets.mode (or the group\'s bucket_mode) to "square", or resize = "cover"',
    ),
    Code(
        "DBS246",
        WARNING,
        "How half-precision weights are rounded, with fp32 weights",
        """\
`precision.weights_rounding` is given but `precision.weights` is `"fp32"`: it chooses how bf16 or fp16 trained
weights are updated (stochastic rounding, or kohya's round-to-nearest), so with fp32 weights it has no effect
(warning).""",
        help='remove weights_rounding, or set precision.weights = "bf16" (or "fp16")',
    ),
    # Quantisation backends (precision.quantize_backend): DBS247, DBS248.
    Code(
        "DBS247",
        ERROR,
        "A quantisation format the chosen backend does not make",
        """\
`precision.quantize_denoiser` or `quantize_text_encoder` names a format that `precision.quantize_backend` does
not offer: quanto makes int8, int4 and fp8; torchao int8 and fp8 (weight-only); bitsandbytes nf4 and int8
(LLM.int8); cast fp8 only (kohya's fp8_base: plain float8_e4m3fn storage). See docs/memory.md,
"Quantisation backends".""",
    ),
    Code(
        "DBS248",
        WARNING,
        "optimum-quanto is deprecated upstream",
        """\
The frozen base is quantised with optimum-quanto (`quantize_backend = "quanto"`, the default), which is in
maintenance mode upstream; diffusers deprecated its `QuantoConfig` (warning). torchao (int8, fp8 weight-only)
and bitsandbytes (nf4, int8) replace it: set `precision.quantize_backend`. A spec that names
`quantize_backend = "quanto"` has chosen it knowingly and is not warned.""",
        help='use quantize_backend = "torchao" or "bitsandbytes"',
    ),
    # fp16 trained weights (kohya's full_fp16) with an optimizer that cannot step them: DBS249.
    Code(
        "DBS249",
        ERROR,
        "An optimizer whose fp16 state breaks fp16 weights",
        """\
`precision.weights = "fp16"` with `optimizer.kind = "adamw"`, `"adamw_schedulefree"` or
`"pytorch_optimizer_came"`: stepping fp16 parameters, these create their moments in fp16, where the second
moment of any gradient under about 8e-3 underflows to 0 and the epsilon (1e-8; CAME's eps1 1e-30) rounds to 0,
so the update divides by zero and the weights turn inf or NaN within a step (kohya's full_fp16 with torch's
AdamW does the same). bitsandbytes' optimizers (kohya's usual `AdamW8bit`), Adafactor and came_pytorch's CAME
(`"came"`) keep fp32 or 8-bit state and step fp16 weights.""",
        help='use optimizer.kind = "adamw8bit" (or "paged_adamw", "adafactor", "came"), or weights = "bf16"',
    ),
    # Dataset groups ([[groups]], kohya's [[datasets]]): DBS250-DBS253; a dataset's mask channel: DBS254.
    Code(
        "DBS250",
        ERROR,
        "A dataset names a group that no `[[groups]]` table defines",
        """\
`group` in a `[[datasets]]` table names a group that no `[[groups]]` table defines. Leave `group` empty for \
the
default group ([schedule] batch_size and [buckets]).""",
        help="add a [[groups]] table with that name, or fix the spelling",
    ),
    Code(
        "DBS251",
        ERROR,
        "Two `[[groups]]` tables share a name",
        """\
Two `[[groups]]` tables share a name (or one is named with the empty string, which is the default \
group's).""",
        help="give every [[groups]] a unique, non-empty name",
    ),
    Code(
        "DBS252",
        WARNING,
        "A `[[groups]]` table no dataset uses",
        """\
No `[[datasets]]` table names this group in its `group` key, so its settings change nothing (warning).""",
        help="set `group` on the datasets meant to use it, or remove the [[groups]] table",
    ),
    Code(
        "DBS253",
        "either",
        "A group's bucket settings contradict each other",
        """\
In a `[[groups]]` table (its own keys, or the `[buckets]` values it takes for the keys it does not write):
`bucket_min_size` above `bucket_max_size`, or a `bucket_step` that is not a multiple of 8 (errors); bucket \
sizes
written together with `bucket_no_upscale = true`, which ignores them (warning), as `[buckets]` does \
(DBS218).""",
    ),
    Code(
        "DBS254",
        WARNING,
        "`mask_channel` without mask files",
        """\
A dataset sets `mask_channel` but has no `masks` folder (none, or `mask_from_alpha`): it only says how a mask
file is read (its luminance, or its red channel as kohya reads conditioning masks), so it changes nothing
(warning).""",
        help="set the dataset's masks folder, or remove mask_channel",
    ),
    Code(
        "DBS255",
        WARNING,
        "Schedule setting unused by the LR schedule",
        """\
`schedule.power`, `min_lr_ratio`, `decay_steps`, `t_max`, `t_mult` or `eta_min` given with an `lr_schedule` \
that
does not use it (warning: no effect). `power` shapes polynomial; `min_lr_ratio` cosine_with_min_lr and
warmup_stable_decay; `decay_steps` warmup_stable_decay; `t_max` and `eta_min` the torch schedules
(cosine_annealing, cosine_annealing_warm_restarts), simpletuner_cosine and simpletuner_sine; `t_mult`
cosine_annealing_warm_restarts; `lr_end` polynomial.""",
    ),
    Code(
        "DBS256",
        ERROR,
        "warmup_stable_decay without room for its decay",
        """\
`lr_schedule = "warmup_stable_decay"` needs `decay_steps <= steps - warmup_steps`; the stable phase is what is
left (kohya's num_stable_steps). With 0 decay steps the LR holds to the end.""",
    ),
    Code(
        "DBS257",
        ERROR,
        "Warm-up with a torch scheduler",
        """\
`warmup_steps` with a torch scheduler (`cosine_annealing`, `cosine_annealing_warm_restarts`): torch's \
schedulers have no warm-up and kohya refuses
`lr_warmup_steps` with `lr_scheduler_type`.""",
    ),
    Code(
        "DBS258",
        ERROR,
        "Low-precision weights with an adapter",
        """\
No longer raised: `precision.weights = "bf16"` in a run that trains an adapter holds the adapter weights in
bf16 (kohya's full_bf16 in LoRA runs casts the network); fp16 weights too (kohya's full_fp16).""",
        reserved=True,
    ),
    Code(
        "DBS259",
        ERROR,
        "Low-precision weights under settings they cannot train with",
        """\
`precision.weights = "fp16"` (kohya's full_fp16) with `mixed = "no"` or `"bf16"` (fp16 gradients need fp16
mixed precision and its grad scaler; kohya requires it too) or with `weights_rounding = "stochastic"` (the
default: stochastic rounding is for bf16 only; fp16 weights are stepped by the optimizer directly, set
`"nearest"`); `weights = "bf16"` with `mixed = "no"` or `"fp16"` (kohya requires bf16 mixed precision too), or
with an optimizer whose step reads all parameters together (prodigy, D-Adaptation) under
`weights_rounding = "stochastic"`: the stochastic-rounding step updates one parameter at a time
(`weights_rounding = "nearest"`, kohya's full_bf16, runs any optimizer). See docs/memory.md.""",
    ),
    # Adapters (LoCon, DoRA, LoHa, LoKr options): DBS260-DBS264.
    Code(
        "DBS260",
        ERROR,
        "Adapter options that cannot train together",
        """\
Adapter options that cannot train together: a lora, loha, lokr or dylora adapter's `alpha = 0` (its updates
would be scaled to nothing; a negative alpha trains them with their sign flipped, as LyCORIS and kohya keep
it); `conv_rank` above 0 with `conv_alpha = 0` (the convolution updates would be scaled to nothing) or with no
`conv_targets`; a module named both in `denoiser_targets` and in `conv_targets` (it would get two ranks);
`factor = 0` for LoKr (-1 splits near the square root, or give a divisor of the layer widths); LoRA on
convolutions with `precision.quantize_denoiser` (peft's LoRA convolution cannot run on a quantised layer; LoHa
and LoKr can; `quantize_backend = "cast"` keeps float layers, so LoRA wraps them).""",
    ),
    Code(
        "DBS261",
        WARNING,
        "A convolution-adapter option without `conv_rank`",
        """\
`conv_alpha` or `conv_targets` (or, for LoRA, `tucker`) is set but `conv_rank = 0`, so no convolution gets an
adapter (warning). Set `conv_rank` to adapt the convolutions (LoCon), or remove the option.""",
        help="set adapter.conv_rank (e.g. 8), or remove the option",
    ),
    Code(
        "DBS262",
        ERROR,
        "Nesterov momentum without momentum",
        """\
`optimizer.nesterov = true` with `momentum = 0`: torch's SGD refuses Nesterov without momentum, so the run
would fail before its first step. Set `momentum` (kohya's SGDNesterov uses 0.9).""",
    ),
    Code(
        "DBS263",
        WARNING,
        "second text encoder option on a one-encoder model",
        """\
`train.text_encoder_2` is set, but the model has one text encoder (SD1, SD2): the option only selects whether
SDXL's second text encoder trains, so it has no effect. Resolved at plan time, when the family is known.""",
    ),
    Code(
        "DBS264",
        WARNING,
        "second text encoder rate while it is frozen",
        """\
`optimizer.text_encoder_2_lr` is set while `train.text_encoder_2 = false`: the second text encoder does not
train, so its rate is not used (the plan shows no rate for it).""",
    ),
    Code(
        "DBS265",
        ERROR,
        "An adapter block pattern is not a regular expression",
        """\
`[[adapter.blocks]]` `pattern` is searched in each adapted denoiser module's path as a Python regular
expression (`re.search`), `[[adapter.text_encoder_blocks]]` `pattern` in each text-encoder module's
`<component>.<path>`, and so is each of a full, ia3, diag-oft or boft adapter's `exclude` patterns; this
one does not compile. Dots match any character: escape them (`^down_blocks\\.0\\.`).""",
    ),
    Code(
        "DBS266",
        WARNING,
        "A block's convolution rank without convolution adapters",
        """\
`[[adapter.blocks]]` `conv_rank` is set while `adapter.conv_rank` is 0: no convolution is adapted, so the
block's convolution rank is not used (kohya builds convolution LoRA only with `conv_dim` or
`conv_block_dims`).""",
    ),
    Code(
        "DBS267",
        ERROR,
        "LoRA down-projection, rank or module dropout, or a multiplier, with DoRA",
        """\
`adapter.down_dropout`, `adapter.rank_dropout`, `adapter.module_dropout` or `adapter.multiplier` on a LoRA
adapter with `dora = true`: these are kohya networks.lora's LoRAModule.forward on plain LoRA layers, which
DoRA's layers do not have. LyCORIS's weight decomposition (`dora_form = "lycoris"`) takes `module_dropout`
and `rank_dropout` with `rank_dropout_form = "lycoris"` as LoConModule with `dora_wd` draws them (the skip
draw, then the mask over the rebuilt update's output rows, renormalised with the rest); with
`fused_projections` a fused layer's parts share one draw (per input column the one norm spans every part's
masked rows), beside `[[adapter.blocks]]` of other kinds too.""",
    ),
    # [distributed]: FSDP and DeepSpeed ZeRO (DBS268, DBS269; the target's DBS319, DBS328, DBS329).
    Code(
        "DBS268",
        ERROR,
        "Distributed settings that cannot run together",
        """\
`[distributed]` settings that contradict each other or the rest of the spec: `zero_offload_params` with
`zero_stage = 2` (ZeRO-2 never shards weights); `adamw8bit` under FSDP or ZeRO-Offload (bitsandbytes' 8-bit
kernels need whole tensors on the GPU), and so `lion8bit`, `paged_lion`, `paged_lion8bit` under FSDP (the
8-bit ones under ZeRO-Offload too); a trained text encoder (accelerate prepares one model for FSDP2 and
DeepSpeed); `schedule.accumulation` > 1 under DeepSpeed (its engine counts accumulation itself); and what
dbspec does not yet run on sharded models: validation images, evaluation metrics, EMA, pivotal tuning, bf16
trained weights and a quantised base. Use `strategy = "ddp"` for such runs (docs/distributed.md).""",
    ),
    Code(
        "DBS269",
        WARNING,
        "A distributed setting the chosen strategy does not use",
        """\
An FSDP setting (`fsdp_*`) with another strategy, or a ZeRO setting (`zero_*`) without `strategy =
"deepspeed"` (warning): it has no effect.""",
    ),
    Code(
        "DBS270",
        WARNING,
        "An optimizer option the chosen kind does not use",
        """\
An optimizer option the chosen `optimizer.kind` does not use (warning): the D-Adaptation settings (`d0`,
`growth_rate`, `decouple`, `use_bias_correction`, `no_prox`) outside the dadapt_* kinds that take them,
Adafactor's (`relative_step`, `scale_parameter`, `warmup_init`) with another kind, `decoupled_weight_decay`
outside radam, or `min_8bit_size` outside bitsandbytes' 8-bit kinds.""",
    ),
    Code(
        "DBS271",
        WARNING,
        "D-Adaptation with a small learning rate",
        """\
D-Adaptation with a small learning rate (warning): the dadapt_* optimizers estimate the step size d and step
by d x lr, so lr is a multiplier that kohya advises to keep around 1.0 (it warns at lr <= 0.1).""",
    ),
    Code(
        "DBS272",
        ERROR,
        "Adafactor's relative step with an LR schedule",
        """\
Adafactor with `relative_step = true` computes its learning rate itself (min(1e-2, 1/sqrt(step)), or with
`warmup_init` min(1e-6 step, 1/sqrt(step))), so `schedule.lr_schedule` must stay "constant" without
`warmup_steps` (kohya replaces the schedule by its adafactor scheduler, and raises on a warm-up), and
`warmup_init` needs `relative_step`.""",
    ),
    Code(
        "DBS273",
        ERROR,
        "one_cycle or cyclic settings torch refuses",
        """\
`lr_schedule = "one_cycle"` is torch's OneCycleLR, which raises when stepped past its total_steps
(`schedule.t_max`, 0 = the run's steps); it and `"cyclic"` (torch's CyclicLR) raise, with `cycle_momentum`, on
an optimizer without momentum or betas (Adafactor).""",
    ),
    Code(
        "DBS274",
        EITHER,
        "D-Adaptation or Prodigy with different learning rates per parameter group",
        """\
The D-Adaptation optimizers and Prodigy take one learning rate: prodigy, dadapt_adam, dadapt_adam_preprint,
dadapt_lion and dadapt_sgd raise when parameter groups (the denoiser, the text encoders' groups: T5-XXL's
too, at the family's rate, checked again by `dbspec plan` with the detected family, LoRA+'s up matrices,
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` with their own `lr` or `lr_scale`, a full
fine-tune's `[[optimizer.blocks]]`, the pivotal tokens) have different rates (error; a group at rate 0
beside one common rate is allowed); dadapt_adan, dadapt_adan_ip and dadapt_adagrad step every group at d x
the first group's rate, so the other rates have no effect (warning, as kohya warns). With `optimizer.split`
(kohya's `--fused_optimizer_groups`) each optimizer holds
one rate: nothing to report.""",
    ),
    Code(
        "DBS275",
        ERROR,
        "The best-checkpoint metric does not run",
        """\
`checkpoints.select` names a metric that this run does not compute: `eval_loss` needs `evaluation.holdout`
(images held out of training) or a dataset with `role = "eval"`; `clip_t`, `clip_i` and `dino` must be
listed in `evaluation.metrics`.""",
    ),
    Code(
        "DBS276",
        ERROR,
        "The subject's identifier or class word is unknown",
        """\
CLIP-T replaces the subject's identifier by its class word; CLIP-I and DINO compare the validation images
whose prompt names the identifier. Set `evaluation.identifier` and `evaluation.class_word`, or give the
instance and class datasets prompts that differ by one word (`a photo of ohwx dog` / `a photo of a dog`).""",
    ),
    Code(
        "DBS277",
        ERROR,
        "Evaluation metrics without validation prompts",
        """\
`evaluation.metrics` score the validation images, but `validation.prompts` is empty, so there are none.""",
    ),
    Code(
        "DBS278",
        ERROR,
        "More evaluation bands than timesteps",
        """\
`evaluation.bands` splits the `evaluation.timesteps` fixed timesteps into bands; each band needs at least
one.""",
    ),
    Code(
        "DBS279",
        WARNING,
        "No validation prompt names the subject",
        """\
CLIP-I and DINO compare the validation images of prompts that contain `evaluation.identifier` with the real
instance images; no validation prompt contains it, so those metrics have no image to score.""",
    ),
    Code(
        "DBS280",
        ERROR,
        "Pivotal tuning with a text encoder that trains",
        """\
`pivotal.tokens` train new token embeddings in the text encoders' embedding matrices while
`train.text_encoder` (or `train.text_encoder_2`) trains the text encoders themselves: the two would update the
same matrix. diffusers' advanced script refuses the pair too. Train either the new tokens or the text
encoders.""",
        help="remove train.text_encoder / train.text_encoder_2, or pivotal.tokens",
    ),
    Code(
        "DBS281",
        ERROR,
        "A pivotal token that cannot be added",
        """\
A `pivotal.tokens` entry is empty, holds whitespace, or repeats another one (a token of N vectors also adds
`tok_1` .. `tok_{N-1}`, which must not collide with another token). Write each new token once, as one word,
e.g. `<ohwx>`.""",
    ),
    Code(
        "DBS282",
        WARNING,
        "A pivotal token no instance prompt contains",
        """\
Every instance dataset has a fixed `prompt`, and none contains this `pivotal.tokens` entry: its embedding
never receives a gradient and stays at its initial value.""",
        help='write the token in the instance prompts, e.g. "a photo of <ohwx> dog"',
    ),
    Code(
        "DBS283",
        WARNING,
        "The pivotal stop step is not below the run",
        """\
`pivotal.stop_step` is not below the run's step count, so the embeddings train the whole run: the same as
`stop_step = 0`.""",
        help="use a stop step below the run's steps (diffusers' default stops at half the run), or 0",
    ),
    Code(
        "DBS284",
        WARNING,
        "A pivotal option while pivotal tuning is off",
        """\
A `[pivotal]` key is set while `pivotal.tokens` is empty: no token is added, so the key changes nothing.""",
        help="list the new tokens in pivotal.tokens, or remove this key",
    ),
    Code(
        "DBS285",
        WARNING,
        "A preview option that has no effect",
        """\
A `[validation]` preview option is set but cannot act: validation is off (`prompts` is empty), previews are
off (`preview_every = 0`, so `preview_model`, `webhook` and `webhook_timeout` are unused), or `preview_every`
is above `validation.steps`, so no sampling step would be decoded. See [report.md](report.md).""",
        help="set validation.preview_every (and validation.prompts), or remove this key",
    ),
    Code(
        "DBS286",
        ERROR,
        "The preview webhook is not an http(s) URL",
        """\
`validation.webhook` must be an `http://` or `https://` URL with a host: each preview is POSTed to it as JSON
(a base64 PNG and where it comes from). Failures to deliver are logged while training and never stop it.""",
    ),
    Code(
        "DBS287",
        ERROR,
        "An optimizer kernel for an optimizer that has none",
        """\
`optimizer.implementation = "foreach"` or `"fused"` picks one of torch's kernels for torch's own AdamW and SGD
(`kind = "adamw"` or `"sgd"`); the other kinds come from other libraries, which have no such switch.""",
    ),
    Code(
        "DBS288",
        WARNING,
        "An export format without an export",
        """\
`checkpoints.export_format` ("ckpt" or "pt": a pickle torch file, as kohya's save_model_as writes it) applies
to the files `checkpoints.exports` names (`single_file`, `kohya_lora`); with no export, nothing is written in
that format: `final/` and the checkpoints always hold diffusers safetensors weights.""",
    ),
    Code(
        "DBS289",
        ERROR,
        "Image metrics on a family that refines images",
        """\
`evaluation.metrics` names clip_t, clip_i or dino on a family whose validation refines dataset images (the
SDXL refiner): those metrics score images sampled from `validation.prompts`, which it does not sample, and a
refinement of a training image scored against the training images says nothing about fidelity. The
evaluation loss (`evaluation.holdout`) works on every family.""",
        help="remove them from evaluation.metrics; evaluation.holdout scores held-out images on any family",
    ),
    Code(
        "DBS290",
        WARNING,
        "warm-up with SimpleTuner's cosine or sine",
        """\
`schedule.warmup_steps` is set with `lr_schedule = "simpletuner_cosine"` or `"simpletuner_sine"`, which have
no warm-up: SimpleTuner's cosine and sine waves start at step 0 and use its lr_warmup_steps as their period
(`schedule.t_max`).""",
    ),
    Code(
        "DBS291",
        ERROR,
        "weighted best-checkpoint rule without weights",
        """\
`checkpoints.select = "weighted"` while every `checkpoints.select_weight_*` is 0: the rule has nothing
to sum.""",
        help="give a weight to at least one metric, e.g. checkpoints.select_weight_dino = 1.0",
    ),
    Code(
        "DBS292",
        ERROR,
        "weighted best-checkpoint rule on a metric that does not run",
        """\
A `checkpoints.select_weight_*` weighs a metric no evaluation computes: eval_loss without held-out images
(`evaluation.holdout` 0, no `role = "eval"` dataset), or a CLIP/DINO metric missing from
`evaluation.metrics`.""",
    ),
    Code(
        "DBS293",
        WARNING,
        "best-checkpoint weight without the weighted rule",
        """\
A `checkpoints.select_weight_*` is set while `checkpoints.select` is not `"weighted"`: the weight does nothing
(warning).""",
        help='set checkpoints.select = "weighted", or remove the weight',
    ),
    Code(
        "DBS294",
        ERROR,
        "A refinement with no denoising step",
        """\
`validation.steps` x `validation.strength` is below 1 on a family that refines images (the SDXL refiner):
diffusers' img2img pipelines run int(steps x strength) denoising steps, so validation would run none and
fail.""",
        help="raise validation.steps (or validation.strength) so that steps x strength >= 1",
    ),
    Code(
        "DBS295",
        WARNING,
        "identifier splits into many tokens",
        """\
An instance prompt's identifier (the one word it has and the class prompts lack) is three or more tokens for a
tokenizer of the model: the text encoder sees several unrelated pieces, each with its own meaning, instead of
one rare token to attach the subject to. `dbspec tokens MODEL` lists words that are one token in every
tokenizer of the model (both for SDXL), rarest first.""",
    ),
    Code(
        "DBS296",
        WARNING,
        "identifier with a strong prior",
        """\
The identifier is a word the model already knows well: a common word, or one known to carry a meaning, like
`sks` (a rifle: the diffusers DreamBooth blog's users saw it in their samples). Training has to override that
meaning, and prompts that use the word elsewhere drift. Use a rare token (`dbspec tokens MODEL`), or a
descriptive word deliberately.""",
    ),
    Code(
        "DBS297",
        WARNING,
        "scheduled-sampling option while rollout is off",
        """\
A `[scheduled_sampling]` key is set while `max_step_offset = 0` or `probability = 0`: no sample is rolled out,
so the key changes nothing (the plan shows no rollout).""",
    ),
    Code(
        "DBS298",
        WARNING,
        "scheduled-sampling ramp longer than the run",
        """\
`scheduled_sampling.ramp_steps` is not below the run's step count: the rollout probability ramps linearly
from 0 and never reaches `probability` before the run ends.""",
    ),
    # --- DBS3xx: data, models and the target machine (`dbspec plan`) ----------------------------------------
    Code(
        "DBS299",
        ERROR,
        "Output preservation without a denoiser adapter",
        """\
A dataset with `preserve_output = true` trains towards the base model's own prediction: the
denoiser's adapter is switched off for one extra no-grad forward over that dataset's samples, and its
output becomes their loss target (kohya's `diff_output_preservation`). That needs an `[adapter]` (a full
fine-tune has none to switch off; with the adapter on the text encoder only the target is the prediction
itself, DBS609), and a dataset that trains (not `role = "eval"`). For a full fine-tune, `loss.prior =
"base_model"` with a class dataset keeps a frozen copy instead.""",
        help='add an [adapter] (e.g. kind = "lora") that trains the denoiser, or remove preserve_output',
    ),
    Code(
        "DBS301",
        ERROR,
        "A dataset folder is missing or not a folder",
        """\
A dataset folder is missing or not a folder.""",
    ),
    Code(
        "DBS302",
        ERROR,
        "A dataset folder has no images",
        """\
A dataset folder has no images (png, jpg, jpeg, webp, bmp).""",
    ),
    Code(
        "DBS303",
        EITHER,
        "An image that cannot be read",
        """\
An image that cannot be read (corrupt, or not an image).""",
        help="re-export the image or remove it",
    ),
    Code(
        "DBS304",
        EITHER,
        "A zero-byte image file",
        """\
A zero-byte image file.""",
        help="the file is empty: copy it again or remove it",
    ),
    Code(
        "DBS305",
        WARNING,
        "Files in a dataset folder that dbspec does not read",
        """\
Files in a dataset folder that dbspec does not read, so they will not train (warning): any extension but png,
jpg, jpeg, webp and bmp (`.gif`, `.tiff`, `.heic`, `.avif`, a file without an extension...). One warning per
dataset names up to 20 of them and counts the rest. Caption and sidecar files are never listed: the dataset's
`caption_extension` and `.txt`, `.caption`, `.json`, `.npz`, `.toml` (the files kohya and other trainers keep
beside images), nor are hidden files and sub-folders. Convert the files to a format dbspec reads to train on
them.""",
    ),
    Code(
        "DBS306",
        EITHER,
        "An image smaller than the dataset's `min_image_size`",
        """\
An image smaller than the dataset's `min_image_size`.""",
        help="use a larger image, lower `min_image_size`, or remove it",
    ),
    Code(
        "DBS307",
        EITHER,
        "An image over Pillow's decompression-bomb limit",
        """\
An image with more pixels than Pillow's decompression-bomb limit.""",
        help="downscale the image or remove it",
    ),
    Code(
        "DBS308",
        EITHER,
        "A truncated image",
        """\
A truncated image (the end of the file is missing).

Problem images are errors by default; `on_bad_image = "skip"` in the dataset turns them \
into warnings and leaves
the files out, listed by name in the plan.""",
        help="the file was cut short (interrupted copy or download?): copy it again or remove it",
    ),
    Code(
        "DBS309",
        ERROR,
        "A path the spec names cannot be probed",
        """\
A path the spec names cannot even be probed: the operating system refuses it (a name too long for the file
system, no permission to look inside a folder). The message gives the path as resolved \
against the spec's folder
and points at the key that names it.""",
    ),
    Code(
        "DBS310",
        ERROR,
        "The base model cannot be read",
        """\
The base model cannot be read (missing file, corrupt safetensors header, not a diffusers folder, \
unknown built-in).""",
    ),
    Code(
        "DBS311",
        WARNING,
        "A pickle checkpoint without `model.allow_pickle = true`",
        """\
A pickle checkpoint (`.ckpt`) without `model.allow_pickle = true` (warning): it is loaded with
`torch.load(weights_only=True)`, which reads tensors and refuses anything that could run \
code. A file that needs
full unpickling stops the run with an error; `allow_pickle = true` allows it, for files you trust.""",
    ),
    Code(
        "DBS312",
        EITHER,
        "A stated model family or prediction contradicts the weights",
        """\
A stated model family or prediction that contradicts the weights.""",
    ),
    Code(
        "DBS313",
        ERROR,
        "The family or prediction type cannot be detected",
        """\
The family or prediction type cannot be detected; set `model.family` / `model.prediction`.""",
    ),
    Code(
        "DBS314",
        WARNING,
        "A paged optimizer on a target that does not page",
        """\
A paged optimizer kind (`paged_adamw`, `paged_adamw8bit`, `paged_ademamix`, `paged_ademamix8bit`,
`paged_lion`, `paged_lion8bit`: bitsandbytes' Paged* classes) planned for the CPU: bitsandbytes pages
optimizer state to host memory only on CUDA, so on the CPU it runs the unpaged optimizer: the same updates,
bit for bit, the state kept in memory. The run is valid; the warning says that the paging itself is not
there.""",
        "for CPU-only runs `adamw8bit` is what paged_adamw8bit runs there (`lion8bit` what paged_lion8bit "
        "runs); `adamw` (torch's AdamW) is the same update as paged_adamw up to rounding",
    ),
    Code(
        "DBS318",
        ERROR,
        "A quantisation backend on a device it does not run on",
        """\
`precision.quantize_backend` names a library that does not run on the target device: torchao and bitsandbytes
run on CUDA and the CPU; quanto and cast also on MPS.""",
    ),
    Code(
        "DBS319",
        WARNING,
        "FSDP or DeepSpeed planned for one process",
        """\
`strategy = "fsdp"` or `"deepspeed"` for a target with one process (warning): there is nothing to shard
across,
and the run trains as one process does (with DeepSpeed's engine around it). Launch several processes
(`accelerate launch --num_processes N`, `torchrun --nproc_per_node N`), or plan for them with `--target
cuda:80GB:x4`.""",
    ),
    Code(
        "DBS320",
        EITHER,
        "A caption file is missing, unreadable or empty",
        """\
A caption file is missing, unreadable or empty.""",
    ),
    Code(
        "DBS321",
        ERROR,
        "An image has no mask",
        """\
An image has no mask in the masks folder.""",
    ),
    Code(
        "DBS322",
        ERROR,
        "A mask's size differs from its image's",
        """\
A mask's size differs from its image's.""",
    ),
    Code(
        "DBS323",
        EITHER,
        "`mask_from_alpha` on an image without an alpha channel",
        """\
`mask_from_alpha` on an image without an alpha channel.""",
    ),
    Code(
        "DBS324",
        WARNING,
        "Class images generated for another model, prompt, resolution or sampler",
        """\
Class images generated for another base model, prompt, resolution or sampling settings (`generate_scheduler`,
`generate_steps`, `generate_guidance`), or another prompt encoding (`model.max_tokens` over one window, a T5
family's `t5_max_length` or attention masks) (warning: they are regenerated; the old
files are moved aside, never deleted).""",
    ),
    Code(
        "DBS325",
        WARNING,
        "A caption longer than any text encoder reads",
        """\
A caption file is longer than any text encoder reads (over 1 MiB, or a first line over \
10,000 characters): only
the first 10,000 characters are kept, and the plan summary shows captions shortened to one \
line. Text encoders read
77 tokens (225 with long prompts), a few hundred characters.""",
    ),
    Code(
        "DBS326",
        WARNING,
        "An animated image trains on its first frame only",
        """\
An animated image: an animated PNG (APNG) or WebP with more than one frame (warning). It trains, on its first
frame only, as Pillow opens it; one warning per dataset names up to 20 of them with their frame counts. Export
the frames you want as still images to train on them. A camera's multi-picture JPEG (MPO) is \
not an animation.""",
    ),
    Code(
        "DBS327",
        WARNING,
        "A file or folder of a kohya-folders dataset is not used",
        """A dataset with `layout = "kohya_folders"` holds a sub-folder whose name does not start \
with `<repeats>_` (or
whose repeats are below 1), or images directly in the dataset folder (warning). kohya skips \
them too; rename the
folder `10_sks dog` (10 repeats, class tokens "sks dog") to train it.""",
    ),
    Code(
        "DBS328",
        ERROR,
        "A distributed strategy the target cannot run",
        """\
DeepSpeed needs CUDA GPUs (accelerate runs it on GPUs only; its CPU build is another project), and FSDP needs
CUDA GPUs or the CPU: torch has no process-group backend for MPS.""",
    ),
    Code(
        "DBS329",
        WARNING,
        "CPU offload on a CPU target",
        """\
`fsdp_cpu_offload = true` for a CPU target (warning): the state is in CPU memory already; the offload frees
device memory on GPUs only, and the run leaves it off (it would pin host memory, which needs CUDA).""",
    ),
    Code(
        "DBS330",
        ERROR,
        "Bucket bounds that do not fit a dataset's resolution",
        """\
Bucket bounds that do not fit a dataset's resolution.""",
    ),
    Code(
        "DBS331",
        ERROR,
        "An image that fits no bucket",
        """\
An image that fits no bucket.""",
    ),
    Code(
        "DBS332",
        ERROR,
        "No image would train",
        """\
No image would train.""",
    ),
    Code(
        "DBS333",
        WARNING,
        "A bucket holding fewer samples than the batch size",
        """\
A bucket holding fewer samples than the batch size (warning: they train as one smaller \
batch, never dropped).""",
    ),
    Code(
        "DBS334",
        ERROR,
        "The schedule cannot be computed",
        """\
The schedule cannot be computed (e.g. warm-up longer than the run).""",
    ),
    Code(
        "DBS336",
        ERROR,
        "torch.compile on the CPU",
        """\
`precision.compile = true` for a CPU target. With torch 2.13 (CPU build), inductor's compiled backward of the
diffusers UNet gives wrong gradients on the CPU: on the built-in tiny SD1 UNet the loss matches eager
exactly, but 84 of its 208 parameters (the largest convolution weights among them) get an all-zero gradient,
with a fresh inductor cache too (docs/performance.md, "torch.compile, channels-last and optimizer
kernels"). Training would silently follow wrong gradients, so the plan refuses it; GPU targets compile with
Triton kernels instead (not measured here).""",
        help="remove precision.compile, or plan for a GPU with --target cuda:24GB",
    ),
    Code(
        "DBS337",
        EITHER,
        "A fine-tuning metadata file cannot be used",
        """\
A dataset's `metadata` file (kohya's fine-tuning metadata, `--in_json` / `metadata_file`) is missing, is not
UTF-8 JSON (or JSON Lines for a `.jsonl` file), lists no image, or has an entry of the wrong shape: the file
must be an object whose keys are image paths and whose values are objects with an optional `caption` and
`tags` (strings) and `image_size` ([width, height]); each `.jsonl` line an object with `image_path`.
As a warning: an entry's `image_size` differs from the size of its image file; dbspec buckets by the file's
size, kohya by `image_size`.""",
        help="write the file with kohya's finetune/merge_captions_to_metadata.py (or fix the entry named)",
    ),
    Code(
        "DBS338",
        ERROR,
        "An image listed in a fine-tuning metadata file is missing",
        """\
An image key of a dataset's `metadata` file names no image file. An absolute key is the image itself; a
relative key is joined to the dataset's `path` (kohya's image_dir, `--train_data_dir`); a key without an
image extension (the merge scripts write the file stem unless given `--full_path`) is looked for with the
extensions .png, .jpg, .jpeg, .webp and .bmp. kohya's cached `.npz` latents do not stand in for an image:
dbspec encodes and caches its own latents from the image files.""",
        help="point the dataset's `path` at the image folder the keys are relative to, or rewrite the keys",
    ),
    Code(
        "DBS340",
        ERROR,
        "bf16 mixed precision on a target without bf16",
        """\
`mixed = "bf16"` on a target without bf16 (set `bf16_fallback = "fp16"` to fall back).""",
    ),
    Code(
        "DBS341",
        WARNING,
        "fp16 mixed precision on the CPU",
        """\
fp16 mixed precision on the CPU (warning).""",
    ),
    Code(
        "DBS342",
        ERROR,
        "fp8 quantisation below CUDA compute capability 8.9",
        """\
fp8 quantisation on a target below CUDA compute capability 8.9 (with quanto or torchao; the cast backend
stores fp8 and computes in the planned dtype, so it runs anywhere).""",
    ),
    Code(
        "DBS343",
        ERROR,
        "A bitsandbytes optimizer on a target that is neither CUDA nor the CPU",
        """\
A bitsandbytes optimizer (`adamw8bit`, the paged kinds, the AdEMAMix kinds, `lion8bit`) on a target that is
neither CUDA nor the CPU (bitsandbytes runs on both; on the CPU through its CPU backend, proven by
tests/runtime/test_quantize_backends.py, tests/runtime/test_more_optimizers.py and
tests/runtime/test_lion_bnb.py).""",
    ),
    Code(
        "DBS344",
        ERROR,
        "Pivotal tuning on a family without CLIP text encoders only",
        """\
Pivotal tuning adds tokens to CLIP tokenizers and text encoders (SD1, SD2 and SDXL, as diffusers' advanced
script); families with a T5 encoder (SD3, Flux.1) are not supported.""",
        help="remove [pivotal], or use an SD1, SD2 or SDXL base model",
    ),
    Code(
        "DBS347",
        WARNING,
        "Validation prompts on a model whose validation refines dataset images",
        """\
`validation.prompts` on an img2img model family (the SDXL refiner): its validation refines
`validation.refine_images` images of the instance datasets with their captions instead, so the prompts are not
sampled (warning). The plan lists the images it refines.""",
        help="remove validation.prompts; set validation.refine_images and validation.strength",
    ),
    Code(
        "DBS348",
        WARNING,
        "Refiner options on a family without aesthetic-score conditioning",
        """\
`model.aesthetic_score`, `model.negative_aesthetic_score`, `validation.refine_images` or `validation.strength`
set for a model family that has no aesthetic-score conditioning and samples from prompts (every family but the
SDXL refiner): they have no effect (warning).""",
        help="remove the key",
    ),
    Code(
        "DBS349",
        ERROR,
        "Class images generated by a model that only refines images",
        """\
A class dataset with `generate` on an img2img model family (the SDXL refiner): it refines existing images and
cannot sample class images from a prompt. Generate them with the base model, or give a folder of class
images.""",
        help="point the class dataset at existing class images (made with the SDXL base model)",
    ),
    Code(
        "DBS350",
        WARNING,
        "The memory estimate exceeds the target's memory",
        """\
The memory estimate exceeds the target's memory (warning).""",
    ),
    Code(
        "DBS351",
        WARNING,
        "What the run writes exceeds the free disk",
        """\
What the run will write exceeds the free disk where it goes (warning). Kept checkpoints with their training
state and the final weights go to `output.dir`, new latent cache entries to `cache.dir`; \
each is measured at its
folder (resolved against the spec's folder, symlinks followed; the nearest existing parent when the folder is
not made yet). Folders on one device (`st_dev`) share its free space, so their needs add \
up; on two devices each
is compared with its own. The message names the folder measured, the bytes needed and free. Checked only when
planning on the machine that runs (not with `--target`, which plans for another machine).""",
    ),
    Code(
        "DBS352",
        ERROR,
        "Weighted captions on a family without CLIP-window prompts",
        """\
`model.weighted_captions` on SD3 or Flux: their prompts also go through T5, and weighted captions (kohya's
`--weighted_captions`) scale CLIP token hidden states, which kohya does for SD 1.x, SD 2.x and SDXL only.""",
        help="remove model.weighted_captions (write captions without attention syntax)",
    ),
    # --- DBS4xx: converting legacy configs (`dbspec convert`) -----------------------------------------------
    Code(
        "DBS355",
        ERROR,
        "bf16 weights on a target without bf16",
        """\
`precision.weights = "bf16"` on a target without bf16 support.""",
    ),
    Code(
        "DBS356",
        ERROR,
        "The LoRA file a run starts from does not fit the adapter",
        """\
`adapter.init_weights` (kohya `--network_weights`) names a kohya-layout LoRA whose layers, ranks or alphas are
not the adapter's: a layer its targets do not name (`denoiser_targets`, `text_encoder_targets`,
`conv_targets`), a `lora_down` with another rank than `rank` (`conv_rank` for 3x3 convolutions), an `alpha`
other than `alpha` (`conv_alpha`), a prefix of no model of the family, or a DoRA adapter (the file holds no
magnitudes). The message names the file and the first tensor that differs. kohya fails on a shape mismatch
too, and keeps its network's alpha for training while saving the file's; dbspec asks for one alpha, unless
`adapter.init_alpha = "ignore"` (kohya's training: the file's alphas unread, the export the trained one).
That every adapted layer has its tensors in the file is checked when the run loads it. Flux and SD3 files
(networks.lora_flux / lora_sd3) name the original model's fused layers: a fused layer's `lora_down` has the
adapter's rank (one down shared by its parts) or the rank times its parts (`split_qkv`: the parts' downs
stacked, which shared downs, `fused_projections = true`, cannot take), and its alpha is the adapter's (or, a
split layer, the adapter's times the parts, as dbspec's export writes it).""",
    ),
    Code(
        "DBS357",
        ERROR,
        "The LoRA file a run starts from cannot be read",
        """\
`adapter.init_weights` is missing, not a safetensors file, or not in kohya's LoRA layout (`lora_unet_*` /
`lora_te*_*` modules with `.lora_down.weight`, `.lora_up.weight` and `.alpha`). LyCORIS files (LoHa, LoKr,
`dora_scale`) cannot start a LoRA run; export a dbspec LoRA run with
`checkpoints.exports = ["kohya_lora"]`.""",
    ),
    Code(
        "DBS358",
        WARNING,
        "The LoRA file holds layers of a model that does not train",
        """\
`adapter.init_weights` holds LoRA layers of a text encoder (or the denoiser) that this run does not train
(`train.*`): they are not loaded, as kohya drops the networks of models it does not train before loading.""",
    ),
    Code(
        "DBS359",
        ERROR,
        "A face-crop image smaller than the resolution",
        """\
An image with a face box (`name_cx_cy_w_h.ext`) in a dataset with `face_crop` is smaller than the resolution
on a side. kohya's face crop only scales down (its scale is at most 1) and asserts that the scaled image still
covers the resolution (`internal error. small scale`).""",
        help="use a larger image, a lower resolution, or rename the file without the face box",
    ),
    Code(
        "DBS360",
        ERROR,
        "A face box that cannot be read",
        """\
A file name in a dataset with `face_crop` has five or more `_`-separated parts, so kohya reads its last four
as the face box `cx_cy_w_h`, but they are not all integers (kohya's `int()` raises), the face size is 0 with a
face centre (kohya divides by it), or the image carries an EXIF rotation in a dataset with
`exif_orientation = "apply"` (kohya reads the box in the stored pixel grid without rotating; dbspec would
train the rotated image, so the box would land elsewhere).""",
        help="rename the file to `name_cx_cy_w_h.ext` with integer pixels, save the image upright, or set "
        'exif_orientation = "ignore" (the stored pixels, as kohya)',
    ),
    Code(
        "DBS364",
        ERROR,
        "The evaluation holdout leaves no image to train",
        """\
`evaluation.holdout` takes that many images of the instance dataset out of training; the dataset must keep at
least one.""",
    ),
    Code(
        "DBS365",
        ERROR,
        "The holdout dataset is no instance dataset",
        """\
`evaluation.holdout_dataset` must name a `[[datasets]]` entry with `role = "instance"`.""",
    ),
    Code(
        "DBS366",
        ERROR,
        "An evaluation model is not available offline",
        """\
`evaluation.clip_model` or `evaluation.dino_model` is neither a local model folder (with `config.json`) nor in
the local Hugging Face cache. Planning never downloads: `dbspec plan --download` fetches it.""",
    ),
    Code(
        "DBS367",
        WARNING,
        "No checkpoint step before the end is evaluated",
        """\
`checkpoints.select` picks among checkpoints saved at an evaluation step (the validation steps); no checkpoint
step before the last is one, so only the end of the run can be chosen.""",
    ),
    Code(
        "DBS368",
        WARNING,
        "fp16 trained weights lose small updates",
        """\
`precision.weights = "fp16"` (kohya's full_fp16): the trained weights, gradients and (for most optimizers)
optimizer state are fp16. With 10 mantissa bits, round-to-nearest loses every update under 2^-11 of a weight
(at fine-tuning learning rates most are); gradients under 2^-24 flush to zero and values past 65504 overflow.
The loss is scaled by a dynamic grad scaler (torch's defaults, as accelerate's: 2^16 to start, halved and the
step skipped when the fp16 gradients hold inf or NaN, doubled after 2000 finite steps). bf16 weights with
stochastic rounding, or fp32 weights under fp16 autocast, keep small updates (warning). See
docs/memory.md.""",
        help='use weights = "bf16" (stochastic rounding) on a target with bf16, or fp32 weights',
    ),
    Code(
        "DBS370",
        WARNING,
        "The preview model is not in the local Hugging Face cache",
        """\
The Tiny AutoEncoder that decodes live previews (`validation.preview_model`, or the family's default) is a
hub id not in the local Hugging Face cache. `dbspec plan --download` fetches it; otherwise the run tries to
download it when it first validates (unless `HF_HUB_OFFLINE` is set) and, if it cannot, samples without
previews (a note says so; training goes on).""",
    ),
    Code(
        "DBS371",
        ERROR,
        "The preview model is not a Tiny AutoEncoder",
        """\
`validation.preview_model` names a folder that is missing or does not hold a diffusers `AutoencoderTiny`
(`config.json` with `"_class_name": "AutoencoderTiny"`), an unknown built-in, or a Tiny AutoEncoder whose
latent channels differ from the base model's.""",
    ),
    # Per-component weight files (model.denoiser_file, text_encoder_files, a model.vae file): DBS372-375.
    Code(
        "DBS372",
        ERROR,
        "A component weight file cannot be read",
        """\
`model.denoiser_file`, an entry of `model.text_encoder_files` or a `model.vae` file is missing, is not a
file, or is not a readable `.safetensors` file (its header is truncated or corrupt). dbspec reads the header
of each component file when it plans, without loading the tensors.""",
        help="check the path (relative paths resolve against the spec's folder); convert .ckpt/.pt files to "
        ".safetensors",
    ),
    Code(
        "DBS373",
        ERROR,
        "A component weight file does not hold that component",
        """\
The tensor names of a component file do not look like the component it is given for: a denoiser file
without the family's blocks (Flux: `double_blocks.` or `single_transformer_blocks.`; SD3: `joint_blocks.` or
`pos_embed.proj.weight`; U-Nets: `input_blocks.` or `down_blocks.`, each after an optional
`model.diffusion_model.`), a text-encoder file without that encoder's embedding (CLIP:
`embeddings.token_embedding.weight`, or OpenCLIP's `transformer.resblocks.0.attn.in_proj_weight`; T5:
`encoder.block.0.layer.0.SelfAttention.k.weight`) or holding several
with none under the family's single-file prefix, an encoder whose width differs from model.base's config,
or an autoencoder file without encoder blocks or with other latent channels than the family's. The message
says what the file seems to hold; files in the same order as kohya's flags (`--clip_l`, `--clip_g`, `--t5xxl`)
are often swapped.""",
        help="give each file for its own component, in the family's order (model.text_encoder_files)",
    ),
    Code(
        "DBS374",
        ERROR,
        "More text-encoder files than the family has text encoders",
        """\
`model.text_encoder_files` has one entry per text encoder of the family, in its order (SD1, SD2: 1; SDXL: 2;
SD3: 3; Flux: 2); this list is longer. An empty string keeps the base model's encoder.""",
        help="remove the extra entries",
    ),
    Code(
        "DBS375",
        WARNING,
        "Component files over a base model not in the local cache",
        """\
Component weight files are given, and `model.base`, which supplies the configs, tokenizers and the
components without a file, is a hub id that is not in the local Hugging Face cache (warning). The run
downloads what it needs of it (configs and tokenizers; the weights of components without a file); with
`HF_HUB_OFFLINE` set it cannot start. Gated models (FLUX.1-dev) need `huggingface-cli login` first.""",
        help="run `dbspec plan --download` first (configs and tokenizers, not the weights the files "
        "replace), or set model.base to a local diffusers folder of the family",
    ),
    # Weights & Biases logging ([logging] wandb): DBS379.
    Code(
        "DBS379",
        ERROR,
        "Weights & Biases logging without wandb installed",
        """\
`logging.wandb = true` but the `wandb` package is not installed where dbspec runs, so the run could not log
to Weights & Biases. `dbspec check` and `dbspec plan` say so before anything trains; a run started anyway
stops before its first step. `dbspec convert` writes a converted spec anyway and reports it as a warning.""",
        help="pip install wandb (or pip install 'dbspec[wandb]'), or set logging.wandb = false",
    ),
    Code(
        "DBS380",
        ERROR,
        "A prediction type the family does not train with",
        """\
`model.prediction = "flow_matching"` on a DDPM family (SD1, SD2, SDXL), or `"epsilon"` / `"v_prediction"` on a
flow-matching family (SD3): the family's objective decides it.""",
        help="remove model.prediction (auto picks the family's)",
    ),
    Code(
        "DBS381",
        ERROR,
        "An export format the family cannot write",
        """\
A `checkpoints.exports` format the model family has no writer for. SD3 and Flux write no original-layout
single file; they write `kohya_lora` (kohya's networks/lora_sd3.py and networks/lora_flux.py layouts; Flux's
ComfyUI, Forge and diffusers load) for plain LoRA runs, not for LoCon, DoRA, LoHa or LoKr.""",
        help="remove the format: the diffusers folder (or diffusers LoRA file) is always written",
    ),
    Code(
        "DBS382",
        ERROR,
        "A sampling scheduler of the other objective",
        """\
`validation.scheduler` or a dataset's `generate_scheduler` names a DDPM scheduler (ddim, euler, ...) for a
flow-matching model (SD3), or `flow_euler` for a DDPM model (SD1, SD2, SDXL). Left unset, the plan picks
`flow_euler` for flow-matching models.""",
        help="remove the option to use the family's scheduler",
    ),
    Code(
        "DBS383",
        ERROR,
        "Several CLIP windows on a family that encodes one",
        """\
`model.max_tokens` above 75 on SD3: its pipeline encodes one CLIP window and reads longer prompts through T5
(`model.t5_max_length`).""",
        help="remove model.max_tokens; raise model.t5_max_length for longer prompts",
    ),
    Code(
        "DBS384",
        ERROR,
        "DyLoRA with several processes",
        """\
`adapter.kind = "dylora"` trains one drawn block of each layer per step and leaves the others without a
gradient. With several processes each would draw its own blocks, and DDP's gradient reduction expects the same
parameters to have gradients on every process, so dbspec trains DyLoRA in one process only.""",
        help="train with one process, or another adapter kind",
    ),
    Code(
        "DBS386",
        WARNING,
        "A bucket taller or wider than the scaled position table it picks",
        """\
With `model.scaled_pos_embed`, each denoiser forward picks one of kohya's scaled position tables by the
latent's patch area (one table per dataset resolution, its grid 1.5 times the resolution's patched side). A
bucket whose patched height or width exceeds the grid of the table its area picks makes the run add a table
for that side, as kohya does (and logs); later forwards may then pick the added table, so
which table a bucket gets can depend on the order the batches come in. The run logs each table it adds, and
checkpoints keep them, so a resumed run picks as the uninterrupted one.""",
        help="narrow the bucket range (buckets.min_size / max_size), or accept the added tables",
    ),
    Code(
        "DBS387",
        WARNING,
        "The starting LoRA file holds layers the adapter does not adapt",
        """\
With `adapter.init_partial = true` the starting file (`adapter.init_weights`) loads as kohya loads
`--network_weights` (`load_state_dict(strict=False)`): a file layer whose name is not among the adapter's
targets is ignored, and an adapted layer the file lacks keeps its random init. This warning names how many
file layers are ignored and the first one.""",
        help="check that the file is the one meant, or set the adapter's targets to the file's layers",
    ),
    Code(
        "DBS389",
        ERROR,
        "A first chunk stepped per micro-batch under fp16 mixed precision",
        """\
`optimizer.split_first_step = "micro_batch"` (kohya's `--fused_optimizer_groups` with
`gradient_accumulation_steps` > 1) steps the first chunk's optimizer between micro-batches, outside the grad
scaler that fp16 mixed precision needs (`precision.mixed = "fp16"`, or `"auto"` picking it on a GPU without
bf16): it would read gradients still multiplied by the loss scale. That is kohya's own arrangement, which
`precision.fp16_gradients = "scaled_first"` (or `"scaled"`) says; without it dbspec does not run that.""",
        help='set precision.fp16_gradients = "scaled_first" (kohya\'s), use precision.mixed = "bf16" or '
        '"no", or split_first_step = "step"',
    ),
    # LyCORIS BOFT on a layer width its power2factorization cannot split: DBS390.
    Code(
        "DBS390",
        ERROR,
        "A layer LyCORIS's BOFT cannot split into blocks",
        """\
`adapter.kind = "boft"` splits each targeted layer's w output rows into w / b blocks of b rows, b even and at
most `block_size`, w / b a power of two (LyCORIS's power2factorization); so does a `kind = "boft"` block of
another adapter kind's run on its layers, b at most the block's rank (a fused layer: its parts' stacked
rows). A targeted layer of the base model
whose width has no such split cannot train (LyCORIS raises on it too): the message names the layers and the
help line the smallest block size that splits them all. The widths are read from the model's safetensors
headers when its diffusers folder is on this machine; otherwise the layer is refused, named, when the adapter
is built.""",
    ),
    # LoRA files merged into the base (model.merge_adapters, kohya --base_weights): DBS391-DBS392.
    Code(
        "DBS391",
        ERROR,
        "A LoRA file to merge is missing or does not fit",
        """\
A file in `model.merge_adapters` is not there, is not a LoRA `.safetensors` file in kohya's layout
(`lora_unet_*` / `lora_te*_*` modules with `lora_down.weight`, `lora_up.weight` and an optional `alpha`), or
names a model this family has not (an SDXL file's `lora_te2_` on SD 1.5). A Flux or SD3 file (kohya's
lora_flux / lora_sd3 layout) needs an `alpha` for every module kohya merges: their network from weights stops
without one. dbspec reads only its header and the alpha values at plan time.""",
    ),
    Code(
        "DBS392",
        ERROR,
        "A merged SD3 LoRA module dbspec cannot place",
        """\
Flux and SD3 files in `model.merge_adapters` are in kohya's lora_flux / lora_sd3 layout (the original model's
module names, q/k/v in one fused layer) and are merged as flux_train_network.py / sd3_train_network.py merge
them, each diffusers part receiving its rows of the fused update. kohya's lora_sd3 also merges a file's
`lora_unet_x_embedder` (the patch embedding, a Conv2d), which dbspec does not map onto diffusers'
`pos_embed.proj`: such a file is refused at plan time.""",
        help="remove the x_embedder module from the file, or merge the file with another tool first",
    ),
    # schedule.start_step / start_epoch past the run's end: DBS393 (plan time, once the step count is known).
    Code(
        "DBS393",
        ERROR,
        "A start step at or past the run's end",
        """\
`schedule.start_step`, or `schedule.start_epoch`'s first step ((start_epoch - 1) x the plan's steps per
epoch), is not below the run's optimizer steps, so the run would train nothing. kohya stops the same way
(`max_train_steps should be greater than initial step`).""",
        help="start earlier, or train more steps or epochs",
    ),
    # LoRA-GGPO (adapter.ggpo, kohya networks.lora_flux) on a family other than Flux: DBS396 (plan time).
    Code(
        "DBS396",
        ERROR,
        "LoRA-GGPO on a family kohya does not perturb",
        """\
`adapter.ggpo` is kohya's LoRA-GGPO, which only networks.lora_flux implements (flux_train_network.py);
lora_sd3 and networks.lora have no `ggpo_sigma` / `ggpo_beta`. The model's family, as the plan resolves it
(`model.family = "auto"` detected from the files), is not Flux.""",
        help="remove adapter.ggpo, or train a Flux model",
    ),
    # train.t5 (LoRA on T5-XXL, kohya's train_t5xxl) on a model without T5: DBS397 (plan time).
    Code(
        "DBS397",
        ERROR,
        "train.t5 on a model without T5-XXL",
        """\
`train.t5 = true` trains the T5-XXL text encoder of Flux or SD3 with LoRA (kohya's lora_flux / lora_sd3
`train_t5xxl=True`). The other families (SD1, SD2, SDXL) have no T5 encoder.""",
        help="remove train.t5, or train a Flux or SD3 model",
    ),
    # train.text_encoder on a family whose only text encoder is T5 (Chroma): DBS398 (plan time).
    Code(
        "DBS398",
        WARNING,
        "train.text_encoder on a model whose only text encoder is T5-XXL",
        """\
`train.text_encoder` trains the CLIP text encoders. Chroma has none: its only text encoder is T5-XXL, which
`train.t5 = true` trains with LoRA (kohya's lora_flux `train_t5xxl=True`) at `optimizer.text_encoder_lr`.""",
        help="remove train.text_encoder; set train.t5 = true to train T5-XXL with LoRA",
    ),
    # optimizer.text_encoder_3_lr on a family without a third text encoder: DBS399 (plan time).
    Code(
        "DBS399",
        WARNING,
        "optimizer.text_encoder_3_lr on a model without a third text encoder",
        """\
`optimizer.text_encoder_3_lr` is the rate of the third text encoder, SD3's T5-XXL (kohya lora_sd3's third
`text_encoder_lr` value). Other families have no third encoder, so it changes nothing; Flux's T5-XXL is its
second text encoder and trains at `optimizer.text_encoder_2_lr`.""",
        help="remove optimizer.text_encoder_3_lr (Flux: set optimizer.text_encoder_2_lr)",
    ),
    Code(
        "DBS401",
        ERROR,
        "A legacy input cannot be read",
        """\
A legacy input cannot be read: the command file, `--config_file`, dataset config, `config.json` or
`multidatabackend.json` is missing, not UTF-8, or not valid TOML/JSON; or the command runs a \
script the converter
does not know; or a file the conversion reads (kohya's `--dataset_config`, a LyCORIS preset file, the
`--network_weights` file `--dim_from_weights` reads the ranks from) is not on this machine, which is no
rule of the legacy tool's. Relative paths resolve against `--cwd` (default: the
current folder). A kohya `train_data_dir` that is not here converts to a `layout = "kohya_folders"` dataset
instead (DBS406).""",
    ),
    Code(
        "DBS402",
        ERROR,
        "The legacy tool itself rejects the input",
        """\
The legacy tool itself rejects the input, and the message states its rule: kohya's dataset-config schema
(`extra keys not allowed`, strict types, `is_reg` with `conditioning_data_dir`), its asserts
(`bucket_reso_steps % 64` for train_db/train_network, `% 32` for SDXL; resolution inside the bucket range; a
resolution given at all; `constant` schedules without warm-up), argparse type and choice \
errors, or a diffusers
script's own checks (prior preservation without class data) and failures (Min-SNR with prior
preservation above batch 1). argparse also exits on words that are no option (an unquoted multi-word `$VAR`
split by the shell: the message names it) and, for the diffusers scripts, on options the script does not have
(a fork's).""",
    ),
    Code(
        "DBS403",
        EITHER,
        "A setting that changes training has no dbspec equivalent",
        """\
A setting that changes training has no dbspec equivalent (caption shuffling or dropout, colour augmentation,
pseudo-Huber loss, multi-resolution noise, DAdaptation optimizers, LoCon `conv_dim`, a non-square resolution,
a SimpleTuner noise offset applied to a fraction of steps...), or an option the converter does not know. The
conversion stops; `--allow-unsupported` converts without the setting, lists it at the top \
of the spec and keeps
this as a warning.""",
    ),
    Code(
        "DBS404",
        WARNING,
        "Converted to the closest dbspec setting; the meaning differs",
        """\
Converted to the closest dbspec setting, and the meaning differs as the message says (warning): for example
kohya's per-sample prior weighting in mixed batches, kohya's per-dataset reg balancing, \
diffusers' instance/class
pairing in each batch, mask-area normalisation, SimpleTuner's bucket sizes. Each one is
also written at the top of the converted spec.""",
    ),
    Code(
        "DBS405",
        WARNING,
        "The legacy tool ignores this key too",
        """\
The legacy tool ignores this key too (warning), so the legacy config probably does not do what its author
meant: `train_data_dir` next to `--dataset_config`, a config_file key that is not an option of the script, a
nested table kohya's one-level flattening loses, a folder name without the `N_` repeats prefix.""",
    ),
    Code(
        "DBS406",
        WARNING,
        "A value depends on image folders that cannot be read here",
        """\
A value depends on the image folders and they cannot be read here (warning): epoch \
lengths, epoch intervals and
warm-up ratios of epoch-based runs are computed from kohya's or diffusers' own batch \
counts when the images are
present, and a kohya `train_data_dir`/`reg_data_dir` that is not here becomes a \
`layout = "kohya_folders"` dataset
whose sub-folders are only listed (and checked) by `dbspec plan`. Convert on the machine that \
holds the images, or
pass `--cwd`.""",
    ),
    Code(
        "DBS407",
        WARNING,
        "The converter assumed what the legacy input does not say",
        """\
The legacy input does not say, and the converter assumed the legacy tool's default or the evident intent
(warning): no script named (train_db.py), diffusers' mixed precision coming from an accelerate config file,
SimpleTuner defaults that changed between versions, option lines of a command file that lost their line
continuations (joined to the command, each named).""",
    ),
    Code(
        "DBS408",
        ERROR,
        "The written spec does not pass `dbspec check`",
        """\
The written spec does not pass `dbspec check`. This is a converter bug; please report it with \
the legacy input.""",
    ),
    Code(
        "DBS412",
        WARNING,
        "A check of the base model could not be made here",
        """\
The legacy script decides something from the base model's own files, and the converter could not read them
here (warning): a hub id that is not in the local Hugging Face cache, or a folder without `model_index.json`.
diffusers' `train_dreambooth_lora_sdxl.py` trains EDM-style whenever `model_index.json` names an EDM scheduler
(Playground v2.5); the converter refuses that (DBS403) when it can read the file, and says with this warning
when it cannot. Download the model (`huggingface-cli download <id>`) or convert with a local folder.""",
    ),
    Code(
        "DBS414",
        ERROR,
        "An image smaller than the resolution it is cropped to without resizing",
        """\
A dataset with `resize = "none"` crops each image to the resolution without resizing it, and this image is
smaller than the resolution on a side (error, from `dbspec plan`, naming the file). kohya (buckets and
`cache_latents` off) asserts that every image is at least the resolution (`image size is small`). Sizes are
those trained: as stored with `exif_orientation = "ignore"`, upright otherwise.""",
        help='use a larger image, a lower resolution, or resize = "cover"',
    ),
    Code(
        "DBS416",
        ERROR,
        "A per-group schedule bound does not name the optimizer's groups",
        """\
`schedule.base_lr`, `max_lr`, `base_momentum` or `max_momentum` is a table (one value per optimizer
parameter group, as torch's CyclicLR and OneCycleLR take a list), and it names a group the optimizer does
not have or lacks one it has (error, from `dbspec plan`). The groups are those `dbspec plan` lists:
`denoiser` (when it trains), `text_encoder` (the text encoders; SDXL's second only when
`optimizer.text_encoder_2_lr` differs), `text_encoder_2`, `text_encoder_3`, each trained one's LoRA+
`<name>_lora_up` group when its ratio is set, `denoiser_x<scale>` (quoted in TOML: `"denoiser_x0.5"`) for
each `[[adapter.blocks]]` `lr_scale` and `denoiser_lr<rate>` for each block's own `lr`, `denoiser_block<i>`
for each `[[optimizer.blocks]]` entry at a rate above 0 (with blocks the tables may leave out `denoiser` and
the scale groups: the runtime refuses a run where one they leave out holds parameters), and `pivotal` for
pivotal tuning. Name each once, or give one number for every group. `dbspec convert kohya` maps kohya's
per-group lists (lr_scheduler_args `base_lr=[...]`) onto these names by kohya's group order.""",
    ),
    Code(
        "DBS417",
        ERROR,
        "Per-group schedule bounds cannot apply to these optimizer groups",
        """\
No longer reported: per-group schedule tables (`schedule.base_lr`, `max_lr`, `base_momentum`,
`max_momentum`) now name the groups `[[adapter.blocks]]` make (`denoiser_x<scale>` for `lr_scale`,
`denoiser_lr<rate>` for a block's own `lr`; see DBS416). `dbspec convert kohya` refuses (DBS403) a kohya
per-group list whose groups dbspec cannot match one to one: network modules other than networks.lora,
lycoris.kohya, lora_flux and lora_sd3, and kohya groups that dbspec trains as one with different values.""",
        reserved=True,
    ),
    Code(
        "DBS418",
        WARNING,
        "A kohya transformer file takes its configs and tokenizers from model.base",
        """\
kohya's `flux_train_network.py` / `sd3_train_network.py` load the transformer from
`--pretrained_model_name_or_path`, one `.safetensors` file, and build its configs and tokenizers from their
own constants. dbspec loads that file as `model.denoiser_file` and takes configs and tokenizers from
`model.base`, which the converter sets to the family's published model (Flux: `black-forest-labs/FLUX.1-dev`,
or FLUX.1-schnell for a file without a guidance embedding; SD3: the SD3 or SD3.5 model whose depth the file
has; where the converter cannot read the file: FLUX.1-dev, SD3.5 large). Left out when `--set model.base=`
gives it. The
run downloads its configs and tokenizers (FLUX.1-dev is gated: `huggingface-cli login` first) unless they are
in the Hugging Face cache (warning).""",
        help="pass --set model.base=<a local diffusers folder of the same model> to dbspec convert",
    ),
    # --- DBS5xx: options that contradict each other (continued) -------------------------------------------
    # Shared down-projections of fused layers (adapter.fused_projections): DBS505-DBS509.
    Code(
        "DBS505",
        ERROR,
        "Fused projections on a family without fused layers",
        """\
`adapter.fused_projections = true` shares one LoRA down-projection among the diffusers parts of a fused Linear
of the original model (Flux's q, k, v). The family's diffusers model has no such layers (its Linears are the
original model's), so there is nothing to share.""",
        help="remove adapter.fused_projections",
    ),
    Code(
        "DBS506",
        WARNING,
        "A fused layer with only some of its parts adapted",
        """\
With `adapter.fused_projections` a fused layer's adapted parts share one down-projection; a part the targets
(or a rank-0 block) leave out gets no update, so the fused layer's LoRA has zero rows there where kohya's LoRA
on the fused layer trains every row. With Flux's default targets the single blocks' proj_mlp is such a part:
add `proj_mlp` to `adapter.denoiser_targets` (kohya's networks.lora_flux set does).""",
        help="add the missing parts to adapter.denoiser_targets, or accept the zero rows",
    ),
    Code(
        "DBS507",
        ERROR,
        "Parts of a fused layer at different ranks, alphas or learning rates",
        """\
With `adapter.fused_projections` the parts of a fused layer share one down-projection, which has one rank and
one learning rate; kohya's LoRA on the fused layer has one alpha. `[[adapter.blocks]]` patterns gave parts of
one fused layer different ranks, alphas or `lr_scale`s. With `kind = "lokr"` or `"loha"` (one LyCORIS module
per fused layer, its rank, alpha and LoKr factor a block's) the first block matching each part must be the
same block: a pattern matching only some parts of a fused layer splits it. LyCORIS's `scalar` is one per
fused layer too: a block's own `scalar` must cover every adapted part of a fused layer alike.""",
        help="give the parts one rank, alpha and lr_scale (LoKr, LoHa: one block whose pattern matches every "
        "part), or set adapter.fused_projections = false",
    ),
    Code(
        "DBS508",
        WARNING,
        "Input dropout drawn per part of a fused layer",
        """\
With `adapter.fused_projections` each part of a fused layer applies peft's input dropout (`adapter.dropout`)
to its own copy of the layer's input, where one fused Linear would drop the input once. (`down_dropout`,
`rank_dropout` and `module_dropout` are drawn once per fused layer and forward, as kohya's LoRA on the fused
Linear draws them.) kohya's networks have no input dropout.""",
        help="accept the per-part draws, or use down_dropout (kohya's network_dropout) instead",
    ),
    Code(
        "DBS509",
        ERROR,
        "A weight decomposition the fused layer's parts cannot share",
        """\
With `adapter.fused_projections` a LoRA's `dora` is LyCORIS's weight decomposition of the fused Linear
(lycoris.kohya's `dora_wd` on kohya's Flux): one magnitude per output row, so each part keeps its rows', or
per input column (`dora_axis = "input"`, wd_on_output=False) one (1, in) magnitude the parts share, each part
renormalised by the column norms of every part's merged rows. That needs LyCORIS's form (`dora_form =
"lycoris"`; peft's DoRA has no kohya file layout) and every part of each fused layer adapted (LyCORIS
decomposes all of the fused weight's rows).""",
        help='set dora_form = "lycoris" and adapt every part, or set adapter.dora = false',
    ),
    Code(
        "DBS510",
        ERROR,
        "Per-group schedule bounds with several optimizers",
        """\
`optimizer.split` (kohya's `--fused_optimizer_groups`) builds one optimizer and one LR schedule per chunk of
the trained tensors; a chunk holds some of the groups, or part of one. `schedule.base_lr`, `max_lr`,
`base_momentum` or `max_momentum` as a table names the groups of one optimizer, so it cannot apply. kohya
passes the same scheduler arguments to every chunk's schedule: give the bound one number.""",
    ),
    # LyCORIS's weight decomposition (DoRA on LoHa/LoKr, per input column, with LoCon's Tucker form):
    # DBS515-DBS518.
    Code(
        "DBS515",
        ERROR,
        "LoRA input dropout with LyCORIS's weight decomposition",
        """\
`adapter.dropout` on a LoRA adapter that trains LyCORIS's weight decomposition (`dora = true` with
`dora_form = "lycoris"`, `dora_axis = "input"` or `tucker = true` on its convolutions): the merged weight
W + ΔW is renormalised as a whole, so there is no adapter input to drop out; LyCORIS itself ignores `dropout`
with `dora_wd`. (Rank and module dropout and the multiplier with DoRA on LoRA: DBS267.)""",
    ),
    Code(
        "DBS516",
        ERROR,
        "A quantised base under LyCORIS's weight decomposition",
        """\
`precision.quantize_denoiser` or `quantize_text_encoder` (with a backend other than `"cast"`) and DoRA on LoHa
or LoKr, or on LoRA with `dora_form = "lycoris"`, per input column or in LoCon's Tucker form: LyCORIS's
weight decomposition renormalises the base weight plus the update, which a quantised layer does not hold as a
float tensor.""",
    ),
    Code(
        "DBS517",
        WARNING,
        "`dora_axis` without DoRA",
        """\
`adapter.dora_axis` or `adapter.dora_form` is set but `adapter.dora` is false: the axis of DoRA's magnitude
(LyCORIS `wd_on_output`) and whose DoRA trains have no effect without DoRA (warning).""",
        help="set adapter.dora = true, or remove the option",
    ),
    Code(
        "DBS518",
        ERROR,
        "peft's DoRA where only LyCORIS's weight decomposition trains",
        """\
`adapter.dora_form = "peft"` with `dora_axis = "input"` or with `tucker = true` (LoCon's Tucker form on the
convolution adapters): peft's DoRA keeps one magnitude per output row of plain LoRA layers. Set
`dora_form = "lycoris"` (LyCORIS's `dora_wd`, what these train by default).""",
    ),
    # LyCORIS's use_scalar and LoKr full_matrix (DBS520, DBS521); LoHa / LoKr rank dropout (DBS525, DBS526).
    Code(
        "DBS520",
        ERROR,
        "LyCORIS's use_scalar with peft's DoRA",
        """\
`adapter.scalar = true` (LyCORIS `use_scalar`: a trained scalar, from 0, multiplies each layer's update) with
peft's DoRA (`kind = "lora"`, `dora = true`, `dora_form = "peft"`): peft's DoRA layer rebuilds the weight
from `lora_A` and `lora_B` alone, with no scalar (LyCORIS's weight decomposition, `dora_form = "lycoris"` and
LoHa / LoKr DoRA, renormalises the scaled update, as LyCORIS). Turn `scalar` off, or remove the other option.
(With `init_weights` every layer's scalar starts at 1, as LyCORIS's load hook sets it: the file's factors
hold it folded in.)""",
    ),
    Code(
        "DBS521",
        WARNING,
        "An option LoKr's `full_matrix` overrides",
        """\
`adapter.full_matrix = true` (LyCORIS `full_matrix`: both Kronecker factors full on every layer) with
`decompose_both` or `tucker` set: both split a factor low-rank, which full_matrix never does, so they
change nothing (LyCORIS ignores them too; the plan shows them off). Remove them, or turn full_matrix off.""",
        help="remove the option, or set adapter.full_matrix = false",
    ),
    Code(
        "DBS522",
        ERROR,
        "LyCORIS's full, IA^3, OFT or GLoRA algo on a quantised model or a module targeted twice",
        """\
`adapter.kind = "full"` (LyCORIS's full-weight algo: a trained copy of each targeted layer's weight and bias)
with `precision.quantize_denoiser` or `quantize_text_encoder`: a quantised layer has no float weight to copy
(LyCORIS refuses quantised layers for this algo too); or a module named both in `denoiser_targets` and in
`conv_targets`. Turn quantisation off, or train a low-rank kind; keep each name in one list. The same for
`adapter.kind = "ia3"` (LyCORIS's IA^3 scales each targeted layer's float weight), and for
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of those kinds beside a LoRA/LoHa/LoKr adapter (a
LyCORIS preset file's `full` / `ia3` entries, e.g. with kohya's `--fp8_base`). The denoiser's `full` blocks
with `quantize_backend = "cast"` are not refused: the cast leaves their layers float, as kohya's `--fp8_base`
cast after LyCORIS's apply_to passes FullModule's layers by. Nor are IA^3, Diag-OFT and BOFT layers in
LyCORIS's bypass forward (`bypass`, the adapter's or a block's own) with `quantize_backend = "cast"` outside
fused projections: that forward reads the layer's output, which the cast base computes as kohya's float8
layer does. Nor kohya's own OFT (`kind = "diag-oft"`, `form = "kohya"`) with `quantize_backend = "cast"`: it
rotates the float8 weight upcast, as kohya's OFTModule does. A quantised text encoder with no targeted layer
is not refused.""",
    ),
    Code(
        "DBS523",
        WARNING,
        "An IA^3 input target that is no target",
        """\
A name in `adapter.input_targets` (IA^3's scales on input channels, LyCORIS `train_on_input`) is in none of
`denoiser_targets`, `text_encoder_targets` and `conv_targets`, so no layer of that name is scaled at all
(warning). Add it to a target list, or remove it.""",
        help="add the name to a target list, or remove it from input_targets",
    ),
    Code(
        "DBS525",
        WARNING,
        "`rank_dropout_scale` without rank dropout",
        """\
`adapter.rank_dropout_scale` is set on a LoHa or LoKr adapter whose `rank_dropout` is 0: the rescale of the
kept rows (LyCORIS `rank_dropout_scale`) has no rows to act on (warning); the plan records it as false.""",
        help="set adapter.rank_dropout (e.g. 0.1), or remove adapter.rank_dropout_scale",
    ),
    Code(
        "DBS526",
        ERROR,
        "`rank_dropout_scale` with `rank_dropout = 1`",
        """\
`adapter.rank_dropout_scale = true` with `rank_dropout = 1` on a LoHa or LoKr adapter: every row of the update
is dropped, and the rescale divides by the share kept, 0, so every adapted layer's output becomes NaN
(LyCORIS's rule does the same). Lower `rank_dropout` below 1, or turn the rescale off (the update is then
dropped whole, which trains nothing).""",
    ),
    # Text attention masks (model.t5_attention_mask, model.clip_attention_mask): DBS530-DBS534.
    Code(
        "DBS530",
        ERROR,
        "A T5 attention mask on a family without T5",
        """\
`model.t5_attention_mask` masks the padding of T5's prompt tokens (kohya's `--apply_t5_attn_mask`): SD3 and
Flux encode prompts with T5; SD 1.x, SD 2.x and SDXL have no T5 text encoder.""",
        help="remove model.t5_attention_mask",
    ),
    Code(
        "DBS531",
        ERROR,
        "A CLIP attention mask on a family other than SD3",
        """\
`model.clip_attention_mask` encodes CLIP's prompt tokens with the tokenizer's padding mask, as kohya's
sd3_train_network.py `--apply_lg_attn_mask` does for SD3's CLIP-L and CLIP-G. kohya's SD 1.x, SD 2.x and SDXL
scripts have no such option, and dbspec masks CLIP for SD3 only.""",
        help="remove model.clip_attention_mask",
    ),
    Code(
        "DBS532",
        WARNING,
        "A CLIP attention mask on Flux has no effect",
        """\
Flux reads only CLIP-L's pooled output, the hidden state at the prompt's end token. CLIP's attention is
causal: no token before the padding attends to it, so masking the padding changes nothing Flux reads
(kohya's Flux script has no such option).""",
        help="remove model.clip_attention_mask",
    ),
    # Per-text-encoder conditioning dropout (loss.text_encoder_dropout, kohya's SD3 --clip_l_dropout_rate
    # and its siblings): DBS540-DBS542.
    Code(
        "DBS540",
        ERROR,
        "Per-encoder dropout rates that do not match the family's text encoders",
        """\
`loss.text_encoder_dropout` gives one rate per text encoder of the family, in its order (SD3: CLIP-L, CLIP-G,
T5-XXL); the list has another length. With `model.family = "auto"` the plan checks it once the family is
detected.""",
        help="give one rate per text encoder (SD3: [clip_l, clip_g, t5]), or an empty list for none",
    ),
    Code(
        "DBS541",
        ERROR,
        "A per-encoder dropout rate outside [0, 1]",
        """\
Each entry of `loss.text_encoder_dropout` is the probability that a sample's output of that text encoder is
zeroed in a training step, a number from 0 (never) to 1 (always). (kohya accepts any float: below 0 acts as 0,
above 1 as 1; `dbspec convert` writes the bound.)""",
        help="use a number from 0 to 1",
    ),
    Code(
        "DBS542",
        ERROR,
        "Per-encoder dropout on a family without it",
        """\
`loss.text_encoder_dropout` zeroes each text encoder's part of the conditioning; dbspec does this for SD3
(kohya's `--clip_l_dropout_rate`, `--clip_g_dropout_rate`, `--t5_dropout_rate`) only. For other families,
`datasets[].caption_dropout_rate` trains with the empty caption instead.""",
        help="remove loss.text_encoder_dropout, or use datasets[].caption_dropout_rate",
    ),
    # kohya's SD3 random position-embedding window (loss.pos_embed_random_crop_rate): DBS543-DBS544.
    Code(
        "DBS543",
        ERROR,
        "A random position-embedding window on a family without a cropped table",
        """\
`loss.pos_embed_random_crop_rate` moves the window the denoiser cuts from its stored position-embedding table
(diffusers' `PatchEmbed` with `pos_embed_max_size`, SD3's MMDiT). Other families' denoisers have no such
table.""",
        help="remove loss.pos_embed_random_crop_rate",
    ),
    Code(
        "DBS544",
        ERROR,
        "A random position-embedding window with precision.compile",
        """\
`loss.pos_embed_random_crop_rate` draws the window of each training forward from the run's generator inside
the denoiser's patch embedding; a compiled denoiser would fix the window it was traced with (or recompile).
Train without `precision.compile`, or without the random window.""",
        help="set precision.compile = false, or remove loss.pos_embed_random_crop_rate",
    ),
    # precision.attention = "eager" where the family's denoiser has no plain attention: DBS547.
    Code(
        "DBS547",
        ERROR,
        "Eager attention on a family without a plain attention",
        """\
`precision.attention = "eager"` replaces the denoiser's SDPA attention with a plain one: diffusers'
`AttnProcessor` for U-Nets, torch's reference attention (diffusers' `_native_math` dispatch backend) for Flux.
SD3's joint attention processors call SDPA directly and have no plain counterpart (`AttnProcessor` cannot run
a joint attention), so dbspec refuses it there.""",
        help='set precision.attention = "sdpa"',
    ),
    # DyLoRA (adapter.kind = "dylora"): its ranks in blocks of adapter.unit, its bypass: DBS548-DBS549.
    Code(
        "DBS548",
        ERROR,
        "A DyLoRA rank that is not a multiple of its block size",
        """\
`adapter.kind = "dylora"` cuts each layer's rank into blocks of `adapter.unit` ranks (kohya's networks.dylora
`unit`, LyCORIS's `block_size`) and trains one block per step: `rank`, and `conv_rank` when above 0, must be
multiples of `unit` (both tools assert it); a block's ranks multiples of its own `unit` (a block of `kind =
"dylora"` beside another adapter kind: of its unit).""",
        help="make rank (and conv_rank) a multiple of adapter.unit, or change unit",
    ),
    Code(
        "DBS549",
        ERROR,
        "A DyLoRA bypass forward LyCORIS cannot run",
        """\
`adapter.bypass` on a DyLoRA is LyCORIS's `bypass_mode` forward (lycoris-lora 4.1.3's DyLoraModule): it views
the drawn blocks as the whole rank, so any draw but the last block fails. It runs, and dbspec trains it, only
with `dylora_form = "lycoris"` and one block per layer: `rank` (and `conv_rank` when above 0) equal to
`unit`. A block's own `bypass = "on"` (a LyCORIS map entry's own `bypass_mode`) asks the same of its layers;
one whose own is `"off"` runs LyCORIS's default forward at any number of blocks.""",
        help='set adapter.rank (and conv_rank) equal to adapter.unit with dylora_form = "lycoris", or '
        "bypass = false",
    ),
    # kohya's scaled SD3 position-embedding tables (model.scaled_pos_embed): DBS550-DBS551.
    Code(
        "DBS550",
        ERROR,
        "Scaled position-embedding tables on a family without a cropped table",
        """\
`model.scaled_pos_embed` replaces the window the denoiser cuts from its stored position-embedding table
(diffusers' `PatchEmbed` with `pos_embed_max_size`, SD3's MMDiT) by kohya's scaled sin-cos tables. Other
families' denoisers have no such table (Flux's positions are rotary).""",
        help="remove model.scaled_pos_embed",
    ),
    Code(
        "DBS551",
        ERROR,
        "Scaled position-embedding tables with precision.compile",
        """\
`model.scaled_pos_embed` picks each forward's table by the latent's area from tables that grow during the
run (a taller or wider latent adds one, and later forwards may pick it), as kohya's MMDiT does; a compiled
denoiser would keep the table it was traced with. Train without `precision.compile`, or without the scaled
tables.""",
        help="set precision.compile = false, or remove model.scaled_pos_embed",
    ),
    # The separate parts of a fused layer drawing their dropouts together (adapter.fused_dropout): DBS552.
    Code(
        "DBS552",
        ERROR,
        "Fused dropout without separate parts of fused layers",
        """\
`adapter.fused_dropout = true` makes the separate LoRAs of a fused layer's parts (kohya's `split_qkv`) draw
`module_dropout`, `down_dropout` and `rank_dropout` once per fused layer, as kohya's LoRA on the fused Linear
draws them. With `adapter.fused_projections = true` the parts share one down and one draw already, and a
family without fused layers has no parts to draw together.""",
        help="remove adapter.fused_dropout",
    ),
    Code(
        "DBS553",
        WARNING,
        "Fused dropout without a dropout",
        """\
`adapter.fused_dropout = true` shares the dropout draws of a fused layer's separate parts, but
`module_dropout`, `down_dropout` and `rank_dropout` are all 0: nothing is drawn, the option changes
nothing.""",
        help="remove adapter.fused_dropout, or set the dropout it should share",
    ),
    Code(
        "DBS554",
        ERROR,
        "A split-chunk option without several chunks",
        """\
`optimizer.split_train = "first"` (only the first chunk's optimizer steps, kohya's `--fused_backward_pass`
with `--fused_optimizer_groups`) or `optimizer.split_first_step = "micro_batch"` (the first chunk's optimizer
steps after every micro-batch, kohya's `--fused_optimizer_groups` with gradient accumulation) shape the chunks
of `optimizer.split`; with `split = 1` there is one optimizer, over every trained tensor.""",
        help="set optimizer.split to 2 or more, or remove the option",
    ),
    Code(
        "DBS555",
        ERROR,
        "Still-scaled fp16 gradients where they cannot run",
        """\
`precision.fp16_gradients = "scaled"` steps the trained weights (fp16, kohya's `full_fp16`, or fp32) from the
gradients still multiplied by fp16 mixed precision's grad scaler, as kohya's `--fused_backward_pass` hooks do;
`"scaled_first"` steps the first chunk of `optimizer.split` so and the later ones through the grad scaler, as
kohya's `--fused_optimizer_groups` hooks do. Both need fp16 mixed precision, fp16 or fp32 weights, and
`optimizer.max_grad_norm = 0`: clipping a gradient that is still scaled would bound the scaled norm (kohya's
hooks raise there: accelerate's scaler refuses to unscale twice); `"scaled_first"` also needs chunks that step
after the first (`optimizer.split` 2 or more, `split_train = "all"`).""",
        help='use precision.mixed = "fp16", fp16 or fp32 weights and optimizer.max_grad_norm = 0, or remove '
        "fp16_gradients",
    ),
    # LyCORIS's GLoRA dropouts outside its bypass forward: DBS556.
    Code(
        "DBS556",
        WARNING,
        "A GLoRA dropout without its bypass forward",
        """\
`adapter.rank_dropout` or `adapter.dropout` with `kind = "glora"` and `bypass = false`: LyCORIS's GLoRAModule
reads them only in its bypass forward (`bypass_mode`); its default forward rebuilds the weight, W + ΔW, with
no dropout, so the GLoRA layers draw none (the plan's `rank_dropout` says 0). `module_dropout` acts in both.
The norm offsets (`denoiser_norms`, `text_encoder_norms`) draw `norm_rank_dropout`, which defaults to
`rank_dropout` as LyCORIS's NormModules take the network's; without them the value changes nothing.""",
        help="set adapter.bypass = true, or remove the dropout",
    ),
    # kohya's max-norm regularisation (adapter.max_norm, --scale_weight_norms): DBS558-DBS559.
    Code(
        "DBS558",
        ERROR,
        "`adapter.max_norm` on a form its max-norm variant does not cover",
        """\
`adapter.max_norm` (kohya's `--scale_weight_norms`) has two forms (`adapter.max_norm_form`). "kohya" scales
each layer's `lora_up` and `lora_down` by the square root of max_norm / norm, as kohya's networks.lora,
lora_fa, lora_flux and lora_sd3 do; it has no `dora`, `scalar` or `tucker` (on convolution adapters): those
are LyCORIS's forms, whose own `apply_max_norm_regularization` (lycoris.kohya) works otherwise. "lycoris"
(LoRA / LoCon, LoHa, LoKr, and Diag-OFT and BOFT, which have it alone) runs LyCORIS's: the norm of
LyCORIS's own update (Tucker core included; the OFT kinds' trained blocks themselves), LoCon's and LoHa's
scalar multiplied by the ratio, LoKr's factors by its n-th root, the OFT blocks by the ratio, 0 and 0 logged
when nothing was scaled. With DoRA (LyCORIS's weight decomposition, `dora_form = "lycoris"`) the norm is the
update's before the decomposition. LyCORIS takes that norm in training mode, so with `rank_dropout` it draws
a dropout mask inside it: dbspec draws LoCon's, LoHa's and LoKr's as LyCORIS does, and refuses peft's DoRA
and kohya-only forms (fused projections, LoRA-FA) with it, instead of training a third behaviour.""",
        help="remove adapter.max_norm, or use the max_norm_form that matches the adapter's form",
    ),
    Code(
        "DBS559",
        ERROR,
        "`adapter.max_norm` with FSDP or DeepSpeed",
        """\
`adapter.max_norm` rescales the trained LoRA weights in place after the optimizer step. Under
`distributed.strategy = "fsdp"` each process holds a shard of every weight (a layer's norm needs all of it),
and under DeepSpeed the optimizer keeps its own fp32 copy of the weights that the next step would write back
over the rescaled ones. dbspec refuses both; DDP (every process holds the whole weights) runs it.""",
        help='use distributed.strategy = "ddp", or remove adapter.max_norm',
    ),
    # LoRA-FA (adapter.freeze_down, kohya networks.lora_fa): DBS560.
    Code(
        "DBS560",
        ERROR,
        "`adapter.freeze_down` (LoRA-FA) on a LyCORIS form",
        """\
`adapter.freeze_down` is kohya's LoRA-FA (networks.lora_fa): plain LoRA whose down projections stay at their
init. With `dora`, `scalar` or `tucker` (on convolution adapters) the adapter is one of LyCORIS's forms, whose
weights are built otherwise (a magnitude, a scalar that starts at zero with a random up, a Tucker core); no
tool trains LoRA-FA on them, and dbspec does not define it.""",
        help="remove adapter.freeze_down, or turn dora, scalar and tucker off",
    ),
    # Runs that start later (schedule.start_step / start_epoch / skip_data / start_lr): DBS561, DBS562.
    Code(
        "DBS561",
        ERROR,
        "Both a start step and a start epoch",
        """\
`schedule.start_step` and `schedule.start_epoch` both say where the run starts; give one. (kohya lets
`--initial_step` override `--initial_epoch`; `dbspec convert` keeps the step and reports the epoch as
ignored.)""",
        help="remove schedule.start_epoch or schedule.start_step",
    ),
    Code(
        "DBS562",
        WARNING,
        "A start setting without a start",
        """\
`schedule.skip_data` or `schedule.start_lr` shapes a run that starts later, but neither `schedule.start_step`
nor `schedule.start_epoch` (above 1) is set, so the run starts at its beginning and the setting does
nothing.""",
        help="set schedule.start_step or schedule.start_epoch, or remove the setting",
    ),
    # Per-block denoiser learning rates (optimizer.blocks, kohya sdxl_train.py --block_lr): DBS563.
    Code(
        "DBS563",
        ERROR,
        "Optimizer blocks that cannot apply",
        """\
`[[optimizer.blocks]]` give the denoiser's parameters per-block learning rates in a full fine-tune (kohya
sdxl_train.py `--block_lr`). They need `adapter.kind = "none"` (an adapter's blocks take `[[adapter.blocks]]`
`lr_scale`), a denoiser that trains, and patterns that are Python regular expressions. Each block at a rate
above 0 is an optimizer group of its own, `denoiser_block<i>` (its position), which per-group schedule tables
(`schedule.base_lr`, ...) name.""",
        help="remove [[optimizer.blocks]], or the setting it cannot combine with",
    ),
    # An adapter block's own learning rate (adapter.blocks lr, kohya Flux network_reg_lrs): DBS564.
    Code(
        "DBS564",
        ERROR,
        "Adapter block with both a learning rate and a scale",
        """An `[[adapter.blocks]]` entry gives its adapters either their own learning rate (`lr`, kohya Flux
`network_reg_lrs`) or the denoiser's rate times `lr_scale` (kohya's block learning-rate weights), not both.
Its own rate also needs a denoiser that trains (`train.denoiser`).""",
        help="remove the block's lr_scale or its lr",
    ),
    # LoRA-GGPO (adapter.ggpo, kohya networks.lora_flux): DBS566, DBS567.
    Code(
        "DBS566",
        ERROR,
        "LoRA-GGPO with a LoRA kohya cannot perturb",
        """\
`adapter.ggpo` perturbs kohya's plain LoRA modules (networks.lora_flux). It cannot combine with `dora`
(lora_flux has no DoRA) or with `fused_dropout` (kohya's `split_qkv`: its split modules fail in GGPO's norm
update, `lora_up` being a list of layers). dbspec also runs it only under `distributed.strategy = "ddp"`:
its norm update reads every LoRA's whole weights and gradients, which FSDP and DeepSpeed shard.""",
        help="remove adapter.ggpo, or the setting it cannot combine with",
    ),
    Code(
        "DBS567",
        WARNING,
        "A GGPO share without GGPO",
        """\
`adapter.ggpo_sigma` or `adapter.ggpo_beta` is set but `adapter.ggpo` is false, so nothing is perturbed.
(kohya runs GGPO only when both `ggpo_sigma` and `ggpo_beta` are given.)""",
        help="set adapter.ggpo = true, or remove the share",
    ),
    # train.t5 with an adapter kind that has no T5 layers (none; kohya's networks.oft / dylora): DBS568.
    Code(
        "DBS568",
        ERROR,
        "train.t5 without an adapter that has T5-XXL layers",
        """\
`train.t5 = true` adds the adapter to T5-XXL's attention and gated-MLP Linears at the adapter's rank and
alpha: LoRA as kohya's lora_flux does with `train_t5xxl=True`, and LoKr, LoHa, full (trained copies of the
Linears), GLoRA, DyLoRA, Diag-OFT, BOFT or IA^3 as LyCORIS's lycoris.kohya network builds them there. A full
fine-tune (`adapter.kind = "none"`) has no adapter, and kohya's networks.oft (`kind = "diag-oft"` with
`form = "kohya"`) and networks.dylora (`dylora_form = "kohya"`) put none on T5-XXL.""",
        help='set adapter.kind to "lora" or a LyCORIS kind (form / dylora_form "lycoris"), or remove '
        "train.t5",
    ),
    # kohya's per-dataset validation_split and a split that is never scored (evaluation): DBS570, DBS571.
    Code(
        "DBS570",
        ERROR,
        "A dataset's eval_split or eval_seed that splits nothing",
        """\
A dataset's `eval_split` and `eval_seed` are its own fraction and seed of kohya's validation split (kohya's
dataset-level `validation_split` and `validation_seed`); they apply only where `evaluation.split` splits:
`evaluation.split` must be above 0, and the dataset must be an instance dataset that
`evaluation.split_datasets` names (or any instance dataset when that list is empty). Elsewhere they would
silently change nothing.""",
        help="set evaluation.split (and list the dataset in evaluation.split_datasets), or remove eval_split "
        "and eval_seed",
    ),
    Code(
        "DBS571",
        WARNING,
        "An evaluation setting that does nothing without scoring",
        """\
`evaluation.score = false` keeps the held-out images out of training and scores nothing, so it does nothing
without held-out images (`evaluation.holdout` or `evaluation.split`), and the settings that shape the
evaluation loss (`timesteps`, `timestep_spacing`, `bands`, `max_images`, `log`) change nothing.""",
        help="remove the setting, or set evaluation.score = true",
    ),
    # optimizer.text_encoder_3_lr without train.t5: DBS572.
    Code(
        "DBS572",
        WARNING,
        "optimizer.text_encoder_3_lr without train.t5",
        """\
`optimizer.text_encoder_3_lr` is the rate of SD3's T5-XXL LoRA, which trains only with `train.t5 = true`
(kohya lora_sd3's `train_t5xxl=True`); without it T5-XXL is frozen and the rate changes nothing.""",
        help="set train.t5 = true, or remove optimizer.text_encoder_3_lr",
    ),
    # LyCORIS LoCon's rank dropout (adapter.rank_dropout_form) on kohya's fused layers: DBS573.
    Code(
        "DBS573",
        ERROR,
        "LyCORIS's rank dropout on fused layers",
        """\
`adapter.rank_dropout_form = "lycoris"` / `"lycoris_bypass"` (LyCORIS LoCon's rank dropout, kohya's
lycoris.kohya network) or `adapter.output_dropout` (its bypass dropout) with `adapter.fused_dropout`: that
shares kohya networks.lora_flux / lora_sd3's draws among split parts, which LyCORIS's network has not.
(With `fused_projections` they are LoConModule's on kohya's fused Flux / SD3 Linear: one row mask over the
whole layer, or in bypass mode one rank mask over its shared down-projection and one dropout over its
output.)""",
        help='set adapter.rank_dropout_form = "kohya" and output_dropout = 0, or remove fused_dropout',
    ),
    # adapter.form = "kohya" (kohya's networks.oft) against Diag-OFT's LyCORIS options: DBS574.
    Code(
        "DBS574",
        ERROR,
        "kohya's OFT with LyCORIS-only options",
        """\
`adapter.form = "kohya"` trains kohya sd-scripts' own OFT (networks.oft): each layer's rows split into
`adapter.block_count` blocks (at least 1), the constraint always applied, no row rescale, no bypass
forward, no max-norm regularisation and no text-encoder layers (kohya's OFT network adapts the U-Net
alone). `block_count` means nothing with LyCORIS's form (`block_size` is its hint).""",
        help='with form = "kohya": set adapter.block_count >= 1, remove rescaled / bypass / max_norm, train '
        'no text encoder; with form = "lycoris": remove adapter.block_count',
    ),
    # LyCORIS LoKr / LoHa on kohya's fused layers (their fused_projections): DBS575.
    Code(
        "DBS575",
        ERROR,
        "A fused LoKr or LoHa it cannot train",
        """\
`adapter.fused_projections` with `kind = "lokr"` trains one LyCORIS LoKr per fused Linear of the original
model (Flux's q, k, v), its parts updated by their rows of one Kronecker product: every part of a fused layer
must be adapted (the product spans all its rows). `dora` per output row, `scalar`, `max_norm`,
`rank_dropout` and `module_dropout` are LyCORIS's on the fused layer (one scalar, one norm of the whole
update, one draw per forward, the masked update decomposed with `dora`; `output_dropout`, LyCORIS's
bypass dropout, over the fused layer's output); `dora` per input column (`dora_axis = "input"`) shares one
magnitude per column of the fused weight, each part renormalised by the norms of every part's merged rows
(masked by the fused layer's one rank-dropout draw; the adapter's `dora` or a block's own over whole fused
layers; an `init_weights` file's (1, in) `dora_scale` loads into the shared magnitude);
nor (with or without `fused_projections`)
`output_dropout` with `dora`, per output row or per input column: LokrModule / LohaModule apply their dropout
in their bypass forward alone, which never decomposes the weight, and their decomposed forward never reads it
(kohya's `dropout` there is ignored, DBS405), so no LyCORIS module computes that pair.
`kind = "loha"` likewise (each part its rows of `hada_w1_a` / `hada_w2_a`, the parts sharing `hada_w1_b` /
`hada_w2_b`). Both are written in kohya's Flux / SD3 layouts only, and train under
`distributed.strategy = "ddp"` only. A run of several kinds (blocks with their own `kind`) likewise adapts
every part of each fused layer it adapts, whatever the layer's kind.""",
        help="adapt every part of each fused layer and remove those options, or set "
        "adapter.fused_projections = false",
    ),
    Code(
        "DBS576",
        ERROR,
        "A block's LoKr factor or switch it cannot use",
        """\
`factor`, `decompose_both`, `full_matrix`, `tucker` and `unbalanced_factorization` in `[[adapter.blocks]]` /
`[[adapter.text_encoder_blocks]]` shape the matched layers' LoKr Kronecker factors, `rank_stabilized` scales
their full ones (a LyCORIS preset file's map entry with its own `factor`, `decompose_both`, `full_matrix`,
`use_tucker`, `unbalanced_factorization` or `rs_lora`): they need `kind = "lokr"`, the adapter's or the
block's (a lokr block beside other kinds: DBS578 weighs it),
with LyCORIS's split (with `fused_projections` each fused layer's one product, its parts in one block).""",
        help='remove the block\'s factor and switches (or set them to "adapter"), or use kind = "lokr"',
    ),
    Code(
        "DBS577",
        ERROR,
        "A fused Diag-OFT, BOFT, GLoRA, DyLoRA, IA^3, full or T-LoRA it cannot train",
        """\
`adapter.fused_projections` with `kind = "diag-oft"` trains one LyCORIS DiagOFTModule per fused Linear of
the original model (Flux's q, k, v and the single blocks' linear1, SD3's q, k, v): its blocks split the
stacked rows, and each diffusers part rotates its own rows in them (where a block spans two parts, the
parts share the fused module's blocks and each computes its rows of the rotated stacked weight). That holds
for LyCORIS's form (its `constraint` bounds one norm over all the fused layer's blocks, and `max_norm`
scales them all by one ratio of their norm, which the parts share) and a block's own `block_size`,
`constraint` and `rescaled` on every part of a fused layer or on none.
With `kind = "boft"` one ButterflyOFTModule per fused Linear: its butterfly stages rotate the stacked rows
together, so the parts share its blocks (constraint and `max_norm` over them) and each computes its rows of
the rotated stacked weight (with `bypass`, its rows of the rotated stacked outputs); a block's own
`block_size`, `constraint` and `rescaled` on every part of a fused layer or on none.
With `kind = "glora"` one GLoRAModule per fused Linear: the parts share `a1`, `a2` and `b2`, each its rows
of `b1` and the module's dropout draws (one per forward). With `kind = "dylora"` one DyLoraModule per
fused Linear: the parts share the down blocks, the drawn block and the `module_dropout` draw, each its
rows of the up blocks; one `unit` for all its parts. With `kind = "ia3"` one IA3Module per fused Linear:
each part keeps its rows' scales and the parts share the `module_dropout` draw; no part in `input_targets`
(the fused module would scale its input columns once for every part). With `kind = "full"` one FullModule
per fused Linear: each part keeps its rows' copy and the parts share the `module_dropout` draw and the
`rank_dropout` row mask. With `kind = "tlora"` one TLoraModule per fused Linear, started from one SVD of
the stacked weight: the parts share Q and the singular values (and their frozen copies), each its rows of
P, the `module_dropout` draw and the bypass `dropout` mask (`max_norm`: one norm of the stacked update);
every part takes one `sig_type`. All need
every part of a fused layer adapted, at one rank and alpha, and a family
with kohya's Flux / SD3 layout.""",
        help="remove those options and adapt every part of each fused layer, or set "
        "adapter.fused_projections = false",
    ),
    Code(
        "DBS578",
        ERROR,
        "Several adapter kinds with an option one kind lacks",
        """\
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` with their own `kind` (a LyCORIS preset file's
`module_algo_map` / `name_algo_map` entries with another `algo`) train LoRA/LoCon, LoHa or LoKr layers
(also LyCORIS's full, IA^3, Diag-OFT, BOFT, GLoRA, DyLoRA and T-LoRA, `kind = "full"` / `"ia3"` /
`"diag-oft"` / `"boft"` / `"glora"` / `"dylora"` / `"tlora"`, a DyLoRA block with its own `unit`)
beside the adapter's kind (lora, loha, lokr or dylora, LyCORIS's DyLoRA network with entries of other
algorithms; a tlora adapter with blocks of kind lora, loha, lokr, full, ia3, glora, diag-oft, boft or
dylora, without its `bypass` or `max_norm`) in one run, each kind's layers with the adapter's rank,
alpha, targets (and LoKr's `factor`, `decompose_both`), and are saved, resumed and exported (one LyCORIS
file, each layer in its kind's keys) together, on SD 1.x/2.x, SDXL, Flux, SD3 and Chroma (on Flux, SD3 and
Chroma with `fused_projections`, each fused Linear one LyCORIS module of its block's kind). The options that
act on one kind's layers only, or on all adapters at once, are not supported there: dropouts (but
LyCORIS's `rank_dropout`, `rank_dropout_form = "lycoris"`, on a lora adapter whose blocks are LoRA, LoHa,
full, IA^3, Diag-OFT, BOFT, GLoRA or DyLoRA, and a loha, full, ia3 or glora adapter's `rank_dropout` beside
blocks of those kinds (without `bypass` or `rank_dropout_scale`; with `fused_projections` undecomposed,
each fused Linear one module's draw its parts share): each LoCon
and LoHa layer draws its own row mask as its LyCORIS module does, decomposed or not, each full layer
FullModule's row mask, each
Diag-OFT layer its rotations' dropout, the IA^3, BOFT, GLoRA (outside bypass) and DyLoRA layers none, as
their modules never read it; and `output_dropout`, LyCORIS's `dropout` in bypass_mode, on a lora, loha or
lokr adapter whose blocks are of those kinds, without `rank_dropout` or `dora`: each LoRA, LoHa and LoKr
layer drops its own update after its module dropout draw, on Flux, SD3 and Chroma each fused Linear one
mask its parts share; a lora adapter's `rank_dropout` in `rank_dropout_form = "lycoris_bypass"`, or a
loha adapter's, beside it too, beside LoRA, LoHa and LoKr blocks alone: each LoRA layer masks its ranks,
each LoHa layer its rows, each LoKr layer none, as their LyCORIS modules' bypass forward does; a glora
adapter's `rank_dropout` and `dropout` with `bypass` beside LoRA, LoHa, LoKr, IA^3, Diag-OFT and BOFT
blocks alone, none decomposed: the GLoRA layers draw GLoRAModule's own, ranks kept below the rate, the
blocks' layers as above, the OFTs' none; not its `dropout` beside Diag-OFT blocks, whose bypass forward
cannot apply it),
`multiplier`, `max_norm` (but LyCORIS's, `max_norm_form = "lycoris"` on a lora adapter: each LoRA, LoHa,
LoKr, Diag-OFT and BOFT layer scaled as its kind's LyCORIS module scales it, the other kinds' never),
`freeze_down`, `dora` (but LyCORIS's weight decomposition on every LoRA / LoHa
/ LoKr layer, on Flux, SD3 and Chroma each fused Linear whole, which the other kinds' modules never read),
`tucker`,
`scalar`, `full_matrix` (but on a lokr adapter:
its LoKr layers alone read it), `rank_stabilized`, `ggpo`, `fused_projections` (but on Flux, SD3 and
Chroma, where `bypass` gives Diag-OFT, BOFT, IA^3 and DyLoRA blocks LyCORIS's bypass forward of the one
module on each fused Linear, each part its own rows) and
`fused_dropout` (`init_weights`, LyCORIS's file of the run's modules, starts such a run, its DyLoRA layers
taking only their `alpha` from it, one per fused Linear on Flux, SD3 and
Chroma); nor a block's own `tucker` (but a LoRA, LoHa or LoKr block's on the denoiser's
convolutions: LyCORIS LoCon's, LohaModule's, LokrModule's Tucker form, on SD3 its patch convolution),
`scalar` (but a LoRA, LoHa or LoKr block's, each kind's layers built alone) or `rank_stabilized`, nor
its own LoKr `factor` and switches, except on LoKr layers (a lokr adapter's own, or a block of kind
lokr).""",
        help='remove that option, or give every block the adapter\'s kind (kind = "adapter")',
    ),
    Code(
        "DBS579",
        ERROR,
        "A block's own LyCORIS scalar or Tucker form with an option that needs one setting",
        """\
`scalar = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS preset
file's map entry with its own `use_scalar`) gives some layers LyCORIS's trained scalar and others none, and
`tucker` in a `kind = "lora"` / `"loha"` block (an entry's `use_tucker`) some k x k convolutions the Tucker
form (LoCon's `lora_mid`, LoHa's `hada_t1` / `hada_t2`) and others not. That holds where each layer trains
alone: not with peft's DoRA (its layer rebuilds the weight with no scalar), LyCORIS's `max_norm` (it puts a
fixed scalar at 1 on the layers without one), `freeze_down` (LoRA-FA freezes plain LoRA's down projections);
a block's Tucker form also not with `max_norm` in kohya's form (it reads `lora_up` / `lora_down` alone;
LyCORIS's takes each Tucker layer's whole update, as LoConModule / LohaModule / LokrModule do), \
`init_weights` (a Tucker layer's `lora_mid` is not read; in a run of
several kinds the file places each layer's own, runtime/mixed_init.py), peft's DoRA (LyCORIS's weight
decomposition, `dora_form = "lycoris"`, decomposes each Tucker layer as LyCORIS's modules do), the
dropouts or `fused_projections` (a block's own scalar over whole fused layers is allowed: their parts share
one, DBS507; with `init_weights` every scalar starts at 1 after the file loads, as LyCORIS's load hook sets
it, the file's factors holding the trained scalars folded in; a LoHa / LoKr block's Tucker form in a run of
several kinds is its layers' alone, SD3's patch convolution's beside fused Linears too).""",
        help="set the blocks' scalar / tucker to \"adapter\" (the adapter's on every layer), or remove the "
        "other option",
    ),
    Code(
        "DBS580",
        ERROR,
        "A block's own rank_dropout_scale it cannot use",
        """\
`rank_dropout_scale = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS
preset file's map entry with its own `rank_dropout_scale`) rescales the rank-dropout rows the matched LoHa /
LoKr layers keep (a fused layer's one mask over all its parts, which one block covers: DBS507), or on LoRA
the rows or ranks LyCORIS LoCon's masks keep. It needs `kind = "loha"` or `"lokr"`, or `kind = "lora"` with
`rank_dropout_form = "lycoris"` / `"lycoris_bypass"` (kohya's networks.lora form has its own fixed
rescale).""",
        help='set the block\'s rank_dropout_scale to "adapter", or remove the other option',
    ),
    Code(
        "DBS581",
        ERROR,
        "A negative alpha on layers that do not keep its sign",
        """\
LyCORIS's GLoRAModule, TLoraModule, LoConModule, LohaModule, LokrModule and DyLoraModule keep a negative
alpha's sign (scale alpha / rank, DyLoRA's alpha / (b + 1) with block b drawn: the update trains with its
sign flipped), and so does dbspec on GLoRA, T-LoRA, LoRA/LoCon, LoHa, LoKr and DyLoRA layers: a block of those
layers (the adapter's own, or `kind = "glora"`, `"tlora"`, `"lora"`, `"loha"`, `"lokr"`, `"dylora"` beside
another adapter's layers: a LyCORIS preset file's entry's own negative `alpha`) takes an `alpha` /
`conv_alpha` below 0, in `[[adapter.blocks]]` and `[[adapter.text_encoder_blocks]]`. Blocks of other layers
(Diag-OFT, BOFT, full, IA^3) read their alpha as those kinds do, where dbspec takes only alphas of 0 or
more.""",
        help="give the block an alpha of 0 or more, or layers of a kind that keeps the sign "
        '(kind = "lora", "loha", "lokr", "glora", "tlora" or "dylora")',
    ),
    Code(
        "DBS582",
        ERROR,
        "A block's own bypass on a transformer family",
        """\
No longer raised: `bypass = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a
LyCORIS preset file's map entry with its own `bypass_mode`) gives the matched Diag-OFT, BOFT, DyLoRA or IA^3
layers LyCORIS's bypass forward, or its default one, on Flux, SD3 and Chroma too: on a fused Linear
(`fused_projections`) one block covers every part (DBS507), each part computing its rows of the one LyCORIS
module's forward in its block's bypass_mode (checked against lycoris-lora 4.1.3's network from the same
preset file on kohya's fused Linears).""",
        reserved=True,
    ),
    Code(
        "DBS583",
        ERROR,
        "A block's own LyCORIS weight decomposition with an option that needs one setting",
        """\
`dora = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS preset file's
map entry with its own `weight_decompose`) gives the matched LoRA/LoCon, LoHa or LoKr layers LyCORIS's weight
decomposition (their own `dora_scale`, runtime/lycoris_dora.py) and the others none, or the reverse. That
holds where each layer trains alone, in LyCORIS's form: on LoRA it needs `dora_form = "lycoris"` (peft's DoRA
is the adapter's; an `init_weights` file starts each layer with or without its `dora_scale`, as LyCORIS's
`load_state_dict(strict=False)` does), and it is not taken with `max_norm` in kohya's form (networks.lora \
has no weight decomposition; LyCORIS's max norm takes each layer's update before its decomposition, \
decomposed or not, a fused layer's parts as one module and a Tucker layer's whole update too), \
`freeze_down`, `ggpo`, a
`multiplier` other than 1, the dropouts (LyCORIS ignores the network's dropout on decomposed layers and
renormalises their masked update; `module_dropout` is taken on decomposed LoHa, LoKr and LoRA/LoCon layers,
whose one draw skips the whole update as LohaModule's, LokrModule's and LoConModule's, a fused layer's parts
sharing it; `rank_dropout` with `rank_dropout_form = "lycoris"` on a LoRA adapter whose blocks are
LoRA, LoHa or another kind than LoKr and T-LoRA, or on a LoHa adapter whose blocks are such (without `bypass`
or `rank_dropout_scale`), without `fused_projections`: each layer's row mask as each LoConModule /
LohaModule draws it), a decomposed \
block of
another `kind` than LoRA, LoHa and LoKr (beside
blocks of other kinds each kind's LoRA / LoHa / LoKr layers decompose as their blocks say, on Flux, SD3 and
Chroma each fused Linear whole; on a GLoRA or DyLoRA adapter, which has no `dora`, its blocks of kind LoRA,
LoHa or LoKr, with `fused_projections` too), or a quantised base weight. Blocks with their own `tucker`
decompose their Tucker layers too (an entry's `use_tucker` with `weight_decompose`, as LoConModule /
LohaModule / LokrModule do; was refused). With
`fused_projections` a block covers whole fused layers (DBS507), each decomposed per output row
(`dora_axis = "input"`: DBS509 / DBS575). A block's own `dora_axis` (a map entry's `wd_on_out`) on layers
that decompose is held to the same options; with `fused_projections` its fused layers per input column
share one `(1, in)` magnitude over every part's merged rows, as LyCORIS's one module on the fused Linear
(`module_dropout`'s one draw per fused layer shared by its parts); an `init_weights`
file starts those layers from its `dora_scale` in the block's axis shape (per input column `(1, in, ...)`),
each tensor's shape checked against its layer when the run loads it, as LyCORIS's `load_state_dict`
checks it.""",
        help="set the blocks' dora to \"adapter\" (the adapter's on every layer), or remove the other option",
    ),
    Code(
        "DBS584",
        ERROR,
        "A block's own unit outside DyLoRA layers",
        """\
`unit` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS preset file's map entry with
its own `block_size`) cuts the matched DyLoRA layers' ranks into blocks of that size. Only DyLoRA layers
train in blocks: an adapter of `kind = "dylora"`, or a block of `kind = "dylora"` beside another kind
(LyCORIS's DyLoraModule in a LoRA/LoCon, LoHa or LoKr network), which needs a unit of its own (the adapter
has none).""",
        help="remove the block's unit (0), give a dylora block its own unit, or train a DyLoRA",
    ),
    Code(
        "DBS585",
        WARNING,
        "adapter.text_encoder_norms without a trained CLIP text encoder",
        """\
`adapter.text_encoder_norms` (LyCORIS `train_norm`) trains offsets of the CLIP text encoders' LayerNorms
beside their adapters. With neither `train.text_encoder` nor `train.text_encoder_2` no CLIP encoder trains,
so the offsets are never added and the setting changes nothing.""",
        help="set train.text_encoder = true, or remove adapter.text_encoder_norms",
    ),
    Code(
        "DBS586",
        WARNING,
        "adapter.denoiser_norms without a trained denoiser",
        """\
`adapter.denoiser_norms` (LyCORIS `train_norm`) trains offsets of the U-Net's GroupNorms and LayerNorms beside
its adapters. With `train.denoiser = false` the U-Net does not train, so the offsets are never added and the
setting changes nothing.""",
        help="set train.denoiser = true, or remove adapter.denoiser_norms",
    ),
    Code(
        "DBS587",
        ERROR,
        "adapter.denoiser_norms on a family without a U-Net",
        """\
`adapter.denoiser_norms` (LyCORIS `train_norm`) trains offsets of the SD 1.x / 2.x / SDXL U-Net's GroupNorms
and LayerNorms (runtime/norm_offsets.py). Flux, SD3 and Chroma denoise with a transformer, which dbspec gives
no norm offsets (kohya's LyCORIS train_norm there reaches only norms it cannot train or CLIP's LayerNorms:
`adapter.text_encoder_norms`); the run would fail when the model is built.""",
        help="remove adapter.denoiser_norms, or train an SD 1.x / 2.x / SDXL model",
    ),
    Code(
        "DBS588",
        WARNING,
        "adapter.init_scale with nothing it scales",
        """\
`adapter.init_scale` on a lora, loha or lokr adapter scales only the start of its `kind = "full"` blocks
(LyCORIS's full modules in a run of several kinds, e.g. kohya's `--dim_from_weights` file: W + 2 x the
file's diff): their layers start from the weight plus init_scale x the `init_weights` file's diff. Without
full blocks, or without `init_weights`, no layer reads it and a value other than 1 changes nothing.""",
        help="remove adapter.init_scale, or add the full blocks and init_weights it is meant for",
    ),
    Code(
        "DBS589",
        WARNING,
        "adapter.rank_dropout with Diag-OFT's bypass forward",
        """\
LyCORIS's DiagOFTModule draws `rank_dropout` (an `nn.Dropout` on its block rotations) in its default forward's
make_weight only; its bypass forward (`adapter.bypass`, LyCORIS `bypass_mode`) reads `dropout` instead and
never the rank dropout. dbspec's Diag-OFT layers do the same: with `bypass = true` they draw nothing for
`adapter.rank_dropout`. The norm offsets (`denoiser_norms`, `text_encoder_norms`), which take the network's
rank dropout as LyCORIS's NormModule does, still draw it; without them the value changes nothing.""",
        help="remove adapter.rank_dropout, or set adapter.bypass = false",
    ),
    Code(
        "DBS590",
        WARNING,
        "adapter.rank_dropout on an IA^3 adapter without norm offsets",
        """\
LyCORIS's IA3Module takes the network's `rank_dropout` and never reads it; only the NormModules a `train_norm`
network gives the norms draw it. On a `kind = "ia3"` adapter `rank_dropout` is therefore the norm offsets'
(`denoiser_norms`, `text_encoder_norms`, `text_encoder_2_norms`, runtime/norm_offsets.py) alone: with none of
them, and without blocks of kind lora, loha, full or diag-oft (whose layers draw it as their LyCORIS modules
do beside the IA^3 ones), the value changes nothing.""",
        help="remove adapter.rank_dropout, or add the norm offsets it is meant for",
    ),
    Code(
        "DBS591",
        ERROR,
        "A block's own OFT rescale on layers that are not Diag-OFT / BOFT",
        """\
`rescaled = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of a lora, loha, lokr,
dylora, tlora, full or IA^3 adapter gives the matched LyCORIS Diag-OFT / BOFT layers (a LyCORIS preset file's
map entry with its own `rescaled`, or a `--dim_from_weights` file's `rescale` beside modules of other kinds) a
trained scale per output row. It needs the block's `kind = "diag-oft"` or `"boft"`: the other kinds have no
row rescale.""",
        help='set the block\'s rescaled to "adapter", or its kind to "diag-oft" / "boft"',
    ),
    Code(
        "DBS592",
        ERROR,
        "A block's own bypass on layers whose bypass forward is not their own",
        """\
`bypass = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS preset
file's map entry with its own `bypass_mode`) gives the matched layers LyCORIS's bypass forward, or its default
one, where the two differ: on a lora, loha or lokr adapter's blocks of `kind = "diag-oft"` / `"boft"` (the
output rotated, its bias included), `"ia3"` (the output scaled, its bias included) or `"dylora"` (its one
block added unscaled), on a dylora or glora adapter's blocks of those kinds other than its own (a DyLoRA
network's Diag-OFT, BOFT and IA^3 entries; a GLoRA network's DyLoRA ones too), and on a diag-oft, boft or
dylora adapter's own blocks (an algo=diag-oft / boft / dylora network's entries of its own algorithm).
LoRA/LoCon, LoHa, LoKr and GLoRA layers compute the same update in either forward without dropouts (a run of
several kinds has none); their blocks take the adapter's `bypass`.""",
        help='set the block\'s bypass to "adapter", or its kind to "diag-oft", "boft", "dylora" or "ia3"',
    ),
    Code(
        "DBS593",
        ERROR,
        "An adapter block held at lr_scale 0 that cannot be held",
        """\
`lr_scale = 0` on an `[[adapter.blocks]]` entry holds the matched layers at their initial weights: they are
built, saved and exported, but stay out of the optimizer (kohya Flux `network_reg_lrs` at rate 0, whose group
kohya leaves out). A held block has no optimizer group, so it names no `group`.
A DyLoRA's, GLoRA's, Diag-OFT's or BOFT's `[[adapter.blocks]]` (and a block of another `kind`) hold their
layers alike (kohya's lycoris.kohya and networks.dylora U-Net modules at `unet_lr` 0).""",
        help="drop the held block's group",
    ),
    Code(
        "DBS594",
        ERROR,
        "IA^3's bypass on a transformer family",
        """\
No longer raised: `bypass = true` on a `kind = "ia3"` adapter gives its layers LyCORIS IA3Module's bypass
forward on Flux, SD3 and Chroma too: a fused Linear's output, its bias included, scaled by (1 + s) is each
part's output scaled by its own rows of s (checked against lycoris-lora 4.1.3's IA3Module on kohya's fused
Linear).""",
        reserved=True,
    ),
    Code(
        "DBS595",
        ERROR,
        'adapter.init_alpha = "ignore" on LyCORIS\'s DyLoRA',
        """\
`adapter.init_alpha = "ignore"` trains the starting file's weights at the adapter's alpha, as kohya's
networks.lora and networks.dylora do with a `--network_weights` file saved at another alpha (the module's
scale is fixed from `network_alpha` when it is built; the file's alpha only fills a buffer). LyCORIS's
DyLoraModule (`dylora_form = "lycoris"`) instead scales every forward by its `alpha` buffer, which loading
the file overwrites: such a run trains at the file's alphas, which the adapter must then state.""",
        help='set adapter.init_alpha = "match" with the file\'s alpha as adapter.alpha, or dylora_form = '
        '"kohya"',
    ),
    Code(
        "DBS596",
        ERROR,
        "A LoHa / LoKr block's own Tucker form beside other kinds on a transformer family",
        """\
No longer raised: `tucker = "on"` / `"off"` on a `[[adapter.blocks]]` entry whose layers are LoHa or LoKr (the
block's `kind`, or the adapter's) in a run of several kinds (a LyCORIS preset file's LoHa / LoKr map entry
with its own `use_tucker`, a `--dim_from_weights` file's `hada_t1` / `lokr_t2` beside modules of other kinds)
gives those layers' k x k convolutions LyCORIS LohaModule's / LokrModule's Tucker form on Flux, SD3 and Chroma
too: SD3's patch convolution is the only k x k convolution there, never a fused Linear's part, and its layer
is built in its kind's pass alone (checked against lycoris-lora 4.1.3's modules rebuilt from such a file).""",
        reserved=True,
    ),
    Code(
        "DBS597",
        ERROR,
        "train.text_encoder_idle without an adapter",
        """\
`train.text_encoder_idle = "kohya"` puts the adapter on the text encoders that do not train, as kohya's LoRA
scripts build their modules at `text_encoder_lr` 0. A full fine-tune (`adapter.kind = "none"`) has no adapter
to put there.""",
        help="remove train.text_encoder_idle, or pick an adapter.kind",
    ),
    Code(
        "DBS598",
        WARNING,
        "train.text_encoder_idle with no idle CLIP text encoder",
        """\
`train.text_encoder_idle = "kohya"` acts on the CLIP text encoders that do not train. Here every CLIP text
encoder trains (`train.text_encoder` and `train.text_encoder_2`), so the setting changes nothing.""",
        help="remove train.text_encoder_idle, or set train.text_encoder = false",
    ),
    Code(
        "DBS599",
        ERROR,
        "A text-encoder block's learning rate that cannot apply",
        """\
An `[[adapter.text_encoder_blocks]]` entry gives its adapters either their own learning rate (`lr`, kohya
Flux `network_reg_lrs` on CLIP-L's `lora_te1_` and T5-XXL's `lora_te3_` modules) or their text encoder's rate
times `lr_scale` (0 holds them at their initial weights, out of the optimizer, as kohya leaves a group at
rate 0 out), not both. Either splits the text encoders' optimizer groups by block (`text_encoder_lr<lr>`,
`text_encoder_x<lr_scale>`), which needs a text encoder that trains (`train.text_encoder`,
`train.text_encoder_2`, `train.t5`) and layers whose weights the block rates split: a lora, loha or lokr
adapter, and a block of one of those kinds (another kind's layers would train at the encoder's rate).""",
        help="remove the block's lr_scale or its lr, train the text encoder, or give the block kind lora, "
        "loha or lokr",
    ),
    Code(
        "DBS600",
        ERROR,
        "train.t5_idle where T5-XXL cannot hold an idle adapter",
        """\
`train.t5_idle = "kohya"` puts train.t5's adapter (its layers on T5-XXL's attention and gated-MLP Linears)
on a T5-XXL that does not train, as kohya's lora_flux / lora_sd3 build it with `train_t5xxl=True` at T5's
`text_encoder_lr` 0. It needs a Flux, SD3 or Chroma model, an adapter kind with T5 layers, and
`train.t5 = false` (with `train.t5 = true` T5-XXL trains).""",
        help="remove train.t5_idle, or train a Flux, SD3 or Chroma model with train.t5 = false",
    ),
    Code(
        "DBS601",
        ERROR,
        'adapter.init_alpha = "ignore" with kohya\'s max-norm regularisation',
        """\
No longer raised: `adapter.init_alpha = "ignore"` with `adapter.max_norm` in kohya's form measures each
update at the starting file's alpha, as kohya's `apply_max_norm_regularization` reads the module's `alpha`
buffer that `load_weights` set from the file, while the layer trains at the adapter's alpha
(`plan.adapter.max_norm_alphas`).""",
        reserved=True,
    ),
    Code(
        "DBS602",
        ERROR,
        "optimizer.group_order with optimizer.split",
        """\
`optimizer.group_order = "text_encoders_first"` puts the text encoders' optimizer groups ahead of the
denoiser's, kohya's networks' order. `optimizer.split` above 1 (kohya's fused_optimizer_groups) cuts the
groups into chunks, one optimizer each, in dbspec's own order (the denoiser's first), so the two do not
combine.""",
        help="remove optimizer.group_order, or set optimizer.split = 1",
    ),
    # LyCORIS's T-LoRA dropout outside its bypass forward: DBS603.
    Code(
        "DBS603",
        WARNING,
        "A T-LoRA dropout without its bypass forward",
        """\
`adapter.dropout` with `kind = "tlora"` and `bypass = false`: LyCORIS's TLoraModule reads it only in its
bypass forward (`bypass_mode`); its default forward rebuilds the weight, W + ΔW, with no dropout, so it
changes nothing (the plan says 0). `module_dropout` acts in both. Not raised where the denoiser targets reach
SD3's patch convolution, whose TLoraModule takes its bypass path in either mode and drops its update.""",
        help="set adapter.bypass = true, or remove the dropout",
    ),
    # [[adapter.blocks]] of kind tlora outside the SD 1.x/2.x / SDXL U-Nets: DBS604 (reserved: they train).
    Code(
        "DBS604",
        ERROR,
        "T-LoRA blocks beside another kind on a transformer family",
        """\
No longer raised: `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` with `kind = "tlora"` (LyCORIS's
T-LoRA beside the adapter's kind: a preset file's `algo = "tlora"` entries on another algo's network, or
another kind's blocks on a T-LoRA adapter) train on Flux, SD3 and Chroma too, as on SD 1.x/2.x and SDXL:
with `fused_projections` kohya's TLoraModule starts a fused Linear from one SVD of its stacked weight, the
parts sharing Q and the singular values (checked against lycoris-lora 4.1.3's TLoraModule on kohya's
stacked Linear beside a LoCon network on tiny Flux).""",
        reserved=True,
    ),
    # a T-LoRA block's own bypass beside the adapter's dropout: DBS605 (reserved: each layer drops in its
    # own mode).
    Code(
        "DBS605",
        ERROR,
        "A T-LoRA block's own bypass beside the adapter's dropout",
        """\
No longer raised: `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` `bypass` on a `kind = "tlora"`
adapter (a preset file's map entry's own `bypass_mode`) with `adapter.dropout` trains as LyCORIS's TLoraModule
does: each layer applies the dropout in its bypass forward only, so the layers in bypass_mode (the adapter's
or their block's) drop and the others do not (checked against lycoris-lora 4.1.3's network from such a
file on tiny SD 1.x).""",
        reserved=True,
    ),
    Code(
        "DBS606",
        WARNING,
        "A group kept at learning rate 0 that the optimizer or schedule moves",
        """\
`optimizer.text_encoder_at_zero = "keep"` keeps a text encoder at `text_encoder_lr` (`text_encoder_2_lr`) 0
in the optimizer as one group at rate 0, as kohya networks.lora_fa keeps its text-encoder group;
`optimizer.denoiser_at_zero = "keep"` keeps the denoiser at `lr` 0 so, as kohya train_db.py keeps its U-Net
at learning_rate 0. Either lets the optimizer and schedule do with the group what they do: here they move it.
D-Adaptation's DAdaptAdam (`decouple`) and Prodigy shrink every group by their decoupled weight decay at d x
the largest rate; Prodigy with betas[0] = 0 steps every group by its raw gradient; DAdaptSGD with momentum
averages every group toward its start, which rounding moves; DAdaptLion steps every group by d x the largest
rate; Adafactor's relative step ignores the groups' rates; a positive `schedule.eta_min` lifts the group's
rate from 0 toward it; OneCycleLR and CyclicLR set the group's rate from its bounds, where one above 0 is its
(at bounds of 0 they hold it at 0: then nothing moves it, the group is held, DBS229, and the plan records
"hold"). The group adds nothing to D-Adaptation's or Prodigy's estimate of d, so the run is the same whatever
the groups' order (kohya's text encoder first, dbspec's denoiser first). The group trains, if oddly: give it
a rate of its own unless you are reproducing such a run.""",
        help='give the group a rate above 0, or optimizer.text_encoder_at_zero (denoiser_at_zero) = "hold" '
        "with an optimizer and schedule that hold it",
    ),
    Code(
        "DBS607",
        WARNING,
        "an adapter target or block pattern names no layer of the public model",
        """\
`adapter.denoiser_targets` and `adapter.conv_targets` are matched as peft matches them (a layer whose path is
the target or ends with `.<target>`); `[[adapter.blocks]]`, `[[adapter.text_encoder_blocks]]` patterns and
`adapter.exclude` are searched (Python `re.search`) in the layers' paths, the denoiser's diffusers names and a
text encoder's `<component>.<path>`. One that names no layer of the family's public model matches nothing,
silently: a block index past the model's depth (`transformer_blocks.40.attn.to_q` on SD3 medium's 24 joint
blocks, converted from diffusers' `--lora_blocks`), a typo, another family's names. The check reads the public
model's layout (its own for a well-known hub id, else every public model of the family; dbspec's
`denoiser_layout.py`), not the loaded model's, and the message lists the valid block ranges. A run still
starts: the entry just adapts nothing.""",
        help="name layers the model has, or remove the entry",
    ),
    Code(
        "DBS608",
        WARNING,
        "optimizer.text_encoder_at_zero or denoiser_at_zero with no group at rate 0 to keep",
        """\
`optimizer.text_encoder_at_zero` says what a text encoder at `text_encoder_lr` (`text_encoder_2_lr`) 0
beside a training denoiser is, `optimizer.denoiser_at_zero` what the denoiser at `lr` 0 beside a training
text encoder is. Here no such part is at rate 0 (no training text encoder at rate 0; `lr` above 0, or
`train.denoiser = false`), so the setting changes nothing.""",
        help="remove the setting",
    ),
    Code(
        "DBS609",
        WARNING,
        "Output preservation with the adapter on the text encoder only",
        """\
A dataset with `preserve_output = true` in a run whose adapter trains only the text encoder (`train.denoiser
= false`): the base prediction is the denoiser's own (it has no adapter to switch off) on the captions the
adapted text encoder encoded, so it equals the prediction: those samples add zero loss and zero gradient, yet
count in the batch mean, shrinking the other samples' share. This is what kohya's `diff_output_preservation`
does with `--network_train_text_encoder_only` (set_multiplier(0) turns the network off after the captions
are encoded, and the U-Net has no module of it), so converted configs keep it; a spec of its own rarely wants
it.""",
        help="remove preserve_output (or train the denoiser with the adapter) unless reproducing kohya's run",
    ),
    Code(
        "DBS610",
        WARNING,
        "`adapter.max_norm` on a GLoRA, DyLoRA, full or IA^3 adapter with no layer it scales",
        """\
A GLoRA, DyLoRA, full or IA^3 adapter's `max_norm` is LyCORIS's max-norm regularisation of its \
`[[adapter.blocks]]` /
`[[adapter.text_encoder_blocks]]` of kind lora, loha, lokr, diag-oft or boft (a LyCORIS preset file's entries
of those algorithms). LyCORIS's GLoRAModule and DyLoraModule keep the base `apply_max_norm`, which scales
nothing, and so do its full and IA^3 modules: with no block of those kinds training some layer, the setting
changes nothing and 0, 0, 0 is logged, as kohya's lycoris.kohya network does.""",
        help="remove adapter.max_norm, or give some layers a kind that has LyCORIS's max norm",
    ),
    Code(
        "DBS611",
        ERROR,
        "A T-LoRA adapter's block at alpha 0 outside Diag-OFT / BOFT",
        """\
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` `alpha` on a `kind = "tlora"` adapter is the
matched layers' scale alpha / rank, above 0, except on a block of `kind = "diag-oft"` or `"boft"`, where it
is their constraint (LyCORIS's `constraint`: 0 is none). LyCORIS's modules read an alpha of 0 as their rank
(TLoraModule's, LoConModule's `alpha or lora_dim`), which a kohya preset file's entry reaches as the
network's alpha (`alpha or self.alpha`), never as 0.""",
        help="give the block an alpha above 0 (the rank for scale 1)",
    ),
    Code(
        "DBS612",
        ERROR,
        "Nesterov momentum with dampening",
        """\
`optimizer.nesterov = true` with `dampening` above 0: torch's SGD raises ValueError ("Nesterov momentum
requires a momentum and zero dampening"), so the run would fail before its first step (kohya's SGDNesterov
with a dampening in optimizer_args fails alike).""",
        help="set dampening = 0, or nesterov = false",
    ),
    Code(
        "DBS614",
        WARNING,
        "datasets.missing_captions where no caption file can be missing",
        """\
`missing_captions` says what an image without a caption file trains with under `captions = "textfile"`. It
has no effect where no caption file is read (`captions = "prompt"` or `"filename"`, or a `metadata` file
that holds the captions) or where the dataset's `prompt` stands in for every missing caption file
(`layout = "folder"`; with `"kohya_folders"` a sub-folder's class tokens may be empty, so it can apply).""",
        help='remove missing_captions, or use captions = "textfile" without a prompt',
    ),
    Code(
        "DBS616",
        WARNING,
        "A reversed face-crop range",
        """\
`datasets[].face_crop = [lo, hi]` with lo above hi. kohya's `--face_crop_aug_range` asserts the order, but a
dataset config's `face_crop_aug_range` takes any pair, and its crop_target then runs with crossed bounds: the
smallest scale is computed from hi and the largest, capped below by it, from lo, so both are the scale of
[hi, hi] and no scale is drawn; the window is still shifted by the small draw (up to a twentieth of a face of
at least 40 px) kohya adds when the ends differ and crop is not "random". dbspec runs it the same way
(`dbspec/plan/face_crop.py`); the converted kohya configs keep it.""",
        help="write [hi, hi] for a fixed scale without the shift, or [lo, hi] in order for a drawn scale",
    ),
    Code(
        "DBS617",
        ERROR,
        "An adapter block scaled by 0 whose layers are not DyLoRA's",
        """\
`zero_scale = true` on an `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` entry builds the matched
DyLoRA layers with their update scaled by 0, as LyCORIS's DyLoraModule runs once a `--network_weights` file
sets its alpha buffer to 0: built, drawing `module_dropout`, adding nothing. Only a `kind = "dylora"`
adapter's own layers (its blocks of kind "adapter" or "dylora") have that buffer.""",
        help="remove zero_scale, or give the block a rank of 0 (no layer)",
    ),
    Code(
        "DBS618",
        ERROR,
        "An IA^3 block's input side where it cannot act",
        """\
`on_input = true` on `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS preset file's map
entry's `train_on_input`) makes the matched IA^3 layers scale their input channels, as LyCORIS's IA3Module
with train_on_input does. It acts on a block of kind `ia3` beside a lora, loha, lokr, dylora, glora, full or
tlora adapter's layers, and on an ia3 adapter's own block (of kind `adapter`), which on Flux, SD3 and Chroma
needs `adapter.fused_projections` (LyCORIS's one IA3Module per fused Linear: one input-side scale its parts
share). A block of another `kind` has no IA^3 layers.""",
        help="remove the block's on_input, or give the block kind ia3 on a lora, loha, lokr, dylora, glora, "
        "full or tlora adapter (an ia3 adapter: its own block, or list the layers in input_targets)",
    ),
    Code(
        "DBS620",
        ERROR,
        "ProdigyPlusScheduleFree over bf16 or fp16 weights",
        """\
`optimizer.kind = "prodigy_plus_schedulefree"` with `precision.weights = "bf16"` or `"fp16"`. The
prodigy-plus-schedule-free package rounds bf16 weights stochastically itself (its `stochastic_rounding`
default, drawing from torch's global generator, which dbspec's stochastic rounding does not share) and is made
for bf16 and fp32 weights only; dbspec runs it over fp32 weights (kohya's `full_bf16` / `full_fp16` with it
are refused by the converter).""",
        help='use precision.weights = "fp32" (mixed precision still computes in bf16 or fp16), or another '
        "optimizer.kind",
    ),
    Code(
        "DBS621",
        WARNING,
        "adapter.rank_dropout on a DyLoRA adapter without blocks that draw it",
        """\
LyCORIS's DyLoraModule takes the network's `rank_dropout` and never reads it; only the modules of a preset
file's entries of other algorithms draw it (LoCon's and full's row masks, LoHa's, the Diag-OFT rotations'
dropout). On a `kind = "dylora"` adapter `rank_dropout` is therefore those blocks' alone (`[[adapter.blocks]]`
/ `[[adapter.text_encoder_blocks]]` of kind lora, loha, full or diag-oft): without them the value changes
nothing.""",
        help="remove adapter.rank_dropout, or add the blocks it is meant for",
    ),
    Code(
        "DBS622",
        ERROR,
        "A T-LoRA block's own start where it cannot act",
        """\
`data_init = false` on a T-LoRA adapter's `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (a LyCORIS
preset file's map entry's `use_data_init`) starts the matched T-LoRA layers from the SVD of a random matrix
drawn as LyCORIS's TLoraModule draws it (with `fused_projections`, one matrix over each fused Linear's
stacked rows, as TLoraModule on kohya's layer); a `sig_type` other than `principal` (the entry's
`sig_type`) from other singular triplets. A block of another `kind` has no T-LoRA layers to start.
Beside a lora, loha or lokr adapter's layers a block of kind `tlora` starts its own way (a LoCon / LoHa /
LoKr network's T-LoRA entry's own `use_data_init` / `sig_type`), with `fused_projections` (Flux, SD3, Chroma)
one start per fused Linear; beside a full, ia3, glora or dylora adapter's layers too; beside other kinds'
layers (or on a block of another kind) it is not built.""",
        help="remove the block's data_init / sig_type, or give the block kind tlora (beside lora / loha / "
        "lokr layers)",
    ),
    Code(
        "DBS623",
        WARNING,
        "adapter.norm_rank_dropout without norm offsets",
        """\
`adapter.norm_rank_dropout` is the rank dropout of the norm offsets alone (`denoiser_norms`,
`text_encoder_norms`, `text_encoder_2_norms`; LyCORIS's NormModule draws the network's `rank_dropout`, and
kohya's `lycoris.kohya` with `train_norm` beside BOFT, DyLoRA or GLoRA outside `bypass_mode` converts it
there, as those modules never read it). The adapter's own layers never draw it: with no norm offsets the
value changes nothing.""",
        help="remove adapter.norm_rank_dropout, or add the norm offsets it is meant for",
    ),
    Code(
        "DBS624",
        WARNING,
        "adapter.rank_dropout on a T-LoRA adapter without blocks that draw it",
        """\
LyCORIS's TLoraModule takes the network's `rank_dropout` and never reads it; only the modules of a preset
file's entries of other algorithms draw it (LoCon's and full's row masks, LoHa's, the Diag-OFT rotations'
dropout). On a `kind = "tlora"` adapter `rank_dropout` is therefore those blocks' alone (`[[adapter.blocks]]`
/ `[[adapter.text_encoder_blocks]]` of kind lora, loha, full or diag-oft): without them the value changes
nothing.""",
        help="remove adapter.rank_dropout, or add the blocks it is meant for",
    ),
    Code(
        "DBS625",
        ERROR,
        "A block's own scalar on layers without a scalar per block",
        """\
`scalar = "on"` / `"off"` in `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of a DyLoRA, full,
IA^3 or T-LoRA adapter gives the matched layers LyCORIS's trained scalar (a LyCORIS preset file's map
entry's own `use_scalar`). dbspec builds it per block on LoRA/LoCon, LoHa, LoKr and GLoRA layers alone: the
block needs `kind = "lora"`, `"loha"`, `"lokr"` or `"glora"` (a GLoRA adapter's own blocks take one of
their own too).""",
        help='set the block\'s scalar to "adapter", or its kind to "lora" / "loha" / "lokr" / "glora"',
    ),
    Code(
        "DBS629",
        ERROR,
        "A LoKr adapter's bypass rank-dropout form without its bypass dropout",
        """\
No longer raised: `rank_dropout_form = "lycoris_bypass"` on a `kind = "lokr"` adapter without
`output_dropout` is kohya's lycoris.kohya LoKr network in `bypass_mode` with a `rank_dropout` and no
`dropout`: the `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of kind lora draw LoConModule's bypass
rank mask and those of kind loha LohaModule's row mask with no Dropout after them (LyCORIS's `drop` is
nn.Identity at 0, drawing nothing), the LoKr layers none (checked against lycoris-lora 4.1.3).""",
        reserved=True,
    ),
    Code(
        "DBS630",
        WARNING,
        "adapter.rank_dropout on a LoKr adapter's bypass form without blocks that draw it",
        """\
With `rank_dropout_form = "lycoris_bypass"` a `kind = "lokr"` adapter's LoKr layers draw no rank dropout
(LyCORIS's LokrModule never reads it in `bypass_mode`); only its `[[adapter.blocks]]` /
`[[adapter.text_encoder_blocks]]` of kind lora and loha do (LoConModule's bypass rank mask, LohaModule's row
mask). Without them the value changes nothing.""",
        help="remove adapter.rank_dropout, or add the blocks it is meant for",
    ),
    Code(
        "DBS631",
        WARNING,
        "A LoHa adapter's bypass rank-dropout form without LoRA blocks or rank_dropout",
        """`rank_dropout_form` on a `kind = "loha"` adapter says how its `[[adapter.blocks]]` /
`[[adapter.text_encoder_blocks]]` of kind lora draw `rank_dropout`: `lycoris_bypass` is LyCORIS's LoConModule
bypass forward (kohya's lycoris.kohya LoHa network in `bypass_mode`: one rank mask over each down
projection), `lycoris` its default forward (the output rows). The LoHa layers draw LohaModule's row mask in
either form, so without a `rank_dropout` or blocks of kind lora the form changes nothing.""",
        help="remove adapter.rank_dropout_form, or add the rank_dropout and the lora blocks it is meant for",
    ),
    Code(
        "DBS632",
        WARNING,
        "An IA^3 or DyLoRA adapter's dropout that reaches no layer",
        """\
`adapter.dropout` on a `kind = "ia3"` or `kind = "dylora"` adapter is LyCORIS's network `dropout`, which
IA3Module and DyLoraModule never read: it drops the update of the adapter's `[[adapter.blocks]]` /
`[[adapter.text_encoder_blocks]]` of kind lora, loha, lokr, glora and tlora in their bypass forward
(`bypass = true`), as LoConModule / LohaModule / LokrModule / GLoRAModule / TLoraModule apply it there.
Without `bypass` or such blocks it changes nothing.""",
        help="remove adapter.dropout, or set bypass = true beside the lora / loha / lokr blocks it is for",
    ),
    Code(
        "DBS633",
        ERROR,
        "A T-LoRA adapter's k x k convolution outside its other kinds' blocks",
        """\
A `kind = "tlora"` adapter's `conv_targets` are the k x k convolutions its `[[adapter.blocks]]` of another
`kind` (lora, loha, lokr, full, ia3, glora, diag-oft, boft, dylora: a LyCORIS preset file's entries of other
algorithms on the ResNets of an `algo=tlora` network) adapt at their `conv_rank`; the T-LoRA layers take
none, as LyCORIS's TLoraModule cannot run a k x k convolution (its 1x1 factors add an output of another
size). A block of T-LoRA layers with a `conv_rank`, or `conv_targets` on a transformer family (no k x k
convolution to give them), is refused.""",
        help='give those convolutions a block of another kind (e.g. kind = "lora"), or remove the conv_rank',
    ),
)

BY_CODE: dict[str, Code] = {row.code: row for row in CODES}


def get(code: str) -> Code:
    """The row of `code`; KeyError for a code that is not in the table."""
    return BY_CODE[code]


def help(code: str) -> str:  # noqa: A001 (the field's name; callers write codes.help)
    """The default help line of `code`; KeyError when the row has none (a call site relying on
    it must get one)."""
    text = BY_CODE[code].help
    if not text:
        raise KeyError(f"{code} has no help line in dbspec/codes.py")
    return text


def group_of(code: str) -> Group:
    return next(g for g in GROUPS if g.digit == code[3])
