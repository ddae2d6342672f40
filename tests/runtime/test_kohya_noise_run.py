"""kohya's noise and loss options through the real loop on tiny models: they train, change what trains, and an
interrupted run resumes bit-identical (the extra draws come from the checkpointed training generator)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

KOHYA_LOSS = """
[loss]
kind = "pseudo_huber"
huber_schedule = "snr"
huber_c = 0.2
noise_offset = 0.05
noise_offset_random_strength = true
adaptive_noise_scale = 0.3
multires_noise_iterations = 4
multires_noise_discount = 0.4
ip_noise_gamma = 0.1
ip_noise_gamma_random_strength = true
min_timestep = 50
max_timestep = 950
min_snr_gamma = 5.0
debiased_estimation = true
v_pred_like_loss = 0.1
prior_reduction = "per_sample"
prior_weight = 0.5
"""


def _unet(final: str) -> dict:
    return load_file(str(next((Path(final) / "unet").glob("*.safetensors"))))


def test_kohya_options_train_and_an_interrupted_run_resumes_bit_identical(tmp_path):
    spec = write_spec(tmp_path, steps=6, with_class=True, dataset_extra="flip = true", extra=KOHYA_LOSS)
    plan = compile_spec(spec, ["output.dir=parts"])
    noise, loss = plan.loss.noise, plan.loss
    assert (noise.multires_iterations, noise.ip_random_strength, noise.min_timestep, noise.max_timestep) == (
        4,
        True,
        50,
        950,
    )
    assert loss.huber is not None and loss.huber.schedule == "snr" and loss.prior_reduction == "per_sample"
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    assert whole.status == "finished" and all(math.isfinite(x) for x in whole.losses)
    first = execute(plan, stop_after=3)
    assert first.status == "interrupted" and first.steps == 3
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 6
    assert first.losses + second.losses == whole.losses
    a, b = _unet(whole.final), _unet(second.final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_options_change_the_losses_and_off_is_a_plain_run(tmp_path):
    spec = write_spec(tmp_path, steps=2, with_class=True, extra=KOHYA_LOSS)
    kohya = execute(compile_spec(spec, ["output.dir=kohya"]))
    plain_spec = write_spec(tmp_path / "plain", steps=2, with_class=True)
    plain = execute(compile_spec(plain_spec, ["output.dir=plain"]))
    explicit_off = execute(
        compile_spec(
            plain_spec,
            [
                "output.dir=off",
                "loss.multires_noise_iterations=0",
                "loss.ip_noise_gamma=0",
                "loss.min_timestep=0",
                "loss.max_timestep=1000",
            ],
        )
    )
    assert kohya.losses != plain.losses
    assert explicit_off.losses == plain.losses


def test_v_prediction_model_trains_with_its_loss_scaling(tmp_path):
    extra = (
        '[loss]\nkind = "smooth_l1"\nhuber_schedule = "exponential"\n'
        "scale_v_pred_loss_like_noise_pred = true\n"
    )
    extra += "debiased_estimation = true\nzero_terminal_snr = true\n"
    plan = compile_spec(write_spec(tmp_path, base="builtin:tiny-sd2", steps=2, extra=extra))
    assert plan.loss.target == "v_prediction" and plan.loss.scale_v_like_epsilon
    result = execute(plan)
    assert result.status == "finished" and all(math.isfinite(x) for x in result.losses)
