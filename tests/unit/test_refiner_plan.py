"""Planning the SDXL refiner (builtin:tiny-sdxl-refiner): its refining validation and option checks
(DBS347-DBS349), without torch."""

from __future__ import annotations

from dbspec.frontend import plan_spec
from dbspec.plan.summary import model_table, schedule_table
from tests.runtime.runspec import CPU, write_spec

REFINER = "builtin:tiny-sdxl-refiner"


def _plan(tmp_path, base=REFINER, extra="", **kw):
    path = write_spec(tmp_path, base=base, extra=extra, **kw)
    return plan_spec(path, CPU, str(path), [])


def _codes(planned) -> dict[str, str]:
    return {d.code: d.message for d in planned.diagnostics}


def test_refiner_validation_refines_the_first_instance_images_and_the_summary_says_so(tmp_path):
    planned = _plan(tmp_path, extra="[validation]\nrefine_images = 3\nstrength = 0.4\n")
    plan = planned.plan
    assert plan is not None and plan.schedule.validation_steps.end == plan.schedule.total_steps
    r = plan.validation.refine
    first = [img.path for d in plan.datasets if d.role == "instance" for img in d.images][:3]
    assert r.images == tuple(first) and r.strength == 0.4 and r.aesthetic_score == 6.0
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(schedule_table(plan), model_table(plan))
    text = console.export_text()
    assert "refines" in text and "img2img strength 0.4" in text and "aesthetic score 6" in text


def test_refine_images_zero_turns_the_refiners_validation_off(tmp_path):
    plan = _plan(tmp_path, extra="[validation]\nrefine_images = 0\n").plan
    assert plan.validation.refine is None and not plan.schedule.validation_steps


def test_prompts_on_a_refiner_warn_and_class_generation_is_refused(tmp_path):
    planned = _plan(tmp_path, extra='[validation]\nprompts = ["a photo of ohwx toy"]\n')
    assert "DBS347" in _codes(planned) and planned.plan.validation.refine is not None
    generate = "generate = 4\n"
    planned = _plan(tmp_path / "g", with_class=True)
    assert "DBS349" not in _codes(planned)
    spec = tmp_path / "g" / "spec.toml"
    spec.write_text(
        spec.read_text().replace('prompt = "a photo of a toy"\n', f'prompt = "a photo of a toy"\n{generate}')
    )
    planned = plan_spec(spec, CPU, str(spec), [])
    assert planned.plan is None and "datasets[1].generate" in _codes(planned)["DBS349"]


def test_refiner_options_on_another_family_have_no_effect(tmp_path):
    _plan(tmp_path, base="builtin:tiny-sdxl", steps=2)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        spec.read_text().replace(
            'base = "builtin:tiny-sdxl"\n', 'base = "builtin:tiny-sdxl"\naesthetic_score = 7.0\n'
        )
    )
    planned = plan_spec(spec, CPU, str(spec), [])
    assert "model.aesthetic_score has no effect" in _codes(planned)["DBS348"]
    assert planned.plan.validation.refine is None


def test_image_metrics_on_a_refiner_are_refused_and_the_evaluation_loss_plans(tmp_path):
    # the refiner samples no validation prompts: clip_t/clip_i/dino would read images that are never written
    extra = (
        '[validation]\nprompts = ["a photo of ohwx toy"]\n'
        '[evaluation]\nmetrics = ["clip_t", "dino"]\nholdout = 1\nidentifier = "ohwx"\nclass_word = "toy"\n'
    )
    planned = _plan(tmp_path, extra=extra, steps=2)
    assert planned.plan is None
    message = _codes(planned)["DBS289"]
    assert "clip_t, dino" in message and "SDXL refiner" in message
    loss_only = _plan(tmp_path / "h", extra="[evaluation]\nholdout = 1\n", steps=2)
    assert "DBS289" not in _codes(loss_only) and loss_only.plan.evaluation.metrics == ("eval_loss",)


def test_a_refinement_of_no_denoising_step_is_refused(tmp_path):
    # diffusers' img2img runs int(steps x strength) steps: int(3 x 0.3) = 0 would decode an empty batch
    planned = _plan(tmp_path, extra="[validation]\nsteps = 3\nstrength = 0.3\n", steps=2)
    assert planned.plan is None and "set validation.steps to at least 4" in str(planned.diagnostics)
    assert "DBS294" not in _codes(_plan(tmp_path / "ok", extra="[validation]\nsteps = 4\nstrength = 0.3\n"))
