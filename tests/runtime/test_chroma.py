"""Chroma (builtin:tiny-chroma): Flux's transformer without CLIP-L and guidance embedding, T5 alone, trained
as kohya's flux_train_network.py --model_type chroma trains it (library/chroma_models.py):

- prompts encode as diffusers' ChromaPipeline encodes them (T5 with its padding mask; the transformer keeps
  the prompt's tokens and one padding token);
- the batched, masked transformer call equals kohya's per-sample trimming of the text to mask.sum() + 1
  tokens, also with gradient checkpointing (whose single blocks diffusers calls without the mask);
- a nonzero loss.flow_guidance reaches the approximator as kohya's get_mod_vectors embeds it (x1000);
- a LoRA run with train.t5 resumes bit-exact and exports kohya's lora_flux layout on Chroma;
- a diffusers Chroma folder on disk plans as the chroma family (offline) and trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding
from safetensors import safe_open

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.families.chroma import text_keys
from dbspec.runtime.tiny import build_pipeline, materialize
from tests.runtime.runspec import compile_spec, make_plan, write_spec

BASE = "builtin:tiny-chroma"
CPU = torch.device("cpu")


def _family(guidance: float = 0.0):
    family = type(family_runtime("chroma"))(family_runtime("chroma").spec)  # not the shared object
    family.guidance = guidance
    return family


def test_encode_prompts_is_the_pipelines():
    pipe = build_pipeline(BASE)
    prompts = ["a photo of sks dog in the snow", "a cat"]
    with torch.no_grad():
        pipe.tokenizer.model_max_length = 16  # model.t5_max_length, as load() sets it
        ours = _family().encode_prompts(
            [pipe.text_encoder], [pipe.tokenizer], prompts, clip_skip=1, max_tokens=75, device=CPU
        )
        embeds, mask = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=16, device=CPU)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=0)
    padding = family_runtime("chroma").spec.t5_mask_padding
    # the prompt, its end token, one padding token
    assert padding == 1 and torch.equal(text_keys(ours["t5_mask"], padding), mask.bool())
    lengths = ours["t5_mask"].sum(dim=1)
    assert lengths[0] > lengths[1] and torch.equal(mask.sum(dim=1), lengths + 1)


def _inputs(batch: int = 2, tokens: int = 10):
    generator = torch.Generator().manual_seed(3)
    noisy = torch.randn(batch, 16, 8, 8, generator=generator)
    embeds = torch.randn(batch, tokens, 64, generator=generator)
    mask = torch.zeros(batch, tokens)
    for i, n in enumerate((3, 7, tokens)[:batch]):
        mask[i, :n] = 1
    return noisy, embeds, mask, torch.tensor([700.0, 30.0, 400.0][:batch])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_masked_batch_is_kohyas_per_sample_trimming(checkpointing):
    """kohya's Chroma.forward keeps mask.sum() + 1 text tokens per sample (attn_padding 1) and attends to
    nothing else: each sample alone with its text cut there (every kept token attended) is the same call."""
    transformer = build_pipeline(BASE).transformer
    if checkpointing:
        transformer.enable_gradient_checkpointing()
        transformer.train()
    family = _family()
    noisy, embeds, mask, t = _inputs(3)
    noisy.requires_grad_(True)
    batched = family.predict(transformer, noisy, t, {"prompt_embeds": embeds, "t5_mask": mask}, {})
    batched.square().sum().backward()
    for i in range(3):
        kept = min(int(mask[i].sum()) + 1, embeds.shape[1])
        alone_input = noisy[i : i + 1].detach().clone().requires_grad_(True)
        text = {"prompt_embeds": embeds[i : i + 1, :kept], "t5_mask": torch.ones(1, kept)}
        alone = family.predict(transformer, alone_input, t[i : i + 1], text, {})
        alone.square().sum().backward()
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=2e-5)
        torch.testing.assert_close(noisy.grad[i : i + 1], alone_input.grad, rtol=0, atol=2e-5)
    unmasked = family.predict(transformer, noisy, t, {"prompt_embeds": embeds, "t5_mask": mask + 1}, {})
    assert not torch.allclose(unmasked[:2], batched[:2], atol=1e-3)  # the masks matter here


def test_guidance_reaches_the_approximator_as_kohya_embeds_it():
    """kohya's get_mod_vectors: [timestep_embedding(t), timestep_embedding(guidance), index embedding], each
    timestep_embedding scaled by 1000; diffusers' ChromaPipeline fixes guidance 0 (the default here)."""
    transformer = build_pipeline(BASE).transformer
    noisy, embeds, mask, t = _inputs(2)
    text = {"prompt_embeds": embeds, "t5_mask": mask}
    with torch.no_grad():
        plain = _family(0.0).predict(transformer, noisy, t, text, {})
        guided = _family(2.5).predict(transformer, noisy, t, text, {})
        embed = transformer.time_text_embed
        channels = embed.time_proj.num_channels

        def kohya_input(timestep):  # the approximator input with guidance 2.5
            b = timestep.shape[0]
            emb = [
                get_timestep_embedding(v, channels, flip_sin_to_cos=True, downscale_freq_shift=0)
                for v in (timestep, torch.full((b,), 2.5 * 1000))
            ]
            both = torch.cat(emb, dim=1)[:, None, :].expand(b, embed.mod_proj.shape[0], -1)
            return torch.cat([both, embed.mod_proj[None].expand(b, -1, -1)], dim=-1)

        original = embed.forward
        embed.forward = kohya_input
        try:
            reference = _family(0.0).predict(transformer, noisy, t, text, {})
        finally:
            embed.forward = original
    torch.testing.assert_close(guided, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(plain, guided, atol=1e-4)


# kohya's networks/lora_flux.py on library/chroma_models.py: every Linear of DoubleStreamBlock (no modulation
# Linears in Chroma's) and SingleStreamBlock, named lora_unet_<module path with `_`>
KOHYA_CHROMA_MODULES = {
    *(f"lora_unet_double_blocks_0_{s}_{n}" for s in ("img", "txt") for n in ("attn_qkv", "attn_proj")),
    *(f"lora_unet_double_blocks_0_{s}_mlp_{i}" for s in ("img", "txt") for i in (0, 2)),
    "lora_unet_single_blocks_0_linear1",
    "lora_unet_single_blocks_0_linear2",
}
KOHYA_TARGETS = """
[adapter]
kind = "lora"
rank = 2
alpha = 1.0
denoiser_targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
  "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
  "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]
fused_projections = true

[[adapter.blocks]]
pattern = "^proj_out$"  # the final layer: kohya adapts only blocks
rank = 0
alpha = 1.0

[train]
t5 = true

[checkpoints]
exports = ["kohya_lora"]
"""


def _kohya_file(final: str) -> tuple[dict, dict]:
    (path,) = Path(final).glob("*.kohya.safetensors")
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_lora_run_resumes_bit_exact_and_exports_kohyas_chroma_layout(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=4, extra=KOHYA_TARGETS)
    overrides = ["model.t5_max_length=8", "precision.gradient_checkpointing=true"]
    plan = compile_spec(spec, [*overrides, "output.dir=parts"])
    assert plan.model.family == "chroma" and plan.model.t5_attention_mask  # always masked
    assert plan.loss.flow.guidance == 0.0
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    assert execute(plan, stop_after=2).status == "interrupted"
    resumed = execute(plan, resume=True)
    assert whole.status == resumed.status == "finished" and resumed.steps == 4
    ours, metadata = _kohya_file(whole.final)
    theirs, _ = _kohya_file(resumed.final)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    modules = {k.rsplit(".", 2)[0] for k in ours}
    assert {m for m in modules if m.startswith("lora_unet_")} == KOHYA_CHROMA_MODULES
    t5 = {m for m in modules if not m.startswith("lora_unet_")}
    assert t5 and all(m.startswith("lora_te3_encoder_block_") for m in t5)  # T5 is kohya's te3, no te1
    assert metadata["ss_base_model_version"] == "chroma"
    assert metadata["ss_network_module"] == "networks.lora_flux"
    # one shared down-projection per fused Linear (kohya's LoRA on qkv / linear1): rank 2 rows
    assert ours["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (2, 16)
    assert ours["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 16 + 64, 2)


def test_a_diffusers_chroma_folder_plans_and_trains_offline(tmp_path):
    folder = materialize(BASE, tmp_path / "chroma-diffusers")
    validation = '[validation]\nprompts = ["a photo of ohwx toy"]\nevery = 1\nsteps = 2\n'
    plan = make_plan(
        tmp_path, base=str(folder), steps=1, extra=f'[adapter]\nkind = "lora"\nrank = 2\n{validation}'
    )
    assert plan.model.family == "chroma" and plan.model.source == "diffusers"
    assert plan.model.prediction == "flow_matching" and plan.model.t5_attention_mask
    result = execute(plan)
    assert result.status == "finished"
    assert (Path(result.output) / "samples" / "step-000001" / "grid.png").exists()  # ChromaPipeline sampled


def test_registry_counts_are_chroma1_hds():
    """public_params, lora_params_per_rank and lora_params_per_target (the memory estimate) count diffusers'
    ChromaTransformer2DModel at its default config (Chroma1-HD's), on the meta device."""
    from diffusers import ChromaTransformer2DModel

    from dbspec.families import family_spec

    spec = family_spec("chroma")
    with torch.device("meta"):
        net = ChromaTransformer2DModel()
    assert sum(p.numel() for p in net.parameters()) == spec.public_params["unet"]
    linears = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}

    def per_rank(suffix: str) -> int:
        return sum(
            m.in_features + m.out_features
            for n, m in linears.items()
            if (n + ".").endswith(f".{suffix}.") or n == suffix
        )

    for suffix, count in spec.lora_params_per_target.items():
        assert per_rank(suffix) == count, suffix
    assert sum(per_rank(s) for s in spec.lora_targets) == spec.lora_params_per_rank["unet"]
    assert not any(n.endswith(("norm1.linear", "norm.linear")) for n in linears)  # no modulation Linears
