"""kohya networks.lora_fa with `text_encoder_lr = 0` under a per-group CyclicLR (issue 12): lora_fa keeps the
text encoder's group at rate 0 (networks/lora_fa.py prepare_optimizer_params) and torch's CyclicLR replaces
every group's rate with its base_lr before the first step, so kohya trains it. The converted spec trains the
text encoder on the schedule's values: on the tiny SD 1.x model its LoRA-FA up projections move from zero,
each optimizer group's LR at every step is torch's CyclicLR over kohya's two groups, and the run resumes
bit-exact."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, final_weights
from tests.unit.convert_kit import SD15, errors, images, kohya, out_path

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "64,64"
output_dir = "out"
output_name = "fa"
network_module = "networks.lora_fa"
network_dim = 4
network_alpha = 2
learning_rate = 1e-3
text_encoder_lr = 0
optimizer_type = "AdamW"
lr_scheduler_type = "CyclicLR"
lr_scheduler_args = ["base_lr=[5e-3,1e-3]", "max_lr=[2e-2,4e-3]", "step_size_up=2"]
max_train_steps = 4
save_model_as = "safetensors"
"""
BASE = ["model.base=builtin:tiny-sd1"]


def _kohya_rates(steps: int) -> list[list[float]]:
    """torch's CyclicLR over kohya's [text encoder (lr 0), U-Net] groups: each step's rates."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.0, 1e-3)]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=[5e-3, 1e-3], max_lr=[2e-2, 4e-3], step_size_up=2
    )
    rates = []
    for _ in range(steps):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


def test_text_encoder_group_at_rate_0_trains_on_the_schedule_and_resumes(tmp_path):
    images(tmp_path / "img" / "10_ohwx cat", 2, (64, 64))
    (tmp_path / "cfg.toml").write_text(CONFIG.format(model=SD15), encoding="utf-8")
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    spec = out_path(tmp_path)
    plan = compile_spec(spec, [*BASE, "output.dir=whole"])
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 2e-2
    # a curve point every step (the plan samples the curve at its checkpoint interval)
    curves = dict(compile_spec(spec, [*BASE, "checkpoints.every=1"]).schedule.group_lr_points)
    expected = _kohya_rates(4)
    for name, column in (("text_encoder", 0), ("denoiser", 1)):
        assert len([s for s, _ in curves[name] if s < 4]) >= 2, curves[name]
        for step, lr in curves[name]:
            if step < 4:
                assert lr == pytest.approx(expected[step][column], rel=1e-9), (name, step)
    whole = execute(plan)
    assert whole.status == "finished"
    weights = final_weights(whole.final)
    ups = [v for k, v in weights.items() if "lora_te" in k and "lora_up" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # the text encoder trained from its zero ups

    parts = compile_spec(spec, [*BASE, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and second.steps == 4
    resumed = final_weights(second.final)
    assert weights.keys() == resumed.keys()
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
