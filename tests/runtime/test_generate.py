"""Validation samples and class-image generation on the built-in tiny SD1 pipeline (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from dbspec.plan.model import GeneratePlan, StepRange, ValidationPlan
from dbspec.runtime.generate import MANIFEST, generate_class_images, make_scheduler, validate
from dbspec.runtime.tiny import build_pipeline

SCHEDULERS = ["ddpm", "ddim", "euler", "euler_a", "dpmpp", "unipc", "pndm"]


@pytest.fixture(scope="module")
def pipe() -> DiffusionPipeline:
    return build_pipeline("builtin:tiny-sd1")


# Small images keep each pipeline call cheap: the tiny VAE's convolutions dominate its cost.
def _validation(
    scheduler: str, prompts: tuple[str, ...] = ("a photo of ohwx dog", "a dog on a beach"), images: int = 2
) -> ValidationPlan:
    return ValidationPlan(
        prompts=prompts,
        negative_prompt="blurry",
        steps=StepRange(every=0, end=30),
        scheduler=scheduler,
        inference_steps=2,
        guidance=5.0,
        images_per_prompt=images,
        seed=7,
        size=(48, 32),
    )


def _gen(
    folder: Path,
    key: str,
    seeds: tuple[int, ...],
    *,
    batch_size: int = 2,
    scheduler: str = "ddpm",
    steps: int = 2,
) -> GeneratePlan:
    return GeneratePlan(
        folder=str(folder),
        count=len(seeds),
        prompt="a photo of a dog",
        resolution=(32, 32),
        seeds=seeds,
        manifest_key=key,
        scheduler=scheduler,
        steps=steps,
        guidance=7.5,
        batch_size=batch_size,
    )


def test_make_scheduler_keeps_the_model_schedule(pipe: DiffusionPipeline) -> None:
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, pipe.scheduler.config)
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert scheduler.config.prediction_type == "epsilon"
    assert make_scheduler("dpmpp", pipe.scheduler.config).config.algorithm_type == "dpmsolver++"
    assert (
        type(make_scheduler("euler_a", pipe.scheduler.config)).__name__ == "EulerAncestralDiscreteScheduler"
    )
    with pytest.raises(ValueError, match="known: ddpm, ddim, euler"):
        make_scheduler("lms", pipe.scheduler.config)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp"])
def test_validate_writes_samples_and_grid_and_restores_the_pipeline(
    pipe: DiffusionPipeline, scheduler: str, tmp_path: Path
) -> None:
    original_scheduler = pipe.scheduler
    pipe.unet.train()
    rng_before = torch.get_rng_state()
    paths = validate(pipe, _validation(scheduler), tmp_path, step=30)
    folder = tmp_path / "samples" / "step-000030"
    assert [path.name for path in paths] == [
        "p00-i00.png",
        "p00-i01.png",
        "p01-i00.png",
        "p01-i01.png",
        "grid.png",
    ]
    assert all(path.parent == folder for path in paths)
    assert Image.open(folder / "p01-i01.png").size == (48, 32)
    assert Image.open(folder / "grid.png").size == (96, 64)
    assert pipe.scheduler is original_scheduler
    assert pipe.unet.training and not pipe.vae.training  # each module back in its own mode
    assert torch.equal(torch.get_rng_state(), rng_before)  # CPU generators: the loop's RNG is untouched
    pipe.unet.eval()


def test_validation_samples_repeat_exactly(pipe: DiffusionPipeline, tmp_path: Path) -> None:
    plan = _validation(
        "euler_a", prompts=("a photo of ohwx dog",), images=1
    )  # ancestral: draws noise every step
    first = validate(pipe, plan, tmp_path / "first", step=1)
    torch.randn(10)  # whatever the loop draws in between
    again = validate(pipe, plan, tmp_path / "again", step=1)
    assert again[0].read_bytes() == first[0].read_bytes()


def test_class_images_manifest_resume_and_stale_files(pipe: DiffusionPipeline, tmp_path: Path) -> None:
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "mine.png").write_bytes(b"user image")
    made = generate_class_images(pipe, _gen(folder, "key-one-aaaa", (100, 101, 102), batch_size=2))
    assert [path.name for path in made] == ["class-100.png", "class-101.png", "class-102.png"]
    assert all(Image.open(path).size == (32, 32) for path in made)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest == {
        "key": "key-one-aaaa",
        "files": ["class-100.png", "class-101.png", "class-102.png"],
        "prompt": "a photo of a dog",
        "resolution": [32, 32],
        "scheduler": "ddpm",
        "steps": 2,
        "guidance": 7.5,
    }

    # The same key again: listed files are kept as they are, only new seeds are made.
    before = made[0].stat().st_mtime_ns
    generate_class_images(pipe, _gen(folder, "key-one-aaaa", (100, 103), batch_size=2))
    assert made[0].stat().st_mtime_ns == before
    assert json.loads((folder / MANIFEST).read_text())["files"][-1] == "class-103.png"

    # Another key (other model or prompt): the old images move aside, nothing is deleted.
    generate_class_images(pipe, _gen(folder, "key-two-bbbb", (100,), batch_size=4))
    stale = folder / "stale-key-one-"
    assert sorted(path.name for path in stale.iterdir()) == [
        f"class-{seed}.png" for seed in (100, 101, 102, 103)
    ]
    assert sorted(path.name for path in folder.glob("*.png")) == ["class-100.png", "mine.png"]
    assert json.loads((folder / MANIFEST).read_text())["files"] == ["class-100.png"]


def test_batches_do_not_change_class_images(pipe: DiffusionPipeline, tmp_path: Path) -> None:
    seeds = (5, 6)
    one = generate_class_images(pipe, _gen(tmp_path / "one", "k", seeds, batch_size=1))
    two = generate_class_images(pipe, _gen(tmp_path / "two", "k", seeds, batch_size=2))
    for single, batched in zip(one, two):
        difference = np.abs(
            np.asarray(Image.open(single), np.int16) - np.asarray(Image.open(batched), np.int16)
        )
        assert difference.max() <= 1  # same noise per seed; batched matmuls may round one step differently
    assert not np.array_equal(np.asarray(Image.open(one[0])), np.asarray(Image.open(one[1])))


def test_an_unlisted_file_at_a_planned_path_is_moved_not_overwritten(
    pipe: DiffusionPipeline, tmp_path: Path
) -> None:
    (tmp_path / "class-1.png").write_bytes(b"someone else's")
    generate_class_images(pipe, _gen(tmp_path, "k", (1,), batch_size=1))
    assert (tmp_path / "stale-unlisted" / "class-1.png").read_bytes() == b"someone else's"
    assert Image.open(tmp_path / "class-1.png").size == (32, 32)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.int16)


def test_class_images_follow_the_planned_sampler(pipe: DiffusionPipeline, tmp_path: Path) -> None:
    original_scheduler = pipe.scheduler
    ddpm = generate_class_images(pipe, _gen(tmp_path / "ddpm", "k", (5,)))
    again = generate_class_images(pipe, _gen(tmp_path / "again", "k", (5,)))
    euler = generate_class_images(pipe, _gen(tmp_path / "euler", "k", (5,), scheduler="euler"))
    longer = generate_class_images(pipe, _gen(tmp_path / "longer", "k", (5,), steps=3))
    assert pipe.scheduler is original_scheduler  # the planned sampler is set for the call only
    assert np.array_equal(_pixels(ddpm[0]), _pixels(again[0]))
    assert not np.array_equal(_pixels(ddpm[0]), _pixels(euler[0]))
    assert not np.array_equal(_pixels(ddpm[0]), _pixels(longer[0]))
