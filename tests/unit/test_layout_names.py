"""DBS607: adapter targets and block patterns that name no layer of the family's public model (a public hub
model's own layout, else every public model of the family) warn, with the valid block ranges; ones that name
a layer do not. The layouts themselves are compared with the real classes in
tests/runtime/test_denoiser_layout.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbspec.denoiser_layout import SD3_MEDIUM, SD_UNET, denoiser_paths
from tests.unit.hubspecs import SD15, SDXL, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture

SD3_MEDIUM_ID = "stabilityai/stable-diffusion-3-medium-diffusers"
SD35_LARGE = "stabilityai/stable-diffusion-3.5-large"
SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
FLUX = "black-forest-labs/FLUX.1-dev"
CHROMA = "lodestones/Chroma1-HD"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
SD2 = "stabilityai/stable-diffusion-2-1"


def _warnings(tmp_path: Path, adapter: str, base: str) -> list:
    planned = plan_hub_spec(tmp_path, f'[adapter]\nkind = "lora"\n{adapter}\n', base)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    found = [d for d in planned.diagnostics if d.code == "DBS607"]
    # the plan carries them too (its warnings)
    assert len([w for w in planned.plan.warnings if "DBS607" in w]) == len(found)
    return found


def _targets(*names: str) -> str:
    return "denoiser_targets = [" + ", ".join(f'"{n}"' for n in names) + "]"


def _block(pattern: str, table: str = "blocks") -> str:
    return f"[[adapter.{table}]]\npattern = '{pattern}'\nrank = 4\nalpha = 4.0\n"


@pytest.mark.parametrize(
    ("base", "last", "past"),
    [
        (SD3_MEDIUM_ID, 23, 24),  # 24 joint blocks
        (SD35_MEDIUM, 23, 24),
        (SD35_LARGE, 37, 38),  # 38
    ],
)
def test_sd3_block_indexed_targets_past_the_model_depth_warn(tmp_path, base, last, past):
    """diffusers' --lora_blocks converts to `transformer_blocks.<n>.<layer>` targets."""
    inside = f"transformer_blocks.{last}.attn.to_q"
    assert _warnings(tmp_path, _targets(inside), base) == []
    found = _warnings(tmp_path, _targets(inside, f"transformer_blocks.{past}.attn.to_q"), base)
    assert len(found) == 1
    d = found[0]
    assert d.severity == "warning" and d.path == "adapter.denoiser_targets"
    assert f'"transformer_blocks.{past}.attn.to_q"' in d.message and f'"{inside}"' not in d.message
    assert f"transformer_blocks 0-{last}" in d.message


def test_a_local_sd3_model_is_checked_against_every_public_sd3_layout(tmp_path):
    """A block SD3.5 large has (30) but the mediums have not is fine when the model is not a known hub id;
    one no public model has warns, listing each model's range."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    tables = 'family = "sd3"\n[adapter]\nkind = "lora"\n'
    base = str(tmp_path / "m")
    ok = plan_hub_spec(tmp_path, tables + _targets("transformer_blocks.30.attn.to_q") + "\n", base)
    assert [d for d in ok.diagnostics if d.code == "DBS607"] == [], [d.message for d in ok.diagnostics]
    bad = plan_hub_spec(tmp_path, tables + _targets("transformer_blocks.38.attn.to_q") + "\n", base)
    (d,) = [d for d in bad.diagnostics if d.code == "DBS607"]
    for text in (
        "SD3.5 large: transformer_blocks 0-37",
        "SD3 medium: transformer_blocks 0-23",
        "attn2 in 0-12",
    ):
        assert text in d.message


def test_sd35_medium_attn2_exists_only_on_it(tmp_path):
    """SD3.5 medium's first 13 blocks have a second image attention; SD3.5 large has none."""
    assert _warnings(tmp_path, _targets("attn2.to_q"), SD35_MEDIUM) == []
    assert _warnings(tmp_path, _targets("transformer_blocks.12.attn2.to_q"), SD35_MEDIUM) == []
    assert len(_warnings(tmp_path, _targets("transformer_blocks.13.attn2.to_q"), SD35_MEDIUM)) == 1
    assert len(_warnings(tmp_path, _targets("attn2.to_q"), SD35_LARGE)) == 1


@pytest.mark.parametrize("base", [FLUX, CHROMA])
def test_flux_and_chroma_double_and_single_block_ranges(tmp_path, base):
    ok = _block(r"^transformer_blocks\.18\.") + _block(r"^single_transformer_blocks\.37\.")
    assert _warnings(tmp_path, ok, base) == []
    bad = _block(r"^transformer_blocks\.(0|19)\.") + _block(r"single_transformer_blocks\.38\.")
    (d,) = _warnings(tmp_path, bad, base)  # the first matches block 0
    assert d.path == "adapter.blocks[1].pattern"
    assert "transformer_blocks 0-18, single_transformer_blocks 0-37" in d.message


def test_flux_modulation_targets_are_not_chroma_layers(tmp_path):
    """Chroma's blocks have no modulation Linear (its approximator modulates them)."""
    assert _warnings(tmp_path, _targets("norm1.linear", "attn.to_q"), FLUX) == []
    (d,) = _warnings(tmp_path, _targets("norm1.linear", "attn.to_q"), CHROMA)
    assert '"norm1.linear"' in d.message and '"attn.to_q"' not in d.message


@pytest.mark.parametrize(
    ("base", "inside", "outside"),
    [
        (SD15, r"^down_blocks\.2\.attentions\.1\.", r"^down_blocks\.3\.attentions\."),  # down 3: no attention
        (SD2, r"^up_blocks\.3\.", r"^up_blocks\.4\."),
        (
            SDXL,
            r"^mid_block\.attentions\.0\.transformer_blocks\.9\.",
            r"^down_blocks\.1\.attentions\.0\.transformer_blocks\.2\.",
        ),  # fmt: skip
        (REFINER, r"^up_blocks\.2\.attentions\.2\.transformer_blocks\.3\.", r"transformer_blocks\.4\."),
    ],
)
def test_unet_block_patterns(tmp_path, base, inside, outside):
    """kohya's block_dims convert to patterns over the diffusers paths; SDXL's attentions hold 2 and 10
    transformer blocks, the refiner's 4."""
    assert _warnings(tmp_path, _block(inside), base) == []
    (d,) = _warnings(tmp_path, _block(inside) + _block(outside), base)
    assert d.path == "adapter.blocks[1].pattern" and "down_blocks 0-" in d.message


def test_sdxl_ranges_name_the_transformer_depths(tmp_path):
    (d,) = _warnings(tmp_path, _targets("transformer_blocks.10.attn1.to_q"), SDXL)
    assert "down.1: 2, down.2: 10, mid: 10, up.0: 10, up.1: 2" in d.message


def test_conv_targets_and_a_typo(tmp_path):
    adapter = 'conv_rank = 4\nconv_targets = ["conv1", "conv_2"]\n' + _targets("to_q", "to_qq")
    found = _warnings(tmp_path, adapter, SD15)
    assert sorted(d.path for d in found) == ["adapter.conv_targets", "adapter.denoiser_targets"]
    assert any('"conv_2"' in d.message for d in found) and any('"to_qq"' in d.message for d in found)


def test_text_encoder_block_patterns(tmp_path):
    """Searched in `<component>.<path>`: CLIP-L's 12 layers with `text_model.`, bigG's 32, T5-XXL's 24."""
    sdxl_ok = _block(r"^text_encoder_2\.text_model\.encoder\.layers\.31\.", "text_encoder_blocks")
    assert _warnings(tmp_path, sdxl_ok, SDXL) == []
    clip_l = _block(r"^text_encoder\.text_model\.encoder\.layers\.12\.", "text_encoder_blocks")
    (d,) = _warnings(tmp_path, clip_l, SDXL)
    assert d.path == "adapter.text_encoder_blocks[0].pattern"
    assert (
        "text_encoder text_model.encoder.layers 0-11, text_encoder_2 text_model.encoder.layers 0-31"
        in d.message
    )
    t5 = _block(r"^text_encoder_2\.encoder\.block\.23\.layer\.1\.DenseReluDense\.wo$", "text_encoder_blocks")
    assert _warnings(tmp_path, t5, FLUX) == []


def test_full_exclude_patterns(tmp_path):
    """A full adapter's `exclude` is searched in the denoiser's and the text encoders' paths."""
    planned = plan_hub_spec(
        tmp_path,
        '[adapter]\nkind = "full"\nexclude = ["^single_transformer_blocks\\\\.3\\\\.proj_out$", '
        '"^single_transformer_blocks\\\\.40\\\\."]\n',
        FLUX,
    )
    (d,) = [d for d in planned.diagnostics if d.code == "DBS607"]
    assert d.path == "adapter.exclude[1]"


def test_unset_targets_and_tiny_models_are_not_checked_against_their_own_layout(tmp_path):
    """The family's default targets always name layers; a built-in tiny model is checked against its
    family's public model (the tiny has fewer blocks: a pattern only the public model has is fine)."""
    assert _warnings(tmp_path, "rank = 4", SD3_MEDIUM_ID) == []
    tiny = plan_hub_spec(
        tmp_path,
        '[adapter]\nkind = "lora"\n' + _block(r"^down_blocks\.2\.attentions\.1\."),
        "builtin:tiny-sd1",
    )
    assert [d for d in tiny.diagnostics if d.code == "DBS607"] == []
    assert "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q" in denoiser_paths(SD_UNET)
    assert len([p for p in denoiser_paths(SD3_MEDIUM) if p.endswith(".attn.to_q")]) == 24
