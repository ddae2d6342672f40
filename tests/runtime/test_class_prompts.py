"""Class images encode their prompt as training does (runtime/setup.py long_prompt_inputs): Flux's T5 at
the plan's `model.t5_max_length`, not the pipeline's own 512 tokens; the batched embeddings give each seed
the image the pipeline makes for it alone from the prompt at that length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dbspec.plan.model import GeneratePlan
from dbspec.runtime.generate import generate_class_images, make_scheduler
from dbspec.runtime.families import family_runtime
from dbspec.runtime.models import pipeline_for
from dbspec.runtime.setup import long_prompt_inputs
from tests.runtime.runspec import compile_spec, write_spec

PROMPT = "a photo of a dog"


def _gen(folder: Path, seeds: tuple[int, ...]) -> GeneratePlan:
    return GeneratePlan(
        folder=str(folder),
        count=len(seeds),
        prompt=PROMPT,
        resolution=(32, 32),
        seeds=seeds,
        manifest_key="k",
        scheduler="flow_euler",
        steps=2,
        guidance=3.5,
        batch_size=len(seeds),
    )


def _pipeline_image(pipeline, seed: int, **encoding) -> np.ndarray:
    image = pipeline(
        prompt=PROMPT,
        num_inference_steps=2,
        guidance_scale=3.5,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(seed),
        **encoding,
    ).images[0]
    return np.asarray(image, np.int16)


def test_flux_class_images_use_the_planned_t5_length(tmp_path):
    plan = compile_spec(write_spec(tmp_path, base="builtin:tiny-flux"), ["model.t5_max_length=8"])
    comps = family_runtime(plan.model.family).load(plan)  # as runtime/setup.py loads it
    pipeline = pipeline_for(plan, comps)
    inputs = long_prompt_inputs(plan, comps, pipeline, torch.device("cpu"))
    assert inputs is not None  # Flux encodes its own prompts
    made = generate_class_images(pipeline, _gen(tmp_path / "class", (3, 4)), prompt_inputs=inputs)
    pipeline.scheduler = make_scheduler("flow_euler", pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for seed, path in zip((3, 4), made):
            got = np.asarray(_open(path), np.int16)
            planned = _pipeline_image(pipeline, seed, max_sequence_length=8)
            assert np.abs(got - planned).max() <= 1  # batched matmuls may round one step differently
            assert np.abs(got - _pipeline_image(pipeline, seed)).mean() > 0.5  # the pipeline's own 512 tokens


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").copy()
