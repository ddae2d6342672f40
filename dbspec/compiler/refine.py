"""Validation of an img2img family (the SDXL refiner): which dataset images it refines, and the checks on the
refiner's options (DBS347-DBS349). Families that sample from prompts plan no RefinePlan."""

from __future__ import annotations

import math

from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.plan.model import DatasetPlan, ModelPlan, RefinePlan

_REFINER_OPTIONS = (
    ("model", "aesthetic_score"),
    ("model", "negative_aesthetic_score"),
    ("validation", "refine_images"),
    ("validation", "strength"),
)


def refines(model: ModelPlan | None) -> bool:
    """The family's validation refines dataset images (img2img) instead of sampling prompts."""
    return model is not None and family_spec(model.family).refines_images


def check_refiner_options(ctx: Context, model: ModelPlan | None) -> None:
    """DBS348: refiner options on another family; DBS347: prompts a refiner ignores; DBS349: class images it
    cannot generate; DBS289: image metrics it has no prompt samples for; DBS294: a refinement of no step."""
    if model is None:
        return
    spec = family_spec(model.family)
    if not spec.refines_images:
        for path in _REFINER_OPTIONS:
            if ctx.raw.given(path):
                ctx.report(
                    "DBS348",
                    "warning",
                    f"{'.'.join(path)} has no effect: {spec.title} models have no aesthetic-score "
                    "conditioning and validation samples the prompts",
                    path,
                    help="remove the key",
                )
        return
    if ctx.spec.validation.prompts:
        ctx.report(
            "DBS347",
            "warning",
            f"validation.prompts are not sampled: {spec.title} validation refines "
            f"{ctx.spec.validation.refine_images} instance image(s) with their captions instead",
            ("validation", "prompts"),
            help="remove validation.prompts; set validation.refine_images and validation.strength",
        )
    v = ctx.spec.validation
    if v.refine_images and int(v.steps * v.strength) < 1:
        ctx.report(
            "DBS294",
            "error",
            f"validation.steps = {v.steps} at strength {v.strength} is {int(v.steps * v.strength)} img2img "
            "denoising step(s) (diffusers runs int(steps x strength)): the refinement would do nothing",
            ("validation", "steps"),
            help=f"set validation.steps to at least {math.ceil(1 / v.strength)}",
        )
    image_metrics = [m for m in ctx.spec.evaluation.metrics if m in ("clip_t", "clip_i", "dino")]
    if image_metrics:
        ctx.report(
            "DBS289",
            "error",
            f"evaluation.metrics names {', '.join(image_metrics)}, but {spec.title} validation refines "
            "training images instead of sampling validation.prompts: there are no prompt samples to score",
            ("evaluation", "metrics"),
            help="remove them from evaluation.metrics; the evaluation loss (evaluation.holdout) works here",
        )
    for i, d in enumerate(ctx.spec.datasets):
        if d.generate:
            ctx.report(
                "DBS349",
                "error",
                f"datasets[{i}].generate is {d.generate}, but a {spec.title} model refines images and "
                "cannot sample class images from a prompt",
                ("datasets", i, "generate"),
                help="point the class dataset at existing class images (made with the SDXL base model)",
            )


def plan_refine(
    ctx: Context, model: ModelPlan | None, datasets: tuple[DatasetPlan, ...]
) -> RefinePlan | None:
    """The first `validation.refine_images` instance images in plan order, each with its caption; None for a
    family that samples prompts, or with refine_images = 0."""
    v = ctx.spec.validation
    if not refines(model) or not v.refine_images:
        return None
    assert model is not None
    images = [img for d in datasets if d.role == "instance" for img in d.images][: v.refine_images]
    return RefinePlan(
        images=tuple(img.path for img in images),
        captions=tuple(img.caption for img in images),
        strength=v.strength,
        aesthetic_score=model.aesthetic_score,
        negative_aesthetic_score=model.negative_aesthetic_score,
    )
