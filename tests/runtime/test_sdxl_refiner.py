"""The SDXL refiner (builtin:tiny-sdxl-refiner): one text encoder (OpenCLIP bigG's slot, text_encoder_2) and
aesthetic-score micro-conditioning, checked against diffusers' StableDiffusionXLImg2ImgPipeline; full and LoRA
runs, validation that refines dataset images, `dbspec sample` on a refiner run.

Two tiny runs: the LoRA run (a module fixture, shared by the validation and `dbspec sample` tests) and a full
one. Neither is stopped and resumed: a full fine-tune's saved state (the denoiser's weights, AdamW's state,
the generators) is the SD 1.x run's that test_run.py's test_interrupted_then_resumed_run_is_bit_identical
resumes bit-exact; the refiner adds no state of its own (its aesthetic score is the plan's)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from dbspec.cli import app

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, make_plan, write_spec

BASE = "builtin:tiny-sdxl-refiner"
FAMILY = "sdxl_refiner"
LORA = '[adapter]\nkind = "lora"\nrank = 4\n'
REFINE = "[validation]\nevery = 2\nsteps = 4\nrefine_images = 2\nstrength = 0.5\n"


def test_encode_prompts_is_the_pipelines():
    """bigG's penultimate hidden states and pooled projection, as the refiner pipeline's encode_prompt."""
    pipe = build_pipeline(BASE)
    assert pipe.text_encoder is None and pipe.tokenizer is None
    prompts = ["a photo of sks dog", "a cat on a mat"]
    with torch.no_grad():
        ours = family_runtime(FAMILY).encode_prompts(
            [pipe.text_encoder_2],
            [pipe.tokenizer_2],
            prompts,
            clip_skip=1,
            max_tokens=75,
            device=torch.device("cpu"),
        )
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=0, atol=1e-6)


def test_time_ids_carry_the_aesthetic_score_as_the_pipeline_builds_them():
    pipe = build_pipeline(BASE)
    family = family_runtime(FAMILY)
    family.aesthetic_score = 7.25  # what load() sets from model.aesthetic_score
    sample = SimpleNamespace(img=SimpleNamespace(size=(96, 80), crop=(8, 4), bucket=(64, 64)))
    text = {"pooled": torch.zeros(1, 64)}
    ours = family.conditioning(text, [sample], "cpu")["added_cond_kwargs"]["time_ids"]
    theirs, _ = pipe._get_add_time_ids(
        (80, 96), (4, 8), (64, 64), 7.25, 2.5, (80, 96), (4, 8), (64, 64), torch.float32, 64
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # the UNet takes exactly these: 5 time ids x 8 + 64 pooled = its projection input
    unet = pipe.unet
    assert unet.config.projection_class_embeddings_input_dim == 5 * 8 + 64
    family.aesthetic_score = 6.0


def test_plan_lists_the_refined_images_and_shares_latents_with_sdxl_base(tmp_path):
    plan = make_plan(tmp_path / "r", base=BASE, steps=4, extra=REFINE)
    assert plan.model.family == FAMILY and plan.model.aesthetic_score == 6.0
    r = plan.validation.refine
    assert r is not None and len(r.images) == 2 and r.strength == 0.5
    toy = sorted(img.path for d in plan.datasets for img in d.images)
    assert set(r.images) <= set(toy) and r.captions == ("a photo of ohwx toy",) * 2
    assert [c.name for c in plan.precision.components] == ["unet", "text_encoder_2", "vae"]
    base = make_plan(tmp_path / "b", base="builtin:tiny-sdxl", steps=4)
    assert plan.model.vae_identity == base.model.vae_identity
    assert plan.model.text_identity != base.model.text_identity
    lat = {k for d in plan.datasets for img in d.images for k in img.latent_keys}
    base_lat = {k for d in base.datasets for img in d.images for k in img.latent_keys}
    assert lat and lat == base_lat  # the same cache entries (same VAE, same images)
    text = {img.text_key for d in plan.datasets for img in d.images}
    base_text = {img.text_key for d in base.datasets for img in d.images}
    assert text and not text & base_text


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 4-step LoRA run (the U-Net and the text encoder) whose validation refines dataset images, its models
    kept: its folder, plan and result."""
    folder = tmp_path_factory.mktemp("refiner-lora")
    plan = make_plan(folder, base=BASE, steps=4, extra=f"{LORA}\n[train]\ntext_encoder = true\n\n{REFINE}")
    return folder, plan, execute(plan, keep_models=True)


def test_lora_run_refines_dataset_images_and_loads_in_the_img2img_pipeline(lora_run):
    _, plan, result = lora_run
    trained = {c.name: c.trainable for c in plan.precision.components}
    assert trained == {"unet": "lora", "text_encoder_2": "lora", "vae": "frozen"}
    assert result.status == "finished" and all(torch.isfinite(torch.tensor(result.losses)))
    step = Path(result.output) / "samples" / "step-000002"
    assert {p.name for p in step.glob("*.png")} >= {"r00-src.png", "r00-i00.png", "r01-i00.png", "grid.png"}
    with Image.open(step / "r00-i00.png") as refined:
        assert refined.size == (64, 64)
    pipe = build_pipeline(BASE)
    pipe.load_lora_weights(result.final)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = {"prompt_embeds": torch.randn(1, 77, 64), "pooled": torch.randn(1, 64)}
    extra = {"added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": torch.ones(1, 5)}}
    family = family_runtime(FAMILY)
    t = torch.tensor([300])
    with torch.no_grad():
        ours = family.predict(result.components.unet, x, t, text, extra)
        theirs = family.predict(pipe.unet, x, t, text, extra)
        untouched = family.predict(build_pipeline(BASE).unet, x, t, text, extra)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    assert not torch.allclose(untouched, ours, atol=1e-4)
    ids = pipe.tokenizer_2(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():  # the trained text encoder's LoRA loads into the pipeline's only encoder
        torch.testing.assert_close(
            pipe.text_encoder_2(ids)[0], result.components.text_encoders[0](ids)[0], rtol=0, atol=1e-4
        )


def test_a_full_run_trains_the_unet_and_saves_the_refiners_components(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=2)
    # no validation at the end (4 refined images, 50 steps): the LoRA run's validation refines images
    plan = compile_spec(spec, ["model.aesthetic_score=7.0", "validation.refine_images=0"])
    assert plan.model.aesthetic_score == 7.0
    whole = execute(plan)
    assert whole.status == "finished" and len(whole.losses) == 2
    trained = load_file(str(Path(whole.final) / "unet" / "diffusion_pytorch_model.safetensors"))
    base = build_pipeline(BASE).unet.state_dict()
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)
    assert (
        not (Path(whole.final) / "text_encoder").exists() and (Path(whole.final) / "text_encoder_2").exists()
    )


def test_dbspec_sample_refines_images_of_a_refiner_run(tmp_path, lora_run):
    folder, _, run = lora_run
    toy = sorted((folder / "data" / "toy").glob("*.*"))
    toy = [p for p in toy if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")][:2]
    runner = CliRunner()
    common = ["sample", run.output, "-p", "a photo of ohwx toy", "--steps", "4", "--size", "64"]
    args = [*common, "--image", str(toy[0]), "--image", str(toy[1]), "--strength", "0.5"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["grid.png", "r00-i00.png", "r00-src.png", "r01-i00.png", "r01-src.png"]
    assert Image.open(tmp_path / "s" / "grid.png").size == (128, 128)  # source | refined, a row per image
    refused = runner.invoke(app, [*common, "-o", str(tmp_path / "t")])
    assert refused.exit_code == 1 and "pass --image" in refused.output
