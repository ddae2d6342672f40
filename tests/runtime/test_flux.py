"""Flux.1 dev (builtin:tiny-flux): flow matching over packed latents with a guidance embedding, checked
against diffusers' FluxPipeline (prompt encoding, LoRA loading) and train_dreambooth_lora_flux.py's
transformer call."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import make_plan

BASE = "builtin:tiny-flux"


def test_encode_prompts_is_the_pipelines():
    pipe = build_pipeline(BASE)
    pipe.tokenizer_2.model_max_length = 40  # model.t5_max_length, as the family's load() sets it
    prompts = ["a photo of sks dog", "a cat"]
    with torch.no_grad():
        ours = family_runtime("flux").encode_prompts(
            [pipe.text_encoder, pipe.text_encoder_2],
            [pipe.tokenizer, pipe.tokenizer_2],
            prompts,
            clip_skip=1,
            max_tokens=75,
            device=torch.device("cpu"),
        )
        embeds, pooled, _ = pipe.encode_prompt(prompts, None, max_sequence_length=40)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=0, atol=1e-6)


def test_predict_is_the_training_scripts_call():
    """Packing, image/text ids, timestep / 1000 and guidance 3.5 as train_dreambooth_lora_flux.py."""
    transformer = build_pipeline(BASE).transformer
    family = family_runtime("flux")
    noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    text = {"prompt_embeds": torch.randn(2, 12, 64), "pooled": torch.randn(2, 32)}
    timesteps = torch.tensor([700.0, 20.0])
    with torch.no_grad():
        ours = family.predict(transformer, noisy, timesteps, text, family.conditioning(text, [], "cpu"))
        packed = transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, 2, 16, 8, 8),
            timestep=timesteps / 1000,
            guidance=torch.tensor([3.5]).expand(2),
            pooled_projections=text["pooled"],
            encoder_hidden_states=text["prompt_embeds"],
            txt_ids=torch.zeros(12, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
            return_dict=False,
        )[0]
        theirs = FluxPipeline._unpack_latents(packed, height=8 * 8, width=8 * 8, vae_scale_factor=8)
    assert ours.shape == noisy.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_lora_run_validates_and_loads_in_the_flux_pipeline(tmp_path):
    validation = '[validation]\nprompts = ["a photo of ohwx toy"]\nevery = 2\nsteps = 2\n'
    plan = make_plan(
        tmp_path, base=BASE, steps=2, extra=f'[adapter]\nkind = "lora"\nrank = 4\n\n{validation}'
    )
    assert plan.loss.flow.guidance == 3.5 and plan.validation.scheduler == "flow_euler"
    assert "ff.net.0.proj" in plan.adapter.denoiser_targets
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    family = family_runtime("flux")
    noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    text = {"prompt_embeds": torch.randn(1, 12, 64), "pooled": torch.randn(1, 32)}
    t = torch.tensor([400.0])

    def run(transformer):
        with torch.no_grad():
            return family.predict(transformer, noisy, t, text, family.conditioning(text, [], "cpu"))

    pipe = build_pipeline(BASE)
    pipe.load_lora_weights(result.final)
    ours = run(result.components.unet)
    torch.testing.assert_close(run(pipe.transformer), ours, rtol=0, atol=1e-4)
    assert not torch.allclose(run(build_pipeline(BASE).transformer), ours, atol=1e-4)


def test_plan_guidance_reaches_the_guidance_embedding(tmp_path):
    """loss.flow_guidance (kohya's --guidance_scale) replaces the family's 3.5 in the transformer call."""
    plan = make_plan(tmp_path, base=BASE, steps=1, extra="[loss]\nflow_guidance = 1.0\n")
    assert plan.loss.flow.guidance == 1.0
    family = type(family_runtime("flux"))(family_runtime("flux").spec)  # not the shared object
    comps = family.load(plan)
    assert family.guidance == 1.0
    noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    text = {"prompt_embeds": torch.randn(1, 12, 64), "pooled": torch.randn(1, 32)}
    t = torch.tensor([500.0])

    def call(guidance: float) -> torch.Tensor:
        packed = comps.unet(
            hidden_states=FluxPipeline._pack_latents(noisy, 1, 16, 8, 8),
            timestep=t / 1000,
            guidance=torch.tensor([guidance]),
            pooled_projections=text["pooled"],
            encoder_hidden_states=text["prompt_embeds"],
            txt_ids=torch.zeros(12, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
            return_dict=False,
        )[0]
        return FluxPipeline._unpack_latents(packed, height=64, width=64, vae_scale_factor=8)

    with torch.no_grad():
        ours = family.predict(comps.unet, noisy, t, text, family.conditioning(text, [], "cpu"))
        torch.testing.assert_close(ours, call(1.0), rtol=0, atol=1e-6)
        assert not torch.allclose(ours, call(3.5), atol=1e-4)
