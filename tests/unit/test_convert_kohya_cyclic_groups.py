"""kohya's CyclicLR / OneCycleLR with one bound per optimizer parameter group (lr_scheduler_args
`base_lr=[...]`, `max_lr=[...]`, issue 12): the list follows kohya's group order (networks.lora: text
encoders, their LoRA+ plus group, U-Net, its plus group; train_db.py: U-Net, text encoder; sdxl_train.py:
U-Net, text encoder 1, text encoder 2) and becomes a table keyed by dbspec's groups. The plan's per-group
points are checked against torch's documented closed form of CyclicLR's triangular policy."""

from __future__ import annotations

import math

import pytest

from convert_kit import SD15, SDXL, codes, empty_hub_cache, errors, fate, images, kohya, messages, plan_of  # noqa: F401


def _network(script: str, base: str) -> str:
    return (
        f"{script} --pretrained_model_name_or_path={base} --train_data_dir=x --resolution=512 "
        "--network_module=networks.lora --learning_rate=1e-4 --max_train_steps=300"
    )


def _outcome(tmp_path, command: str):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    return kohya(tmp_path, command=command)


def _schedule(tmp_path, command: str):
    outcome = _outcome(tmp_path, command)
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    assert fate(outcome, "lr_scheduler_args") == "mapped"
    return plan_of(outcome, tmp_path, ["checkpoints.every=50"]).schedule


def _triangular(step: int, base: float, peak: float, up: int) -> float:
    """torch's documented CyclicLR triangular policy (step_size_down = step_size_up)."""
    cycle = math.floor(1 + step / (2 * up))
    x = abs(step / up - 2 * cycle + 1)
    return base + (peak - base) * max(0.0, 1 - x)


def _bounds(s) -> dict[str, tuple[float, float]]:
    return {g.name: (g.base_lr, g.max_lr) for g in s.torch.groups}


def _check_points(s, bounds: dict[str, tuple[float, float]], up: int) -> None:
    assert [name for name, _ in s.group_lr_points] == [g.name for g in s.torch.groups]
    for name, points in s.group_lr_points:
        base, peak = bounds[name]
        assert len(points) > 3
        for step, lr in points:
            assert lr == pytest.approx(_triangular(step, base, peak, up), rel=1e-9, abs=1e-15)


def test_lora_with_text_encoder_and_unet_maps_kohyas_order(tmp_path):
    """networks.lora: [text encoder, U-Net], so the first value is the text encoder's."""
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --text_encoder_lr=5e-5 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=[5e-5,2e-4] step_size_up=50",
    )
    expected = {"denoiser": (1e-5, 2e-4), "text_encoder": (1e-6, 5e-5)}
    assert _bounds(s) == expected
    assert [g.name for g in s.torch.groups] == ["denoiser", "text_encoder"]  # dbspec's order
    _check_points(s, expected, 50)


def test_sdxl_lora_two_text_encoders_and_loraplus(tmp_path):
    """SDXL: networks.lora puts both text encoders' modules in one group; LoRA+ a plus group after each."""
    s = _schedule(
        tmp_path,
        _network("sdxl_train_network.py", SDXL) + " --network_args loraplus_lr_ratio=4 "
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=[1e-6,4e-6,1e-5,4e-5] "
        "max_lr=[1e-5,4e-5,1e-4,4e-4] step_size_up=40",
    )
    expected = {
        "text_encoder": (1e-6, 1e-5),
        "text_encoder_lora_up": (4e-6, 4e-5),
        "denoiser": (1e-5, 1e-4),
        "denoiser_lora_up": (4e-5, 4e-4),
    }
    assert _bounds(s) == expected
    _check_points(s, expected, 40)


def test_sdxl_full_fine_tune_with_two_text_encoder_rates(tmp_path):
    """sdxl_train.py: [U-Net, text encoder 1, text encoder 2]; different rates: dbspec's text_encoder_2."""
    s = _schedule(
        tmp_path,
        f"sdxl_train.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x --resolution=512 "
        "--learning_rate=1e-5 --train_text_encoder --learning_rate_te1=1e-6 --learning_rate_te2=2e-6 "
        "--max_train_steps=300 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-7,2e-7,3e-7] max_lr=[1e-5,1e-6,2e-6] step_size_up=30",
    )
    expected = {"denoiser": (1e-7, 1e-5), "text_encoder": (2e-7, 1e-6), "text_encoder_2": (3e-7, 2e-6)}
    assert _bounds(s) == expected
    _check_points(s, expected, 30)


def test_one_group_list_and_equal_values_become_one_number(tmp_path):
    """train_db.py without learning_rate_te: U-Net and text encoder are one kohya group."""
    s = _schedule(
        tmp_path,
        f"train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 "
        "--learning_rate=1e-5 --max_train_steps=300 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-7] max_lr=[1e-5] step_size_up=30",
    )
    assert (s.torch.groups, s.torch.base_lr, s.torch.max_lr) == ((), 1e-7, 1e-5)


def test_a_list_of_another_length_is_torchs_value_error(tmp_path):
    outcome = _outcome(
        tmp_path,
        _network("train_network.py", SD15) + " --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5,1e-5] max_lr=1e-4",
    )
    assert "DBS402" in codes(outcome)
    text = messages(outcome, "DBS402")
    assert "base_lr has 3 values" in text and "2 parameter group(s) (textencoder, unet)" in text


def test_unet_only_lora_has_one_group(tmp_path):
    outcome = _outcome(
        tmp_path,
        _network("train_network.py", SD15) + " --network_train_unet_only --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=1e-4",
    )
    assert "DBS402" in codes(outcome) and "1 parameter group(s) (unet)" in messages(outcome, "DBS402")


def test_kohya_oft_has_one_group(tmp_path):
    """networks.oft (once not derived): OFTNetwork's one U-Net group, so two values are torch's ValueError."""
    outcome = _outcome(
        tmp_path,
        _network("train_network.py", SD15) + " --network_module=networks.oft --network_alpha=1e-3 "
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=1e-4",
    )
    assert "DBS402" in codes(outcome) and "1 parameter group(s) (unet)" in messages(outcome, "DBS402")


def test_sdxl_full_fine_tune_text_encoders_at_one_rate_with_two_values_split(tmp_path):
    """Equal text-encoder rates: dbspec trains both encoders in one group, unless a table names the second's
    (sdxl_train.py: [U-Net, text encoder 1, text encoder 2], each its own group in kohya): kohya's two
    values give `text_encoder_2` its own group at the same rate (optimizer.text_encoder_2_lr in the plan)."""
    outcome = _outcome(
        tmp_path,
        f"sdxl_train.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x --resolution=512 "
        "--learning_rate=1e-5 --train_text_encoder --max_train_steps=300 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-7,2e-7,3e-7] max_lr=1e-5 step_size_up=30",
    )
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    assert "text_encoder_2_lr" not in outcome.text  # the group's rate is text_encoder_lr's
    plan = plan_of(outcome, tmp_path, ["checkpoints.every=50"])
    assert plan.optimizer.text_encoder_2_lr == plan.optimizer.text_encoder_lr == 1e-5
    expected = {"denoiser": (1e-7, 1e-5), "text_encoder": (2e-7, 1e-5), "text_encoder_2": (3e-7, 1e-5)}
    assert _bounds(plan.schedule) == expected
    _check_points(plan.schedule, expected, 30)


def test_sdxl_full_fine_tune_text_encoders_with_one_value_keep_one_group(tmp_path):
    """Lists that give both encoders one value leave dbspec's one group (existing plans unchanged)."""
    plan = plan_of(
        _outcome(
            tmp_path,
            f"sdxl_train.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x --resolution=512 "
            "--learning_rate=1e-5 --train_text_encoder --max_train_steps=300 --lr_scheduler_type CyclicLR "
            "--lr_scheduler_args base_lr=[1e-7,2e-7,2e-7] max_lr=1e-5 step_size_up=30",
        ),
        tmp_path,
        ["checkpoints.every=50"],
    )
    assert plan.optimizer.text_encoder_2_lr is None
    assert _bounds(plan.schedule) == {"denoiser": (1e-7, 1e-5), "text_encoder": (2e-7, 1e-5)}


def test_one_cycle_per_group_max_lr(tmp_path):
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --text_encoder_lr=5e-5 --lr_scheduler_type OneCycleLR "
        "--lr_scheduler_args max_lr=[5e-5,2e-4] total_steps=300",
    )
    assert {g.name: g.max_lr for g in s.torch.groups} == {"denoiser": 2e-4, "text_encoder": 5e-5}
    points = dict(dict(s.group_lr_points)["text_encoder"])
    assert points[0] == pytest.approx(5e-5 / 25.0, rel=1e-12)  # max_lr / div_factor


def test_per_group_momentum_lists(tmp_path):
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --lr_scheduler_type CyclicLR --lr_scheduler_args "
        "base_lr=1e-6 max_lr=1e-4 base_momentum=[0.85,0.8] max_momentum=[0.95,0.9] step_size_up=50",
    )
    assert {g.name: (g.base_momentum, g.max_momentum) for g in s.torch.groups} == {
        "denoiser": (0.8, 0.9),
        "text_encoder": (0.85, 0.95),
    }
    momenta = {name: dict(points) for name, points in s.group_momentum_points}
    # at the peak (step 50) the momentum is base_momentum, at the low points max_momentum
    assert (momenta["text_encoder"][0], momenta["denoiser"][0]) == (0.95, 0.9)
    assert momenta["text_encoder"][50] == pytest.approx(0.85) and momenta["denoiser"][50] == pytest.approx(
        0.8
    )


def test_momentum_lists_without_cycle_momentum_are_not_read(tmp_path):
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --lr_scheduler_type CyclicLR --lr_scheduler_args "
        "base_lr=1e-6 max_lr=1e-4 cycle_momentum=False base_momentum=[0.85,0.8,0.7]",
    )
    assert s.torch.groups == () and not s.torch.cycle_momentum


@pytest.mark.parametrize(
    ("extra", "values", "expected"),
    [
        # learning_rate_te: [U-Net, text encoder]
        ("--learning_rate_te=1e-6", "[1e-7,2e-8]", {"denoiser": (1e-7, 1e-5), "text_encoder": (2e-8, 1e-5)}),
        # a text encoder that never trains: kohya's optimizer holds the U-Net alone
        ("--learning_rate_te=1e-6 --stop_text_encoder_training=-1", "[1e-7]", {}),
    ],
)
def test_train_db_groups(tmp_path, extra, values, expected):
    s = _schedule(
        tmp_path,
        f"train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 "
        f"--learning_rate=1e-5 --max_train_steps=300 {extra} --lr_scheduler_type CyclicLR "
        f"--lr_scheduler_args base_lr={values} max_lr=1e-5 step_size_up=30",
    )
    assert _bounds(s) == expected
    if not expected:  # one group: one number
        assert (s.torch.groups, s.torch.base_lr) == ((), 1e-7)


def test_a_max_lr_of_0_in_the_list_is_torchs_peak_of_0(tmp_path):
    """kohya's max_lr=[0, 2e-4] (networks.lora: [text encoder, U-Net]): torch's CyclicLR takes 0 as the text
    encoder's peak (its rate cycles from base_lr down to 0); dbspec's max_lr_zero = "literal" says so."""
    outcome = _outcome(
        tmp_path,
        _network("train_network.py", SD15) + " --text_encoder_lr=5e-5 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=[0,2e-4] step_size_up=50",
    )
    assert 'max_lr_zero = "literal"' in outcome.text
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --text_encoder_lr=5e-5 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=[0,2e-4] step_size_up=50",
    )
    expected = {"denoiser": (1e-5, 2e-4), "text_encoder": (1e-6, 0.0)}
    assert _bounds(s) == expected
    _check_points(s, expected, 50)
    assert min(lr for _, lr in dict(s.group_lr_points)["text_encoder"]) == 0.0


def test_one_cycle_max_lr_0_holds_every_rate_at_0(tmp_path):
    """OneCycleLR(max_lr=0): initial, peak and final rates are all 0 (torch accepts it)."""
    s = _schedule(
        tmp_path,
        _network("train_network.py", SD15) + " --lr_scheduler_type OneCycleLR "
        "--lr_scheduler_args max_lr=0 total_steps=300",
    )
    assert (s.torch.max_lr, s.torch.max_lr_zero) == (0.0, "literal")
    assert all(lr == 0.0 for _, lr in s.lr_points)


def test_without_a_0_max_lr_the_spec_keeps_dbspecs_shorthand(tmp_path):
    outcome = _outcome(
        tmp_path,
        _network("train_network.py", SD15) + " --lr_scheduler_type OneCycleLR "
        "--lr_scheduler_args max_lr=1e-3 total_steps=300",
    )
    assert "max_lr_zero" not in outcome.text
