"""Images from a pipeline: validation samples during training and class images before it.

Every image gets its own CPU generator, so a sample depends on its seed only: not on the device, the
batch it was made in, or what the training loop drew from the global RNGs (which stay untouched; text
encoders kept in train mode, validation.text_encoder_mode "training", draw from them seeded per image,
restored afterwards: runtime/text_mode.py).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image
from rich.progress import Progress

from dbspec.plan.model import GeneratePlan, ValidationPlan
from dbspec.runtime.text_mode import adapters_eval, seeded_global_rng
from dbspec.util.atomic import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from dbspec.runtime.preview import Previews

MANIFEST = ".dbspec-generated.json"  # the compiler reads it to count images already generated for a key
_SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),  # flow-matching models (SD3)
}


def make_scheduler(name: str, scheduler_config: Any) -> Any:
    """Sampling scheduler `name` built from the model's scheduler config (betas, prediction type, spacing)."""
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(_SCHEDULERS)}")
    scheduler_class, overrides = _SCHEDULERS[name]
    return scheduler_class.from_config(scheduler_config, **overrides)


@contextmanager
def _inference(
    pipeline: DiffusionPipeline, autocast_dtype: torch.dtype | None, keep_text_modes: bool = False
) -> Iterator[None]:
    """eval + no_grad (+ autocast) for the call; afterwards each module is back in the mode it was in.
    `keep_text_modes` (validation.text_encoder_mode "training"): the text encoders keep their mode, their
    adapters in eval mode (runtime/text_mode.py)."""
    named = {n: m for n, m in pipeline.components.items() if isinstance(m, torch.nn.Module)}
    modules = list(named.values())
    training = [module.training for module in modules]
    text = [m for n, m in named.items() if keep_text_modes and n.startswith("text_encoder")]
    device_type = pipeline.device.type
    autocast = (
        torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    try:
        for module in modules:
            if not any(module is t for t in text):
                module.eval()
        adapters_eval(text)
        with torch.no_grad(), autocast:
            yield
    finally:
        for module, was_training in zip(modules, training):
            module.train(was_training)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _save_png(image: Image.Image, path: Path) -> Path:
    write_bytes_atomic(path, _png_bytes(image))
    return path


# (prompt, negative prompt) -> the pipeline's prompt keyword arguments (embeddings encoded by the family).
PromptInputs = Callable[[str, str], dict]


# --- validation ---------------------------------------------------------------------------------------------
def validate(
    pipeline: DiffusionPipeline,
    plan_validation: ValidationPlan,
    out_dir: Path,
    step: int,
    *,
    autocast_dtype: torch.dtype | None = None,
    prompt_inputs: PromptInputs | None = None,
) -> list[Path]:
    """Sample every validation prompt `images_per_prompt` times into `out_dir/samples/step-XXXXXX/`:
    `pNN-iNN.png` per image, then `grid.png` (a row per prompt). Returns the image paths, grid last.

    Image i of every prompt uses seed `seed + i`, at every step: differences between steps and prompts
    come from the weights and the prompt, never from the noise. The pipeline's scheduler is restored.
    """
    folder = Path(out_dir) / "samples" / f"step-{step:06d}"
    return render(
        pipeline,
        plan_validation,
        folder,
        autocast_dtype=autocast_dtype,
        prompt_inputs=prompt_inputs,
        previews=_previews(pipeline, plan_validation, folder, step),
    )


def _previews(pipeline: DiffusionPipeline, plan_validation: ValidationPlan, folder: Path, step: int):
    """The live previews of this validation (runtime/preview.py), or None when the plan has none or the
    preview model cannot be loaded (logged)."""
    if plan_validation.preview is None:
        return None
    from dbspec.runtime.preview import Previews, load_preview_vae

    vae = load_preview_vae(plan_validation.preview, pipeline.device, pipeline.vae.dtype)
    if vae is None:
        return None
    return Previews(plan_validation.preview, vae, folder, step, plan_validation.inference_steps)


def render(
    pipeline: DiffusionPipeline,
    plan_validation: ValidationPlan,
    folder: Path,
    *,
    autocast_dtype: torch.dtype | None = None,
    prompt_inputs: PromptInputs | None = None,
    previews: Previews | None = None,
) -> list[Path]:
    """The images of `plan_validation` into `folder` (`pNN-iNN.png` and `grid.png`); see validate.
    `prompt_inputs` encodes the prompts instead of the pipeline (prompts longer than one CLIP window);
    `previews` decodes and writes live previews while each image is sampled."""
    original_scheduler = pipeline.scheduler
    pipeline.scheduler = make_scheduler(plan_validation.scheduler, original_scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    rows: list[list[Image.Image]] = []
    paths: list[Path] = []
    try:
        if plan_validation.refine is not None:  # an img2img family (the SDXL refiner): refine dataset images
            with _inference(pipeline, autocast_dtype):
                rows, paths = _refine_rows(pipeline, plan_validation, folder, prompt_inputs)
            return [*paths, _save_png(_grid(rows), folder / "grid.png")] if rows else paths
        keep = plan_validation.text_encoder_mode == "training"
        with _inference(pipeline, autocast_dtype, keep):
            for prompt_index, prompt in enumerate(plan_validation.prompts):
                rows.append(
                    [
                        _sample_with_previews(
                            pipeline,
                            plan_validation,
                            prompt,
                            (prompt_index, image_index),
                            prompt_inputs,
                            previews,
                        )
                        for image_index in range(plan_validation.images_per_prompt)
                    ]
                )
                paths += [
                    _save_png(image, folder / f"p{prompt_index:02d}-i{image_index:02d}.png")
                    for image_index, image in enumerate(rows[-1])
                ]
    finally:
        pipeline.scheduler = original_scheduler
    if rows:
        paths.append(_save_png(_grid(rows), folder / "grid.png"))
    return paths


def _refine_rows(
    pipeline: DiffusionPipeline,
    plan: ValidationPlan,
    folder: Path,
    prompt_inputs: PromptInputs | None,
) -> tuple[list[list[Image.Image]], list[Path]]:
    """Refine each planned dataset image (resized to the validation size) with its caption
    `images_per_prompt` times: a row per image, the source first; `rNN-src.png` and `rNN-iNN.png`. Image i
    uses seed `seed + i`."""
    refine = plan.refine
    assert refine is not None
    rows: list[list[Image.Image]] = []
    paths: list[Path] = []
    for index, (path, caption) in enumerate(zip(refine.images, refine.captions)):
        with Image.open(path) as opened:
            source = opened.convert("RGB").resize(plan.size, Image.Resampling.BICUBIC)
        paths.append(_save_png(source, folder / f"r{index:02d}-src.png"))
        row = [source]
        for image_index in range(plan.images_per_prompt):
            generator = torch.Generator("cpu").manual_seed(plan.seed + image_index)
            if prompt_inputs is not None:
                prompts = prompt_inputs(caption, plan.negative_prompt)
            else:
                prompts = {"prompt": caption, "negative_prompt": plan.negative_prompt or None}
            result = pipeline(
                **prompts,
                image=source,
                strength=refine.strength,
                aesthetic_score=refine.aesthetic_score,
                negative_aesthetic_score=refine.negative_aesthetic_score,
                num_inference_steps=plan.inference_steps,
                guidance_scale=plan.guidance,
                generator=generator,
            )
            row.append(result.images[0])
            paths.append(_save_png(row[-1], folder / f"r{index:02d}-i{image_index:02d}.png"))
        rows.append(row)
    return rows, paths


def _sample_with_previews(
    pipeline: DiffusionPipeline,
    plan: ValidationPlan,
    prompt: str,
    index: tuple[int, int],
    prompt_inputs: PromptInputs | None,
    previews: Previews | None,
) -> Image.Image:
    prompt_index, image_index = index
    if previews is None:
        return _sample(pipeline, plan, prompt, image_index, prompt_inputs)
    callback = previews.callback(prompt_index, image_index, prompt)
    image = _sample(pipeline, plan, prompt, image_index, prompt_inputs, callback)
    previews.finish(prompt_index, image_index, image)
    return image


def _sample(
    pipeline: DiffusionPipeline,
    plan: ValidationPlan,
    prompt: str,
    image_index: int,
    prompt_inputs: PromptInputs | None = None,
    callback: Callable | None = None,
) -> Image.Image:
    width, height = plan.size
    generator = torch.Generator("cpu").manual_seed(plan.seed + image_index)
    # text encoders in training mode draw their dropout from the global RNG: seeded per image, restored
    seeded = plan.text_encoder_mode == "training"
    with seeded_global_rng(pipeline.device, plan.seed + image_index) if seeded else nullcontext():
        if prompt_inputs is not None:
            prompts = prompt_inputs(prompt, plan.negative_prompt)
        else:
            prompts = {"prompt": prompt, "negative_prompt": plan.negative_prompt or None}
        result = pipeline(
            **prompts,
            num_inference_steps=plan.inference_steps,
            guidance_scale=plan.guidance,
            height=height,
            width=width,
            generator=generator,
            **({"callback_on_step_end": callback} if callback is not None else {}),
        )
    return result.images[0]


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(row) for row in rows), height * len(rows)))
    for row_index, row in enumerate(rows):
        for column, image in enumerate(row):
            grid.paste(image.convert("RGB"), (column * width, row_index * height))
    return grid


# --- class images -------------------------------------------------------------------------------------------
def generate_class_images(
    pipeline: DiffusionPipeline,
    gen: GeneratePlan,
    *,
    autocast_dtype: torch.dtype | None = None,
    share: tuple[int, int] = (0, 1),
    wait: Callable[[], None] = lambda: None,
    prompt_inputs: PromptInputs | None = None,
) -> list[Path]:
    """Make the class images the plan asks for: `<gen.folder>/class-<seed>.png`, one seed per image, sampled
    with the plan's scheduler, steps and guidance, `gen.batch_size` images per pipeline call. `prompt_inputs`
    encodes the prompt as training does (long prompts, T5 length and masks) where the pipeline would not.

    Files generated for another manifest key are first moved into `stale-<key[:8]>/` (never deleted).
    The manifest is rewritten after every batch, so an interrupted run keeps what it made; files this
    key already produced are not made again.

    Several processes (`share` = (rank, processes), `wait` their barrier, which every process calls as often):
    the first tidies the folder and records the manifest, all wait, each makes every N-th batch of the images
    still to make (the batches one process would cut, so the same images come out), all wait, and the first
    writes the manifest listing them all. An interrupted split run keeps in the manifest only what the first
    process made; the others' images are moved aside and made again on the next run.
    """
    rank, processes = share
    folder = Path(gen.folder)
    paths = [folder / f"class-{seed}.png" for seed in gen.seeds]
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        made = _adopt_manifest(folder, gen.manifest_key)
        for path in paths:
            if path.exists() and not (path.name in made and path.is_file()):
                _move_into(path, folder / "stale-unlisted")  # a file this key did not generate: kept aside
        if processes > 1:
            _write_manifest(folder, gen, made)  # the others read the same list
    wait()
    if rank != 0:
        made = _adopt_manifest(folder, gen.manifest_key)  # the key now matches: only reads
    wait()  # everyone read the list before the first process rewrites it with new images
    todo = [
        (seed, path) for seed, path in zip(gen.seeds, paths) if not (path.name in made and path.is_file())
    ]
    batches = [todo[start : start + gen.batch_size] for start in range(0, len(todo), gen.batch_size)]
    pipeline.set_progress_bar_config(disable=True)
    original_scheduler = pipeline.scheduler
    pipeline.scheduler = make_scheduler(gen.scheduler, original_scheduler.config)
    try:
        with _inference(pipeline, autocast_dtype), Progress(transient=True, disable=rank > 0) as progress:
            task = progress.add_task(
                f"class images: {gen.prompt}", total=len(gen.seeds), completed=len(paths) - len(todo)
            )
            for batch in batches[rank::processes]:
                for image, (_, path) in zip(
                    _generate_batch(pipeline, gen, [seed for seed, _ in batch], prompt_inputs), batch
                ):
                    _save_png(image, path)
                    made.append(path.name)
                if rank == 0:
                    _write_manifest(folder, gen, made)
                progress.advance(task, len(batch) * processes)
    finally:
        pipeline.scheduler = original_scheduler
    wait()
    if rank == 0:
        _write_manifest(folder, gen, made + [path.name for _, path in todo])
    return paths


def _generate_batch(
    pipeline: DiffusionPipeline, gen: GeneratePlan, seeds: list[int], prompt_inputs: PromptInputs | None
) -> list[Image.Image]:
    width, height = gen.resolution
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if prompt_inputs is not None:  # the pipelines repeat only embeddings they encode themselves
        prompts = _repeated(prompt_inputs(gen.prompt, ""), len(seeds))
    else:
        prompts = {"prompt": [gen.prompt] * len(seeds)}
    result = pipeline(
        **prompts,
        num_inference_steps=gen.steps,
        guidance_scale=gen.guidance,
        height=height,
        width=width,
        generator=generators,
    )
    return list(result.images)


def _repeated(inputs: Any, count: int) -> Any:
    """Each tensor of the prompt inputs (nested dicts too) repeated `count` times on the batch axis."""
    if isinstance(inputs, torch.Tensor):
        return torch.cat([inputs] * count)
    if isinstance(inputs, dict):
        return {key: _repeated(value, count) for key, value in inputs.items()}
    return inputs


def _adopt_manifest(folder: Path, key: str) -> list[str]:
    """Names this key already generated; files listed for another key go to `stale-<old key[:8]>/`."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed, made_for = [str(name) for name in manifest["files"]], str(manifest["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # no manifest (or an unreadable one): nothing here is known to be ours
    if made_for == key:
        return listed
    for name in listed:
        if (folder / name).is_file():
            _move_into(folder / name, folder / f"stale-{made_for[:8]}")
    return []


def _move_into(path: Path, stale_folder: Path) -> None:
    stale_folder.mkdir(parents=True, exist_ok=True)
    target = stale_folder / path.name
    suffix = 1
    while target.exists():
        target = stale_folder / f"{path.stem}-{suffix}{path.suffix}"
        suffix += 1
    os.replace(path, target)


def _write_manifest(folder: Path, gen: GeneratePlan, made: list[str]) -> None:
    manifest = {
        "key": gen.manifest_key,
        "files": sorted(set(made)),
        "prompt": gen.prompt,
        "resolution": list(gen.resolution),
        "scheduler": gen.scheduler,
        "steps": gen.steps,
        "guidance": gen.guidance,
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
