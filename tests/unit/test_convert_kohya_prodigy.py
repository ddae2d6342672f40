"""kohya's Prodigy optimizer_args (issue 12): get_optimizer builds `prodigyopt.Prodigy(params, lr=lr,
**optimizer_args)`; every argument that changes the update is an [optimizer] option now (was DBS403 for
d_coef, use_bias_correction, safeguard_warmup, decouple=False, beta3, slice_p, ...). Also torch AdamW's and
SGD's kernel keywords, AdamW's capturable and amsgrad, SGD's dampening, and dadaptation's log_every."""

from __future__ import annotations

import math

import attrs
import pytest

from convert_kit import (  # noqa: F401
    SD15,
    SDXL,
    codes,
    empty_hub_cache,
    errors,
    exact,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    plan_of,
    write,
)
from dbspec.plan.io import legacy_run_data, plan_to_data

# the common kohya LoRA Prodigy line (kohya_ss GUI presets, civitai guides)
PRODIGY = (
    '--optimizer_type=Prodigy --optimizer_args "decouple=True" "weight_decay=0.01" "d_coef=2" '
    '"use_bias_correction=True" "safeguard_warmup=True" "betas=0.9,0.99"'
)


def _common_line(plan) -> None:
    """The plan of PRODIGY: every argument at its value, the rest prodigyopt's defaults."""
    o = plan.optimizer
    assert (o.kind, o.lr, o.text_encoder_lr) == ("prodigy", 1.0, 1.0)
    assert (o.weight_decay, o.betas, o.eps) == (0.01, (0.9, 0.99), 1e-8)
    p = o.prodigy
    assert (p.d_coef, p.use_bias_correction, p.safeguard_warmup, p.decouple) == (2.0, True, True, True)
    assert (p.d0, p.growth_rate, p.slice_p) == (1e-6, None, 1)
    assert p.beta3 == math.sqrt(0.99)  # prodigyopt's beta3 None, computed as it computes it
    assert o.dadapt is None


def test_the_common_prodigy_line_converts_exactly_on_train_network(tmp_path):
    outcome = exact(kohya_lora(tmp_path, f"{PRODIGY} --learning_rate 1.0"))
    assert fate(outcome, "optimizer_args") == "mapped"
    _common_line(plan_of(outcome, tmp_path))
    spec = (tmp_path / "specs" / "converted.toml").read_text()
    assert "d_coef = 2.0" in spec and "safeguard_warmup = true" in spec
    assert "decouple" not in spec and "beta3" not in spec  # prodigyopt's own defaults: dbspec's derived ones


def test_the_common_prodigy_line_converts_exactly_on_sdxl_train_network(tmp_path):
    images(tmp_path / "img" / "4_ohwx", 2, (1024, 1024))
    outcome = exact(
        kohya(
            tmp_path,
            command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
            "--network_module=networks.lora --network_dim=16 --network_alpha=8 --train_data_dir=img "
            "--resolution=1024 --max_train_steps=400 --learning_rate=1.0 --network_train_unet_only "
            f"{PRODIGY}",
        )
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sdxl" and not plan.train_text_encoder
    _common_line(plan)


def test_the_prodigy_line_from_a_config_file(tmp_path):
    """kohya_ss writes optimizer_args as a TOML list of "key=value" strings in its config_file."""
    images(tmp_path / "data" / "10_ohwx", 2, (512, 512))
    write(
        tmp_path / "cfg.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
train_data_dir = "data"
resolution = "512,512"
max_train_steps = 300
learning_rate = 1.0
optimizer_type = "Prodigy"
optimizer_args = ["decouple=True", "weight_decay=0.01", "d_coef=2", "use_bias_correction=True",
  "safeguard_warmup=True", "betas=0.9,0.99"]
""",
    )
    outcome = exact(
        kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    )
    _common_line(plan_of(outcome, tmp_path))


def test_every_other_prodigy_argument_maps(tmp_path):
    """decouple=False (coupled decay, prodigyopt's default is True), d0, growth_rate, beta3, slice_p, eps;
    fsdp_in_use=False changes nothing."""
    outcome = exact(
        kohya_lora(
            tmp_path,
            '--optimizer_type prodigy --learning_rate 1.0 --optimizer_args "decouple=False" '
            '"weight_decay=0.1" "d0=1e-5" "growth_rate=1.02" "beta3=0.999" "slice_p=11" "eps=1e-7" '
            '"fsdp_in_use=False"',
        )
    )
    o = plan_of(outcome, tmp_path).optimizer
    p = o.prodigy
    assert (o.weight_decay, o.eps, o.betas) == (0.1, 1e-7, (0.9, 0.999))
    assert (p.decouple, p.d0, p.growth_rate, p.beta3, p.slice_p) == (False, 1e-5, 1.02, 0.999, 11)
    assert (p.d_coef, p.use_bias_correction, p.safeguard_warmup) == (1.0, False, False)


def test_prodigy_class_path_and_beta3_none(tmp_path):
    outcome = exact(
        kohya_lora(
            tmp_path,
            '--optimizer_type prodigyopt.Prodigy --learning_rate 1.0 --optimizer_args "beta3=None" '
            '"betas=(0.9,0.95)"',
        )
    )
    p = plan_of(outcome, tmp_path).optimizer.prodigy
    assert p.beta3 == math.sqrt(0.95) and p.growth_rate is None  # (kohya cannot write inf: literal_eval)


def test_fsdp_in_use_true_stays_refused_with_the_reason(tmp_path):
    outcome = kohya_lora(
        tmp_path, '--optimizer_type Prodigy --learning_rate 1.0 --optimizer_args "fsdp_in_use=True"'
    )
    said = messages(outcome, "DBS403")
    assert "fsdp_in_use=True" in said and "torch.distributed" in said, said


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ('"slice_p=0"', "slice_p=0"),
        ('"slice_p=1.5"', "slice_p=1.5"),
        ('"d0=0"', "d0=0"),
        ('"eps=0"', "eps=0"),
    ],
)
def test_prodigy_arguments_prodigyopt_refuses_are_invalid(tmp_path, args, said):
    outcome = kohya_lora(tmp_path, f"--optimizer_type Prodigy --learning_rate 1.0 --optimizer_args {args}")
    assert said in messages(outcome, "DBS402"), errors(outcome)


def test_a_d_coef_dbspec_cannot_hold_stays_unsupported(tmp_path):
    outcome = kohya_lora(tmp_path, '--optimizer_type Prodigy --learning_rate 1.0 --optimizer_args "d_coef=0"')
    assert "d_coef=0" in messages(outcome, "DBS403")


def test_coupled_decay_holds_a_lora_fa_text_encoder_at_rate_0(tmp_path):
    """Prodigy with decouple=False adds the decay to the gradient, which a group at rate 0 never folds into
    exp_avg (betas[0] > 0): the group is held, not kept (was DBS606's "keep" with every weight_decay)."""
    outcome = kohya_lora(
        tmp_path,
        "--network_module networks.lora_fa --network_dim 8 --network_alpha 4 --text_encoder_lr 0 "
        '--learning_rate 1.0 --optimizer_type Prodigy --optimizer_args "decouple=False" "weight_decay=0.01"',
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert o.text_encoder_lr == 0 and o.text_encoder_at_zero == "hold" and not o.prodigy.decouple
    assert not [w for w in plan.warnings if "DBS606" in w], plan.warnings


@pytest.mark.parametrize(
    ("args", "implementation"),
    [('"fused=True"', "fused"), ('"foreach=True"', "foreach"), ('"foreach=False" "fused=False"', "default")],
)
def test_adamw_kernel_keywords_map_to_the_implementation(tmp_path, args, implementation):
    outcome = exact(
        kohya_lora(tmp_path, f'--optimizer_type AdamW --optimizer_args "weight_decay=0.05" {args}')
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.implementation, o.weight_decay) == ("adamw", implementation, 0.05)


def test_adamw_fused_and_foreach_together_is_invalid(tmp_path):
    outcome = kohya_lora(tmp_path, '--optimizer_type AdamW --optimizer_args "fused=True" "foreach=True"')
    assert "RuntimeError" in messages(outcome, "DBS402")


def test_adamw_capturable_and_amsgrad(tmp_path):
    """capturable computes the same update (CUDA only, as RAdam's); amsgrad is an update of its own."""
    outcome = exact(
        kohya_lora(tmp_path, '--optimizer_type AdamW --optimizer_args "capturable=True" "amsgrad=True"')
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert o.kind == "adamw" and o.amsgrad


def test_sgd_dampening_and_fused(tmp_path):
    outcome = exact(
        kohya_lora(
            tmp_path, '--optimizer_type SGD --optimizer_args "momentum=0.9" "dampening=0.1" "fused=True"'
        )
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.momentum, o.dampening, o.implementation) == ("sgd", 0.9, 0.1, "fused")


def test_sgd_nesterov_with_dampening_is_invalid_as_torch_refuses_it(tmp_path):
    outcome = kohya_lora(tmp_path, '--optimizer_type SGDNesterov --optimizer_args "dampening=0.1"')
    assert "dampening" in messages(outcome, "DBS402")


def test_dadapt_log_every_only_prints(tmp_path):
    outcome = kohya_lora(
        tmp_path,
        '--optimizer_type DAdaptAdam --learning_rate 1.0 --optimizer_args "log_every=10" "decouple=True"',
    )
    assert "DBS403" not in codes(outcome) and "log_every" in messages(outcome, "DBS405")
    o = plan_of(outcome, tmp_path).optimizer
    assert o.kind == "dadapt_adam" and o.dadapt.decouple


def test_a_prodigy_run_from_before_the_options_keeps_its_run_hash(tmp_path):
    """A plan of prodigyopt's defaults (eps 1e-8, the runtime passed none then) hashes as the run before the
    options did; other settings, or another eps (which that runtime never passed), do not."""
    outcome = exact(kohya_lora(tmp_path, "--optimizer_type Prodigy --learning_rate 1.0"))
    plan = plan_of(outcome, tmp_path)
    assert (
        legacy_run_data(plan_to_data(plan), 3)["optimizer"]
        .keys()
        .isdisjoint({"prodigy", "amsgrad", "dampening"})
    )
    o = plan.optimizer
    for changed in (
        attrs.evolve(o, eps=1e-7),
        attrs.evolve(o, prodigy=attrs.evolve(o.prodigy, d_coef=2.0)),
        attrs.evolve(o, prodigy=attrs.evolve(o.prodigy, decouple=False)),
    ):
        legacy = legacy_run_data(plan_to_data(attrs.evolve(plan, optimizer=changed)), 3)
        assert "prodigy" in legacy["optimizer"], changed
