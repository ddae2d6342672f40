"""kohya networks.lora_fa at `text_encoder_lr 0` (issue 12; was a DBS404 warning): its
prepare_optimizer_params (networks/lora_fa.py) keeps the text encoders' group in the optimizer at rate 0
(networks.lora drops it), train_network.py runs the text encoders under grad, optimizer.zero_grad clears the
group every step and max_grad_norm's clip counts its gradients. Under a clip that is dbspec's text encoder
trained at `optimizer.text_encoder_lr = 0` (DBS229 names the cost), where the optimizer and schedule hold a
group at rate 0 (the spec rule DBS200 refuses the others, which keep the warning); with max_grad_norm 0
nothing reads those gradients and `train.text_encoder = false` is the same run, cheaper."""

from __future__ import annotations

import pytest
from convert_kit import (
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    images,
    kohya,
    kohya_lora,
    messages,
    plan_of,
    write,
)

FA = "--network_module networks.lora_fa --network_dim 8 --network_alpha 4 --unet_lr 1e-4 --text_encoder_lr 0"
CLIPPED = "count in the total norm"  # clipped_idle_text's DBS404 warning


def _held(plan, encoders: tuple[str, ...] = ("text_encoder",)) -> None:
    """The plan trains the text encoder(s) at rate 0 beside the U-Net at 1e-4: LoRA-FA adapters on them, run
    under grad (no text cache), in the optimizer, and DBS229 in the plan's warnings."""
    o = plan.optimizer
    assert plan.train_denoiser and plan.train_text_encoder and plan.idle_text_encoders == ()
    assert o.lr == pytest.approx(1e-4) and o.text_encoder_lr == 0 and o.text_encoder_2_lr is None
    assert (plan.adapter.freeze_down, plan.adapter.frozen_down_grad) == (True, "kohya")
    trained = {c.name: c.trainable for c in plan.precision.components if c.name.startswith("text_encoder")}
    assert trained == dict.fromkeys(encoders, "lora")
    assert not plan.cache.text_embeddings
    assert any("DBS229" in w and "text encoder(s) train at learning rate 0" in w for w in plan.warnings)


def test_a_command_line_at_text_encoder_lr_0_trains_the_text_encoder_at_rate_0(tmp_path):
    """train_network.py with kohya's default max_grad_norm 1.0 and with 0.5: exact, no warning."""
    for clip, expected in (("", 1.0), (" --max_grad_norm 0.5", 0.5)):
        outcome = kohya_lora(tmp_path, FA + clip)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert CLIPPED not in messages(outcome, "DBS404")
        plan = plan_of(outcome, tmp_path)
        _held(plan)
        assert plan.optimizer.max_grad_norm == expected


def test_without_a_clip_the_cheaper_run_is_kept(tmp_path):
    """max_grad_norm 0: the group at rate 0 changes nothing kohya reads, so train.text_encoder = false (the
    same run, cheaper); --network_train_unet_only drops the modules (the same)."""
    for exact in ("--max_grad_norm 0", "--network_train_unet_only"):
        outcome = kohya_lora(tmp_path, f"{FA} {exact}")
        assert CLIPPED not in messages(outcome, "DBS404"), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        assert plan.train_denoiser and not plan.train_text_encoder
        assert plan.optimizer.lr == pytest.approx(1e-4)
        assert not any("DBS229" in w for w in plan.warnings)


SDXL_CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "1024,1024"
output_dir = "out"
output_name = "fa_xl"
network_module = "networks.lora_fa"
network_dim = 16
network_alpha = 8
unet_lr = 1e-4
text_encoder_lr = [0, 1e-5]
optimizer_type = "{optimizer}"
lr_scheduler = "cosine"
lr_warmup_steps = 20
max_train_steps = 400
train_batch_size = 1
mixed_precision = "bf16"
max_grad_norm = 0.5
save_model_as = "safetensors"
"""


def _sdxl(tmp_path, optimizer: str = "AdamW8bit"):
    images(tmp_path / "img" / "20_ohwx woman", 3, (1024, 1024))
    write(tmp_path / "cfg.toml", SDXL_CONFIG.format(model=SDXL, optimizer=optimizer))
    command = "accelerate launch sdxl_train_network.py"
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=command)


def test_an_sdxl_config_holds_both_encoders_at_the_first_value(tmp_path):
    """sdxl_train_network.py: lora_fa has no per-encoder rates, train_network.py passes it the first
    text_encoder_lr value, so both CLIP encoders are one group at rate 0 (dbspec's text_encoder_2_lr follows
    text_encoder_lr: one group)."""
    outcome = _sdxl(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert CLIPPED not in messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    _held(plan, ("text_encoder", "text_encoder_2"))
    assert plan.optimizer.kind == "adamw8bit" and plan.optimizer.max_grad_norm == 0.5
    assert plan.schedule.lr_schedule == "cosine" and plan.schedule.warmup_steps == 20


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ("--optimizer_type AdamWScheduleFree", "adamw_schedulefree"),  # an averaging weight of 0
        ("--optimizer_type came_pytorch.CAME", "came"),  # built at learning_rate; update x the group's rate
        ('--lr_scheduler_type StepLR --lr_scheduler_args "step_size=100" "gamma=0.5"', "adamw"),
    ],
)
def test_optimizers_and_schedules_that_hold_a_group_at_rate_0(tmp_path, extra, kind):
    outcome = kohya_lora(tmp_path, f"{FA} --optimizer_type AdamW {extra}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    _held(plan)
    assert plan.optimizer.kind == kind


D_LR = "--learning_rate 1.0 --unet_lr 1.0"


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ("--optimizer_type DAdaptAdam", "dadapt_adam"),  # weight decay coupled (decouple False): grad only
        ('--optimizer_type DAdaptAdam --optimizer_args "weight_decay=0.1"', "dadapt_adam"),
        (
            '--optimizer_type DAdaptation --optimizer_args "decouple=True" "weight_decay=0.1"',
            "dadapt_adam_preprint",
        ),
        ("--optimizer_type DAdaptSGD", "dadapt_sgd"),
        ("--optimizer_type Prodigy", "prodigy"),  # weight_decay 0, betas[0] 0.9
    ],
)
def test_d_adaptation_and_prodigy_that_leave_a_group_at_rate_0_out_of_d_hold_it(tmp_path, extra, kind):
    """Was the DBS404 warning: these classes neither move a group at rate 0 nor let it feed d, in kohya's
    group order or dbspec's (compiler/zero_group.py; tests/runtime/test_optim_zero_group.py runs them)."""
    outcome = kohya_lora(tmp_path, f"{FA} {D_LR} {extra}".replace("--unet_lr 1e-4 ", ""))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert CLIPPED not in messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == kind and plan.optimizer.lr == 1.0 and plan.optimizer.text_encoder_lr == 0
    assert plan.train_text_encoder and any("DBS229" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (
            '--optimizer_type DAdaptAdam --optimizer_args "decouple=True" "weight_decay=0.1"',
            "decouple = true",
        ),
        ('--optimizer_type Prodigy --optimizer_args "weight_decay=0.01"', "weight decay (0.01)"),
        ('--optimizer_type Prodigy --optimizer_args "betas=(0,0.999)"', "raw gradient"),
        ('--optimizer_type DAdaptSGD --optimizer_args "momentum=0.9"', "momentum"),
        (
            '--lr_scheduler_type CosineAnnealingLR --lr_scheduler_args "T_max=300" "eta_min=1e-7"',
            "eta_min",
        ),
    ],
)
def test_where_the_group_moves_it_is_kept_at_rate_0(tmp_path, extra, why):
    """D-Adaptation and Prodigy where they move a group at rate 0 (it adds nothing to their estimate of d,
    so the groups' order does not matter), and an eta_min above 0 (it lifts the group): was the DBS404
    warning; now the text encoder trains at optimizer.text_encoder_lr = 0 with text_encoder_at_zero =
    "keep", the same class and schedule moving it as kohya's (DBS606 in the plan), clip or not."""
    rates = D_LR if "optimizer_type" in extra else ""
    for clip in ("", " --max_grad_norm 0"):
        fa = FA.replace("--unet_lr 1e-4 ", "") if rates else FA
        outcome = kohya_lora(tmp_path, f"{fa} {rates} {extra}{clip}")
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert CLIPPED not in messages(outcome, "DBS404")
        plan = plan_of(outcome, tmp_path)
        assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 0
        said = [w for w in plan.warnings if "DBS606" in w]
        assert said and why in said[0], plan.warnings


def test_dadapt_lion_keeps_the_group_in_kohyas_group_order(tmp_path):
    """DAdaptLion (the group at rate 0 trains at d x the U-Net's rate and feeds d, summed in the groups'
    order): kept at optimizer.text_encoder_lr = 0 with text_encoder_at_zero = "keep" in kohya's group order,
    the text encoder's first (optimizer.group_order = "text_encoders_first"; was the DBS404 warning over an
    untrained text encoder), clip or not; the plan says how it moves (DBS606)."""
    for clip in ("", " --max_grad_norm 0"):
        fa = FA.replace("--unet_lr 1e-4 ", "")
        outcome = kohya_lora(tmp_path, f"{fa} {D_LR} --optimizer_type DAdaptLion{clip}")
        assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
        plan = plan_of(outcome, tmp_path)
        o = plan.optimizer
        assert plan.train_text_encoder and o.text_encoder_lr == 0 and o.lr == 1.0
        assert (o.kind, o.text_encoder_at_zero, o.group_order) == (
            "dadapt_lion",
            "keep",
            "text_encoders_first",
        )
        said = [w for w in plan.warnings if "DBS606" in w]
        assert said and "whatever its own" in said[0], plan.warnings
    # another optimizer keeps dbspec's own order (the order changes nothing there)
    fa = FA.replace("--unet_lr 1e-4 ", "")
    outcome = kohya_lora(tmp_path, f"{fa} {D_LR} --optimizer_type Prodigy --optimizer_args weight_decay=0.01")
    assert plan_of(outcome, tmp_path).optimizer.group_order == "denoiser_first"


@pytest.mark.parametrize("optimizer", ["DAdaptAdan", "DAdaptAdaGrad", "DAdaptAdanIP"])
def test_first_group_rate_classes_train_nothing_in_kohyas_order(tmp_path, optimizer):
    """DAdaptAdaGrad, DAdaptAdan, DAdaptAdanIP step every group by d x the first group's rate, lora_fa's
    text encoder's 0: kohya's run trains nothing (was the DBS404 warning over a trained U-Net): DBS403."""
    outcome = kohya_lora(tmp_path, f"{FA.replace('--unet_lr 1e-4 ', '')} {D_LR} --optimizer_type {optimizer}")
    assert "kohya's run trains nothing" in messages(outcome, "DBS403"), errors(outcome)


LIFTED = "Adafactor's relative step pops that rate"  # lift_kept_rates' note


def test_adafactors_relative_step_trains_the_text_encoder(tmp_path):
    """kohya's Adafactor (relative_step, its default): train_util.get_optimizer pops every group's `lr`, the
    text encoders' group at rate 0 included, and Adafactor steps each group at its own relative rate, so
    kohya trains the text encoder as the U-Net, clip or not (was a DBS404 warning; without a clip plain
    untrained): trained in dbspec at Adafactor's first step's rate (only the logged initial value)."""
    for clip in ("", " --max_grad_norm 0"):
        outcome = kohya_lora(tmp_path, f"{FA} --optimizer_type Adafactor{clip}")
        assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
        assert any(LIFTED in n and "text encoder group" in n for n in outcome.conversion.notes)
        plan = plan_of(outcome, tmp_path)
        o = plan.optimizer
        assert plan.train_denoiser and plan.train_text_encoder and plan.idle_text_encoders == ()
        assert (o.kind, o.adafactor.relative_step, o.adafactor.warmup_init) == ("adafactor", True, False)
        assert o.lr == pytest.approx(1e-4) and o.text_encoder_lr == pytest.approx(1e-2)
        assert plan.schedule.lr_schedule == "adafactor" and not any("DBS229" in w for w in plan.warnings)
        trained = {c.name: c.trainable for c in plan.precision.components if c.name == "text_encoder"}
        assert trained == {"text_encoder": "lora"}


ADAFACTOR_XL = (
    SDXL_CONFIG.replace("max_grad_norm = 0.5", "max_grad_norm = 0.0").replace(
        'lr_scheduler = "cosine"\nlr_warmup_steps = 20\n', ""
    )
    + 'optimizer_args = ["scale_parameter=False", "warmup_init=True"]\n'
)


def test_an_sdxl_config_with_warmup_init_trains_both_encoders(tmp_path):
    """sdxl_train_network.py's config file with Adafactor's warmup_init (it turns relative_step on) and
    text_encoder_lr [0, 1e-5]: lora_fa's one text-encoder group at the first value, 0, popped as the
    U-Net's, so both CLIP encoders train, without a clip too: their rate Adafactor's first step's with
    warmup_init, 1e-6."""
    images(tmp_path / "img" / "20_ohwx woman", 3, (1024, 1024))
    write(tmp_path / "cfg.toml", ADAFACTOR_XL.format(model=SDXL, optimizer="Adafactor"))
    outcome = kohya(
        tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch sdxl_train_network.py"
    )
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert plan.train_denoiser and plan.train_text_encoder and plan.idle_text_encoders == ()
    assert (o.adafactor.relative_step, o.adafactor.warmup_init, o.adafactor.scale_parameter) == (
        True,
        True,
        False,
    )
    assert o.lr == pytest.approx(1e-4) and o.text_encoder_lr == pytest.approx(1e-6)
    assert o.text_encoder_2_lr is None and o.max_grad_norm == 0
    trained = {c.name: c.trainable for c in plan.precision.components if c.name.startswith("text_encoder")}
    assert trained == {"text_encoder": "lora", "text_encoder_2": "lora"}


def test_adafactor_without_relative_step_holds_the_group_at_rate_0(tmp_path):
    """relative_step=False: Adafactor scales each group's whole step (and weight decay) by its own rate, so
    the group at 0 never moves: held at optimizer.text_encoder_lr = 0 under the clip, as with AdamW."""
    args = f'{FA} --optimizer_type Adafactor --optimizer_args "relative_step=False" "scale_parameter=False"'
    outcome = kohya_lora(tmp_path, args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert not any(LIFTED in n for n in outcome.conversion.notes)
    plan = plan_of(outcome, tmp_path)
    _held(plan)
    assert (plan.optimizer.kind, plan.optimizer.adafactor.relative_step) == ("adafactor", False)


def test_adafactors_relative_step_trains_lora_fas_unet_at_rate_0_too(tmp_path):
    """The U-Net's group at --unet_lr 0 is kept and popped alike: both parts train."""
    outcome = kohya_lora(
        tmp_path,
        FA.replace("--unet_lr 1e-4 --text_encoder_lr 0", "--unet_lr 0 --text_encoder_lr 1e-5")
        + " --optimizer_type Adafactor",
    )
    assert not {"DBS402", "DBS403", "DBS404", "DBS408"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.train_text_encoder
    assert plan.optimizer.lr == pytest.approx(1e-2) and plan.optimizer.text_encoder_lr == pytest.approx(1e-5)


@pytest.mark.parametrize("module", ["networks.lora", "networks.dylora", "lycoris.kohya"])
def test_networks_that_drop_a_rate_0_group_stay_untrained_under_relative_step(tmp_path, module):
    """networks.lora, dylora and lycoris.kohya leave a group at rate 0 out of the optimizer ("NO LR
    skipping!") before get_optimizer pops the rates: Adafactor never sees it, the text encoder stays
    untrained."""
    args = FA.replace("networks.lora_fa", module) + " --optimizer_type Adafactor --max_grad_norm 0"
    outcome = kohya_lora(tmp_path, args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert not any(LIFTED in n for n in outcome.conversion.notes)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and not plan.train_text_encoder


def test_nothing_else_training_is_not_held(tmp_path):
    """The U-Net at rate 0 too (kohya's lora_fa keeps both groups, neither moves): no text encoder at rate 0
    beside a trained part; the conversion keeps what it said before (nothing trains)."""
    outcome = kohya_lora(tmp_path, FA.replace("--unet_lr 1e-4", "--unet_lr 0"))
    assert "DBS229" not in codes(outcome) and "DBS408" in codes(outcome)  # nothing trains: DBS217
    assert outcome.exit_code == 1 and "nothing trains" in messages(outcome, "DBS408")


Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_3_self_attn_k_proj"


def _weights(path) -> None:
    """A kohya LoRA file (lora_fa saves networks.lora's layout) with one U-Net and one CLIP module."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {}
    for name, width in ((Q, 320), (TE, 768)):
        tensors[f"{name}.lora_down.weight"] = np.full((8, width), 0.01, np.float16)
        tensors[f"{name}.lora_up.weight"] = np.full((width, 8), 0.02, np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, np.float32)
    save_file(tensors, str(path))


@pytest.mark.parametrize("extra", ["", " --max_grad_norm 0", " --dim_from_weights"])
def test_a_files_text_modules_are_held_at_rate_0_whatever_the_clip(tmp_path, extra):
    """--network_weights: lora_fa's load_weights puts the file's CLIP modules in the group kept at rate 0, so
    the text encoder encodes through them, never moving: held at rate 0 from adapter.init_weights, with or
    without a clip (was DBS403: an untrained text encoder would drop the file's modules)."""
    _weights(tmp_path / "prev.safetensors")
    outcome = kohya_lora(tmp_path, f"{FA} --network_weights prev.safetensors{extra}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 0 and plan.idle_text_encoders == ()
    assert plan.adapter.init_weights.endswith("prev.safetensors")
    said = [w for w in plan.warnings if "DBS229" in w]
    assert said and ("init_weights gives it modules of its own" in said[0]) == (extra == " --max_grad_norm 0")


def test_a_schedule_that_holds_the_group_at_0_is_the_held_text_encoder(tmp_path):
    """OneCycleLR with max_lr 0 for lora_fa's text-encoder group (the first of [text encoder, U-Net]) holds
    it at 0: the held text encoder under the clip, no text_encoder_at_zero = "keep" and no DBS606 saying it
    moves (DBS229 names the cost)."""
    schedule = '--lr_scheduler_type OneCycleLR --lr_scheduler_args "max_lr=[0,1e-4]" "total_steps=400"'
    outcome = kohya_lora(tmp_path, f"{FA} {schedule}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "text_encoder_at_zero" not in outcome.text
    plan = plan_of(outcome, tmp_path)
    _held(plan)
    assert plan.optimizer.text_encoder_at_zero == "hold" and not any("DBS606" in w for w in plan.warnings)
    assert {g.name: g.max_lr for g in plan.schedule.torch.groups} == {"denoiser": 1e-4, "text_encoder": 0}
