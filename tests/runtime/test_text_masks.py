"""kohya's text attention masks (model.t5_attention_mask, model.clip_attention_mask) on the tiny Flux and SD3
models: the key mask in diffusers' Flux attention against an explicit softmax over the kept keys, a masked
prediction against the same prediction without the padding at all, independence of the padded tokens'
content (in training and in the validation pipeline), the masked encoders against unpadded ones, and runs
that resume bit-exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.text_masks import joint_key_mask
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, write_spec

FLUX = "builtin:tiny-flux"
SD3 = "builtin:tiny-sd3"
CPU = torch.device("cpu")


def _seeded(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


# --- the attention ------------------------------------------------------------------------------------------
def test_key_mask_in_flux_attention_is_a_softmax_over_the_kept_keys():
    """A single block's FluxAttention with `joint_key_mask` equals attention written out per sample: softmax
    of q k^T / sqrt(d) over the kept keys only (the prompt's text tokens and every image token)."""
    attn = build_pipeline(FLUX).transformer.single_transformer_blocks[0].attn
    text_len, image_len, lengths = 6, 5, [2, 6]
    x = _seeded(2, text_len + image_len, attn.query_dim, seed=0)
    mask = joint_key_mask(_text_mask(lengths, text_len), image_len)
    assert mask.shape == (2, 1, 1, text_len + image_len) and mask.dtype == torch.bool
    with torch.no_grad():
        ours = attn(hidden_states=x, attention_mask=mask)
        heads = attn.heads
        q = attn.norm_q(attn.to_q(x).unflatten(-1, (heads, -1))).transpose(1, 2)  # (B, H, S, d)
        k = attn.norm_k(attn.to_k(x).unflatten(-1, (heads, -1))).transpose(1, 2)
        v = attn.to_v(x).unflatten(-1, (heads, -1)).transpose(1, 2)
        rows = []
        for b, n in enumerate(lengths):
            kept = list(range(n)) + list(range(text_len, text_len + image_len))
            scores = q[b] @ k[b][:, kept].transpose(-1, -2) / math.sqrt(q.shape[-1])
            rows.append((scores.softmax(-1) @ v[b][:, kept]).transpose(0, 1).flatten(1))
        theirs = torch.stack(rows)
        unmasked = attn(hidden_states=x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked, theirs, atol=1e-4)  # the padded keys weigh without the mask


NOISY = _seeded(2, 16, 8, 8, seed=3)


def _flux_predict(transformer, embeds, pooled, mask=None, rows=slice(0, 2)):
    family = family_runtime("flux")
    text = {"prompt_embeds": embeds, "pooled": pooled}
    if mask is not None:
        text["t5_mask"] = mask
    noisy = NOISY[rows]
    t = torch.full((embeds.shape[0],), 600.0)
    with torch.no_grad():
        return family.predict(transformer, noisy, t, text, family.conditioning(text, [], CPU))


def test_masked_flux_prediction_is_the_prediction_without_the_padding():
    """With the key mask, no image or prompt token sees the padding, and the padded tokens' own states reach
    nothing else: the prediction equals the transformer's on the prompt's tokens alone (text ids are all
    zero, so dropping tokens moves no position)."""
    transformer = build_pipeline(FLUX).transformer
    embeds, pooled, lengths = _seeded(2, 12, 64, seed=1), _seeded(2, 32, seed=2), [3, 7]
    masked = _flux_predict(transformer, embeds, pooled, _text_mask(lengths, 12))
    for b, n in enumerate(lengths):
        alone = _flux_predict(transformer, embeds[b : b + 1, :n], pooled[b : b + 1], rows=slice(b, b + 1))
        torch.testing.assert_close(masked[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_masked_flux_prediction_with_gradient_checkpointing_and_gradients():
    """Checkpointed blocks get the mask too (diffusers passes joint_attention_kwargs positionally), and no
    gradient reaches the padded tokens' embeddings."""
    transformer = build_pipeline(FLUX).transformer
    embeds, pooled, mask = _seeded(2, 12, 64, seed=1), _seeded(2, 32, seed=2), _text_mask([4, 9], 12)
    expected = _flux_predict(transformer, embeds, pooled, mask)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    leaf = embeds.clone().requires_grad_(True)
    family = family_runtime("flux")
    text = {"prompt_embeds": leaf, "pooled": pooled, "t5_mask": mask}
    out = family.predict(
        transformer, NOISY, torch.full((2,), 600.0), text, family.conditioning(text, [], CPU)
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    assert torch.all(leaf.grad[~mask.bool()] == 0) and leaf.grad[mask.bool()].abs().sum() > 0


def test_masked_flux_prediction_ignores_the_padded_tokens_content():
    transformer = build_pipeline(FLUX).transformer
    embeds, pooled, mask = _seeded(2, 12, 64, seed=1), _seeded(2, 32, seed=2), _text_mask([4, 9], 12)
    other = torch.where(mask.bool()[..., None], embeds, _seeded(2, 12, 64, seed=9) * 5)
    torch.testing.assert_close(
        _flux_predict(transformer, other, pooled, mask), _flux_predict(transformer, embeds, pooled, mask)
    )
    unmasked = _flux_predict(transformer, other, pooled), _flux_predict(transformer, embeds, pooled)
    assert not torch.allclose(*unmasked, atol=1e-4)  # without the mask the padding's content counts


def test_validation_pipeline_masks_the_padded_tokens():
    """The FluxPipeline call validation makes (pipeline_prompt_inputs) carries the mask into every transformer
    call: the sampled latents do not depend on the padded tokens' content, and differ from unmasked ones."""
    pipe = build_pipeline(FLUX)
    family = family_runtime("flux")
    embeds, pooled, mask = _seeded(1, 12, 64, seed=1), _seeded(1, 32, seed=2), _text_mask([5], 12)
    other = torch.where(mask.bool()[..., None], embeds, _seeded(1, 12, 64, seed=9) * 5)

    def sample(e, with_mask=True):
        text = {"prompt_embeds": e, "pooled": pooled, **({"t5_mask": mask} if with_mask else {})}
        inputs = family.pipeline_prompt_inputs(pipe, text, text, "")
        with torch.no_grad():
            return pipe(**inputs, num_inference_steps=2, height=64, width=64, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    torch.testing.assert_close(sample(other), sample(embeds))
    assert not torch.allclose(sample(other, with_mask=False), sample(embeds, with_mask=False), atol=1e-4)


# --- the encoders -------------------------------------------------------------------------------------------
PROMPTS = ["a photo of sks dog", "a"]


def _t5_alone(encoder, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer([prompt], return_tensors="pt").input_ids  # no padding at all
    with torch.no_grad():
        return encoder(ids)[0][0]


def test_flux_t5_mask_encodes_as_if_unpadded_and_returns_the_mask():
    pipe = build_pipeline(FLUX)
    pipe.tokenizer_2.model_max_length = 16
    encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
    with torch.no_grad():
        masked = family_runtime("flux").encode_prompts(
            encoders, tokenizers, PROMPTS, clip_skip=1, max_tokens=75, device=CPU, t5_mask=True
        )
        plain = family_runtime("flux").encode_prompts(
            encoders, tokenizers, PROMPTS, clip_skip=1, max_tokens=75, device=CPU
        )
    assert "t5_mask" not in plain and masked["t5_mask"].shape == (2, 16)
    for b, prompt in enumerate(PROMPTS):
        alone = _t5_alone(pipe.text_encoder_2, pipe.tokenizer_2, prompt)
        n = alone.shape[0]
        assert masked["t5_mask"][b].tolist() == [1.0] * n + [0.0] * (16 - n)
        torch.testing.assert_close(masked["prompt_embeds"][b, :n], alone, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(plain["prompt_embeds"][b, :n], alone, atol=1e-4)
    torch.testing.assert_close(masked["pooled"], plain["pooled"], rtol=0, atol=0)  # CLIP-L is not masked


def test_sd3_masks_change_the_encoders_as_kohyas_do():
    """clip_mask: CLIP's causal attention keeps the prompt's positions and the pooled output; only the padded
    positions change. t5_mask: T5's prompt positions are those of the unpadded prompt."""
    pipe = build_pipeline(SD3)
    pipe.tokenizer_3.model_max_length = 16
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    family = family_runtime("sd3")
    with torch.no_grad():
        plain = family.encode_prompts(encoders, tokenizers, PROMPTS, clip_skip=1, max_tokens=75, device=CPU)
        masked = family.encode_prompts(encoders, tokenizers, PROMPTS, clip_skip=1, max_tokens=75,
                                       device=CPU, t5_mask=True, clip_mask=True)  # fmt: skip
    assert masked.keys() == plain.keys() == {"prompt_embeds", "pooled"}
    torch.testing.assert_close(masked["pooled"], plain["pooled"], rtol=0, atol=1e-6)
    lengths = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").attention_mask
    for b, prompt in enumerate(PROMPTS):
        n = int(lengths[b].sum())
        torch.testing.assert_close(masked["prompt_embeds"][b, :n], plain["prompt_embeds"][b, :n])
        assert not torch.allclose(
            masked["prompt_embeds"][b, n:77], plain["prompt_embeds"][b, n:77], atol=1e-4
        )
        alone = _t5_alone(pipe.text_encoder_3, pipe.tokenizer_3, prompt)
        t5 = masked["prompt_embeds"][b, 77 : 77 + alone.shape[0]]
        torch.testing.assert_close(t5, alone, rtol=1e-5, atol=1e-6)


# --- runs ---------------------------------------------------------------------------------------------------
LORA = '[adapter]\nkind = "lora"\nrank = 4\n\n[checkpoints]\nevery = 2\n'


def _plan(tmp: Path, base: str, sets: list[str], extra: str = LORA):
    return compile_spec(write_spec(tmp, base=base, steps=4, extra=extra), sets)


def _trains_and_resumes(tmp_path: Path, base: str, sets: list[str], extra: str = LORA):
    whole = execute(_plan(tmp_path / "whole", base, sets, extra))
    plan = _plan(tmp_path / "parts", base, sets, extra)
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    assert all(math.isfinite(x) for x in whole.losses)
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = execute(_plan(tmp_path / "plain", base, [], extra))
    assert plain.losses != whole.losses  # the masks reach training
    return plan, whole


def test_tiny_flux_trains_with_the_t5_mask_caches_it_and_resumes_bit_exact(tmp_path):
    validation = '[validation]\nprompts = ["a photo of ohwx toy"]\nevery = 4\nsteps = 2\n'
    plan, _ = _trains_and_resumes(tmp_path, FLUX, ["model.t5_attention_mask=true"], LORA + "\n" + validation)
    assert plan.model.t5_attention_mask and not plan.model.clip_attention_mask
    entries = list((tmp_path / "parts" / "cache" / "text").rglob("*.safetensors"))
    assert entries and all("t5_mask" in load_file(str(e)) for e in entries)
    assert list((tmp_path / "whole" / "out").rglob("*.png"))  # the masked validation samples


def test_tiny_sd3_trains_with_both_masks_and_resumes_bit_exact(tmp_path):
    sets = ["model.t5_attention_mask=true", "model.clip_attention_mask=true"]
    plan, _ = _trains_and_resumes(tmp_path, SD3, sets)
    assert plan.model.t5_attention_mask and plan.model.clip_attention_mask


@pytest.mark.parametrize("option", ["t5_attention_mask", "clip_attention_mask"])
def test_each_mask_keys_the_text_cache(tmp_path, option):
    plain = _plan(tmp_path / "a", SD3, [])
    masked = _plan(tmp_path / "b", SD3, [f"model.{option}=true"])
    keys = [img.text_key for d in plain.datasets for img in d.images]
    masked_keys = [img.text_key for d in masked.datasets for img in d.images]
    assert keys and not set(keys) & set(masked_keys)


# --- kohya's own transformer --------------------------------------------------------------------------------
def test_masked_prediction_is_kohyas_flux_with_its_txt_attention_mask():
    """kohya's flux_models.Flux (tests/runtime/kohya_reference, its weights converted to diffusers' layout
    by runtime/flux_original.py) called with `txt_attention_mask`, as flux_train_network.py calls it with
    `--apply_t5_attn_mask`: dbspec's prediction with the t5 mask is kohya's, and without it kohya's
    unmasked (float32 round-off apart: kohya's RoPE and fused projections sum in another order)."""
    from diffusers import FluxTransformer2DModel

    from dbspec.runtime import flux_original

    ref = load_file(str(Path(__file__).parent / "kohya_reference" / "kohya_flux_mask.safetensors"))
    config = dict(build_pipeline(FLUX).transformer.config)
    transformer = FluxTransformer2DModel.from_config(config).eval()
    weights = {k.removeprefix("weights."): v for k, v in ref.items() if k.startswith("weights.")}
    transformer.load_state_dict(flux_original.to_diffusers(weights, config), strict=True)
    family = family_runtime("flux")
    guidance, family.guidance = family.guidance, 3.5  # the reference's guidance (the family's default)
    try:
        text = {"prompt_embeds": ref["txt"], "pooled": ref["y"]}

        def predict(text):
            with torch.no_grad():
                extra = family.conditioning(text, [], CPU)
                return family.predict(transformer, ref["noisy"], ref["timesteps"], text, extra)

        masked = predict({**text, "t5_mask": ref["t5_mask"].float()})
        unmasked = predict(text)
    finally:
        family.guidance = guidance
    # 2e-5 of the output's scale: float32 round-off, which also differs between CPUs (1.1e-5 on another
    # machine than the reference's); the mask's own effect is 500 times larger (the last assert)
    scale = float(ref["masked"].abs().max())
    torch.testing.assert_close(unmasked, ref["unmasked"], rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(masked, ref["masked"], rtol=0, atol=2e-5 * scale)
    assert (ref["masked"] - ref["unmasked"]).abs().max() > 1e-2 * scale  # the mask matters at this scale


def test_sd3_masks_are_kohyas_encode_tokens():
    """kohya's Sd3TextEncodingStrategy.encode_tokens (tests/runtime/kohya_reference) on the tiny SD3 encoders,
    with both masks and without: dbspec's CLIP part (before its padding to T5's width), T5 part and pooled
    projections are kohya's lg_out, t5_out and lg_pooled."""
    ref = load_file(str(Path(__file__).parent / "kohya_reference" / "kohya_sd3_masks.safetensors"))
    pipe = build_pipeline(SD3)
    pipe.tokenizer_3.model_max_length = 16
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    for name, masks in (("plain", {}), ("both", {"t5_mask": True, "clip_mask": True})):
        with torch.no_grad():
            ours = family_runtime("sd3").encode_prompts(
                encoders, tokenizers, PROMPTS, clip_skip=1, max_tokens=75, device=CPU, **masks
            )
        lg = ref[f"{name}.lg_out"]
        torch.testing.assert_close(ours["prompt_embeds"][:, :77, : lg.shape[-1]], lg, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["prompt_embeds"][:, 77:], ref[f"{name}.t5_out"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["pooled"], ref[f"{name}.lg_pooled"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref["both.t5_out"], ref["plain.t5_out"], atol=1e-4)
    assert not torch.allclose(ref["both.lg_out"], ref["plain.lg_out"], atol=1e-4)
