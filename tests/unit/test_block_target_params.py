"""The plan's LoRA parameter count with block-indexed denoiser targets (`transformer_blocks.12.attn.to_q`,
what diffusers' SD3 `--lora_blocks` converts to): each named Linear's in + out per unit of rank on the public
model the family's per-target table counts (SD3.5 large for SD3, FLUX.1 dev), not the whole denoiser's
default count.

The expected counts are made here by hand from the models' configs: SD3.5 large's joint blocks are 2432 wide
(38 heads of 64), every attention projection 2432 -> 2432, and its last block (37) has no context output
projection (`attn.to_add_out`: context_pre_only); FLUX.1 dev's blocks are 3072 wide, a double block's
modulation 3072 -> 6 x 3072, a single block's proj_mlp 3072 -> 4 x 3072 and proj_out (4 + 1) x 3072 -> 3072.
"""

from __future__ import annotations

from dbspec.families import family_spec
from tests.unit.hubspecs import empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture

SD35_LARGE = "stabilityai/stable-diffusion-3.5-large"
FLUX = "black-forest-labs/FLUX.1-dev"
RANK = 4


def _denoiser_params(tmp_path, targets: list[str], base: str) -> int:
    listed = ", ".join(f'"{t}"' for t in targets)
    planned = plan_hub_spec(
        tmp_path, f'[adapter]\nkind = "lora"\nrank = {RANK}\ndenoiser_targets = [{listed}]\n', base
    )
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan.adapter.params["unet"]


def _lora_blocks(blocks: list[int]) -> list[str]:
    """What the converter writes for --lora_blocks with the script's default layers (the family's)."""
    return [f"transformer_blocks.{n}.{layer}" for n in blocks for layer in family_spec("sd3").lora_targets]


def test_sd3_lora_blocks_count_each_named_layer(tmp_path):
    w = 2432
    block_12 = 8 * (w + w)  # the 8 default attention projections
    block_37 = 7 * (w + w)  # the last block has no attn.to_add_out
    assert _denoiser_params(tmp_path, _lora_blocks([12, 37]), SD35_LARGE) == RANK * (block_12 + block_37)


def test_sd3_one_block_is_a_38th_of_the_default_targets_count(tmp_path):
    """A middle block's share of the per-suffix counts (each suffix 38 layers but to_add_out 37)."""
    table = family_spec("sd3").lora_params_per_target
    default = family_spec("sd3").lora_targets
    whole = sum(table[t] for t in default)
    one = _denoiser_params(tmp_path, _lora_blocks([5]), SD35_LARGE)
    assert one == RANK * (whole - table["attn.to_add_out"]) // 38 + RANK * table["attn.to_add_out"] // 37


def test_sd3_blocks_past_the_depth_add_nothing(tmp_path):
    """Block 40 of a 38-block model adapts nothing (DBS607 warns): the count is block 0's alone."""
    assert _denoiser_params(tmp_path, _lora_blocks([0, 40]), SD35_LARGE) == RANK * 8 * 4864


def test_flux_double_and_single_block_layers(tmp_path):
    w = 3072
    targets = [
        "transformer_blocks.0.norm1.linear",  # w -> 6w
        "single_transformer_blocks.5.proj_mlp",  # w -> 4w
        "single_transformer_blocks.5.proj_out",  # 5w -> w
    ]
    expected = (w + 6 * w) + (w + 4 * w) + (5 * w + w)
    assert _denoiser_params(tmp_path, targets, FLUX) == RANK * expected


def test_a_suffix_and_a_block_target_naming_one_layer_count_it_once(tmp_path):
    """peft adapts the union: `attn.to_q` names block 3's to_q already; block 3's to_k is one more."""
    table = family_spec("flux").lora_params_per_target
    targets = ["attn.to_q", "transformer_blocks.3.attn.to_q", "transformer_blocks.3.attn.to_k"]
    assert _denoiser_params(tmp_path, targets, FLUX) == RANK * (table["attn.to_q"] + 2 * 3072)
