"""The activation term of the flow families (SD3.5 medium/large, Flux.1 dev) counts tokens: 2x2 latent
patches plus the joint sequence's text tokens, times bytes per token of the nearest public model; those bytes
reproduce the measurements of tests/bench/bench_flow_activations.py (docs/memory.md, "The flow families")."""

from __future__ import annotations

import pytest
from hubspecs import empty_hub_cache, plan_hub_spec  # noqa: F401 (a pytest fixture)

from dbspec.compiler.memory import activation_bytes
from dbspec.families import family_spec

SD35M, SD35L, FLUX = 2_243_171_520, 8_056_627_520, 11_901_408_320
PARAMS = {"sd35m": ("sd3", SD35M), "sd35l": ("sd3", SD35L), "flux": ("flux", FLUX)}
TEXT = {"sd3": 77 + 256, "flux": 512}  # the tokens the bench trained with (CLIP + T5; T5)
# bench_flow_activations.py on 2026-11-30 (2 shared cores, torch 2.13 CPU, diffusers 0.42, bf16 autocast,
# SDPA, batch 1, rank-16 LoRA): the peak rise of a step, extrapolated from the blocks built to the full
# model, in bytes.
MEASURED = {
    ("sd35m", 128, False): 631_658_448,  # (128 px checkpointed, 82_045_952, lies 13% above: docs/memory.md)
    ("sd35m", 256, False): 934_032_336,
    ("sd35m", 256, True): 100_362_240,
    ("sd35m", 512, False): 2_157_519_824,
    ("sd35m", 512, True): 223_266_816,
    ("sd35m", 1024, False): 7_024_305_104,
    ("sd35m", 1024, True): 762_783_744,
    ("sd35l", 512, False): 5_146_128_960,
    ("sd35l", 512, True): 446_838_784,
    ("sd35l", 1024, False): 16_762_270_272,
    ("sd35l", 1024, True): 1_515_805_696,
    ("flux", 512, False): 10_517_180_416,
    ("flux", 512, True): 825_063_424,
    ("flux", 1024, False): 31_368_568_832,
    ("flux", 1024, True): 2_769_784_832,
}


@pytest.mark.parametrize(("model", "side", "checkpointed"), sorted(MEASURED))
def test_the_estimate_covers_the_measured_activations_within_15_percent(model, side, checkpointed):
    family, params = PARAMS[model]
    estimate = activation_bytes(
        family=family,
        batch_size=1,
        max_bucket=(side, side),
        gradient_checkpointing=checkpointed,
        mixed="bf16",
        denoiser_params=params,
        t5_tokens=TEXT[family] - family_spec(family).token_activation.clip_tokens,
    )
    measured = MEASURED[(model, side, checkpointed)]
    assert measured <= estimate <= 1.15 * measured, estimate / measured


def test_tokens_are_patches_plus_text_and_the_nearest_model_decides():
    sd3 = family_spec("sd3").token_activation
    base = dict(
        batch_size=2, max_bucket=(1024, 768), gradient_checkpointing=True, mixed="bf16", t5_tokens=154
    )
    tokens = 64 * 48 + 77 + 154  # (1024 / 16) x (768 / 16) patches, CLIP, T5
    medium = activation_bytes(family="sd3", denoiser_params=SD35M, **base)
    assert medium == 2 * tokens * sd3.per_token(SD35M, True)
    sd3_medium = activation_bytes(family="sd3", denoiser_params=2_028_328_000, **base)  # SD3 medium (2024)
    large = activation_bytes(family="sd3", denoiser_params=SD35L, **base)
    assert sd3_medium == medium and large > 1.8 * medium
    flux = activation_bytes(family="flux", denoiser_params=FLUX, **{**base, "t5_tokens": 512})
    assert flux == 2 * (64 * 48 + 512) * family_spec("flux").token_activation.per_token(FLUX, True)
    fp32 = activation_bytes(family="flux", denoiser_params=FLUX, **{**base, "t5_tokens": 512, "mixed": "no"})
    assert fp32 == int(flux * 1.7)


def test_the_plan_counts_the_t5_length(tmp_path):
    tables = '[adapter]\nkind = "lora"\nrank = 4\n[precision]\ngradient_checkpointing = true\n'
    short = plan_hub_spec(
        tmp_path, "t5_max_length = 77\n" + tables, "stabilityai/stable-diffusion-3.5-medium"
    )
    long = plan_hub_spec(
        tmp_path, "t5_max_length = 256\n" + tables, "stabilityai/stable-diffusion-3.5-medium"
    )
    per_token = family_spec("sd3").token_activation.per_token(SD35M, True)
    assert long.plan.memory.activations - short.plan.memory.activations == (256 - 77) * per_token
    assert any("per token" in note for note in long.plan.memory.notes)


def test_the_bench_extrapolates_each_block_kind_to_the_full_count():
    from tests.bench import bench_flow_activations as bench

    plain = dict(model="flux", checkpointing=False, peak=1000, saved_per_block={"double": 10, "single": 7})
    assert bench.extrapolate({**plain, "inputs_per_block": {}}) == 1000 + 18 * 10 + 37 * 7
    ckpt = dict(
        model="sd35m", checkpointing=True, peak=500, inputs_per_block={"dual": 3, "plain": 3, "last": 3}
    )
    assert bench.extrapolate({**ckpt, "saved_per_block": {}}) == 500 + 12 * 3 + 9 * 3  # 13 + 10 + 1 blocks
    kinds = [bench.block_kind("sd35m", f"transformer_blocks.{i}") for i in range(3)]
    assert (
        kinds == ["dual", "plain", "last"]
        and bench.block_kind("flux", "single_transformer_blocks.0") == "single"
    )
