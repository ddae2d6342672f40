"""kohya's SGDNesterov (issue 12): sd-scripts library/train_util.py get_optimizer builds
torch.optim.SGD(nesterov=True) and sets momentum=0.9 when optimizer_args give none."""

from __future__ import annotations

import pytest

from convert_kit import SD15, codes, empty_hub_cache, fate, images, kohya, messages, plan_of  # noqa: F401

BASE = f"train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir d --resolution 512"
KOHYA_NESTEROV_MOMENTUM = 0.9  # train_util.get_optimizer: optimizer_kwargs["momentum"] = 0.9 when missing


@pytest.mark.parametrize(
    ("name", "args", "momentum", "fate_of_name"),
    [
        ("SGDNesterov", "", KOHYA_NESTEROV_MOMENTUM, "mapped"),
        ("sgdnesterov", '--optimizer_args "momentum=0.5" "weight_decay=0.01"', 0.5, "mapped"),
        ("SGDNesterov8bit", "", KOHYA_NESTEROV_MOMENTUM, "differs"),
    ],
)
def test_sgd_nesterov_converts_to_sgd_with_nesterov(tmp_path, name, args, momentum, fate_of_name):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{BASE} --optimizer_type {name} {args}", allow=name.endswith("8bit"))
    assert fate(outcome, "optimizer_type") == fate_of_name
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "sgd" and plan.optimizer.nesterov is True
    assert plan.optimizer.momentum == pytest.approx(momentum)


@pytest.mark.parametrize(
    ("args", "why"),
    [('"momentum=0"', "refuses momentum 0"), ('"nesterov=True"', "`nesterov`")],
)
def test_sgd_nesterov_arguments_kohya_would_crash_on_are_invalid(tmp_path, args, why):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{BASE} --optimizer_type SGDNesterov --optimizer_args {args}")
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_args") == "invalid"
    assert why in messages(outcome, "DBS402") and "DBS403" not in codes(outcome)


# --- LoRA+: networks.lora's loraplus_*_ratio network_args (kohya networks/lora.py set_loraplus_lr_ratio) ----

LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"


def _kohya_ratios(args: dict[str, float]) -> tuple[float, float]:
    """kohya's LoRANetwork: the UNet uses `loraplus_unet_lr_ratio or loraplus_lr_ratio`, the text encoders
    `loraplus_text_encoder_lr_ratio or loraplus_lr_ratio`; None (no LoRA+) is dbspec's 0."""
    general = args.get("loraplus_lr_ratio")
    unet = args.get("loraplus_unet_lr_ratio") or general
    text = args.get("loraplus_text_encoder_lr_ratio") or general
    return (unet or 0.0, text or 0.0)


@pytest.mark.parametrize(
    "args",
    [
        {"loraplus_lr_ratio": 16},
        {"loraplus_lr_ratio": 16, "loraplus_text_encoder_lr_ratio": 4},
        {"loraplus_unet_lr_ratio": 8},
        {"loraplus_text_encoder_lr_ratio": 2.5},
        {},
    ],
)
def test_loraplus_network_args_convert_to_the_plans_ratios(tmp_path, args):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    network = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --train_data_dir d --resolution 512 --learning_rate 1e-4"
        + (f" --network_args {network}" if network else ""),
    )
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio) == _kohya_ratios(args)
    if args:
        assert fate(outcome, "network_args") == "mapped"


def test_a_zero_loraplus_ratio_holds_the_up_matrices(tmp_path):
    """kohya gives the "plus" group lr x 0 and skips it, so its lora_up stays out of the optimizer (was
    DBS403): `loraplus_zero = "held"` (tests/unit/test_convert_kohya_loraplus_zero.py)."""
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path, command=f'{LORA} --train_data_dir d --resolution 512 --network_args "loraplus_lr_ratio=0"'
    )
    assert fate(outcome, "network_args") == "mapped" and 'loraplus_zero = "held"' in outcome.text
