"""Flux's kohya LoRA export and kohya's Flux loss options in the compiler (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import codes, compile_in, image, planned_ok, write_spec

FLUX = {"base": "builtin:tiny-flux"}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def test_flux_lora_runs_plan_the_kohya_export(toy: Path):
    write_spec(toy, model=FLUX, adapter={"kind": "lora"}, checkpoints={"exports": ["kohya_lora"]})
    assert planned_ok(toy).checkpoints.exports == ("kohya_lora",)


@pytest.mark.parametrize(
    ("adapter", "kind"),
    [
        ({"kind": "lora", "dora": True}, "DoRA"),
        ({"kind": "loha"}, "LoHa"),
        ({"kind": "lokr"}, "LoKr"),
        ({"kind": "tlora"}, "T-LoRA"),  # kohya's TLoraModule on a fused Linear: one SVD of the parts
    ],
)
def test_flux_kohya_export_is_plain_lora_only(toy: Path, adapter, kind):
    write_spec(toy, model=FLUX, adapter=adapter, checkpoints={"exports": ["kohya_lora"]})
    planned = compile_in(toy)
    assert "DBS381" in codes(planned, "error")
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert kind in message and "networks/lora_flux.py" in message


def test_what_flux_and_sd3_still_cannot_write(toy: Path):
    write_spec(toy, model=FLUX, train={"denoiser": True}, checkpoints={"exports": ["single_file"]})
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert '"single_file"' in message and 'it writes "kohya_lora"' in message
    write_spec(
        toy,
        model={"base": "builtin:tiny-sd3"},
        adapter={"kind": "lora", "dora": True},
        checkpoints={"exports": ["kohya_lora"]},
    )
    planned = compile_in(toy)
    message = next(d.message for d in planned.diagnostics if d.code == "DBS381")
    assert "DoRA" in message  # SD3's kohya layout (networks/lora_sd3.py) is plain LoRA only
    write_spec(toy, model={"base": "builtin:tiny-sd3"}, adapter={"kind": "lora"},
               checkpoints={"exports": ["kohya_lora"]})  # fmt: skip
    assert "DBS381" not in codes(compile_in(toy))


def _summary(plan) -> str:
    import io

    from rich.console import Console

    from dbspec.plan.summary import training_table

    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(training_table(plan))
    return out.getvalue()


def test_kohya_prediction_and_image_size_shift_are_planned_and_shown(toy: Path):
    write_spec(toy, model=FLUX, loss={"flow_prediction": "sigma_scaled", "flow_dynamic_shift": True})
    plan = planned_ok(toy)
    flow = plan.loss.flow
    assert (flow.prediction, flow.shift, flow.base_shift, flow.max_shift) == ("sigma_scaled", 0.0, 0.5, 1.15)
    assert "mse(x_t − σ·u\u0302, u)" in plan.loss.formula
    assert "shifted by image size (μ 0.5 at 256 -> 1.15 at 4096 latent patches)" in _summary(plan)
    write_spec(toy, model=FLUX)  # the defaults: raw, fixed (the model's) shift
    flow = planned_ok(toy).loss.flow
    assert (flow.prediction, flow.base_shift, flow.max_shift) == ("raw", 0.0, 0.0)


def test_two_shifts_are_refused_and_ddpm_models_ignore_the_options(toy: Path):
    write_spec(toy, model=FLUX, loss={"flow_dynamic_shift": True, "flow_shift": 3.0})
    planned = compile_in(toy)
    assert "DBS239" in codes(planned, "error")
    message = next(d.message for d in planned.diagnostics if d.code == "DBS239")
    assert "loss.flow_shift = 3" in message
    write_spec(
        toy,
        model={"base": "builtin:tiny-sd1", "prediction": "epsilon"},
        loss={"flow_prediction": "additive", "flow_dynamic_shift": True},
    )
    assert codes(compile_in(toy), "warning").count("DBS231") == 2
