"""The adapter plan (LoRA, DoRA, LoHa, LoKr, convolutions): what the compiler settles, counts and shows.

Parameter counts are checked against counts made here from the models' architectures: a 3x3 convolution's
adapter has rank x (in x 9 + out) parameters (LoRA's down and up), LoHa twice LoRA's."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dbspec.frontend import plan_spec
from tests.unit.hubspecs import GPU, SD15, SDXL, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture
from dbspec.plan.io import plan_from_json, plan_to_json
from dbspec.plan.summary import adapter_rows


def _plan(tmp_path: Path, adapter: str, base: str = SD15):
    planned = plan_hub_spec(tmp_path, f"[adapter]\n{adapter}\n[optimizer]\nlr = 1e-4\n", base)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


def conv_params_per_rank(
    channels, layers_per_block: int, per_conv=lambda c_in, c_out: c_in * 9 + c_out
) -> int:
    """rank x (in x 9 + out) (or `per_conv`) over the 3x3 convolutions kohya's LoCon adapts in a
    UNet2DConditionModel: each ResNet's conv1 and conv2, each downsampler and upsampler."""
    total, widths = 0, []

    def resnet(c_in, c_out):
        return per_conv(c_in, c_out) + per_conv(c_out, c_out)

    c = channels[0]
    widths.append(c)  # conv_in's output feeds the first skip
    for i, out in enumerate(channels):
        for _ in range(layers_per_block):
            total += resnet(c, out)
            c = out
            widths.append(c)
        if i < len(channels) - 1:
            total += per_conv(c, c)  # downsampler
            widths.append(c)
    total += 2 * resnet(c, c)  # mid block
    for i, out in enumerate(reversed(channels)):
        for _ in range(layers_per_block + 1):
            total += resnet(c + widths.pop(), out)
            c = out
        if i < len(channels) - 1:
            total += per_conv(c, c)  # upsampler
    return total


def test_conv_counts_of_the_public_unets():
    assert conv_params_per_rank((320, 640, 1280, 1280), 2) == 544_000
    assert conv_params_per_rank((320, 640, 1280), 2) == 355_840


def test_loha_with_convolutions_counts_twice_loras_per_rank(tmp_path):
    lora = _plan(tmp_path, 'kind = "lora"\nrank = 8').adapter
    loha = _plan(tmp_path, 'kind = "loha"\nrank = 8\nconv_rank = 4\nconv_alpha = 2.0').adapter
    conv = conv_params_per_rank((320, 640, 1280, 1280), 2)
    assert loha.params["unet"] == 2 * lora.params["unet"] + 2 * 4 * conv
    assert (loha.kind, loha.conv_rank, loha.conv_alpha) == ("loha", 4, 2.0)
    assert loha.conv_targets == ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")


@pytest.mark.parametrize(
    ("base", "channels"), [(SD15, (320, 640, 1280, 1280)), (SDXL, (320, 640, 1280))], ids=["sd15", "sdxl"]
)
def test_locon_tucker_counts_lora_mid(tmp_path, base, channels):
    """LyCORIS LoCon's Tucker form: per 3x3 convolution a 1x1 lora_down (rank x in), a 3x3 lora_mid
    (rank x rank x 9) and a 1x1 lora_up (out x rank)."""
    rank = 12
    plan = _plan(tmp_path, f'kind = "lora"\nrank = 4\nconv_rank = {rank}\ntucker = true', base=base)
    plain = _plan(tmp_path, 'kind = "lora"\nrank = 4', base=base)
    extra = plan.adapter.params["unet"] - plain.adapter.params["unet"]
    assert extra == conv_params_per_rank(
        channels, 2, lambda c_in, c_out: rank * (c_in + c_out) + rank * rank * 9
    )
    assert plan.adapter.tucker and plan.adapter.kind == "lora"
    assert dict(adapter_rows(plan.adapter))["adapter"].startswith("lora with Tucker convolutions rank 4")


def test_lora_tucker_without_convolution_adapters_is_off_in_the_plan(tmp_path):
    planned = plan_hub_spec(
        tmp_path, '[adapter]\nkind = "lora"\ntucker = true\n[optimizer]\nlr = 1e-4\n', SD15
    )
    assert planned.plan is not None and planned.plan.adapter.tucker is False
    assert [d.code for d in planned.diagnostics] == ["DBS261"]
    loha = _plan(tmp_path, 'kind = "loha"\ntucker = true').adapter  # peft's LoHa: any k x k target
    assert loha.tucker is True


def test_sdxl_locon_counts_the_conv_layers_of_sdxl(tmp_path):
    plan = _plan(tmp_path, 'kind = "lora"\nrank = 4\nconv_rank = 2', base=SDXL)
    plain = _plan(tmp_path, 'kind = "lora"\nrank = 4', base=SDXL)
    extra = plan.adapter.params["unet"] - plain.adapter.params["unet"]
    assert extra == 2 * conv_params_per_rank((320, 640, 1280), 2)
    # the memory estimate counts them: fp32 adapter weights, their gradients and AdamW's two moments
    assert plan.memory.gradients - plain.memory.gradients == 4 * extra
    assert plan.memory.optimizer - plain.memory.optimizer == 8 * extra


def test_lokr_and_dora_reach_the_plan_and_its_json(tmp_path):
    lokr = _plan(tmp_path, 'kind = "lokr"\nrank = 4\nfactor = 8\ndecompose_both = true\nrank_dropout = 0.1')
    a = lokr.adapter
    assert (a.kind, a.factor, a.decompose_both, a.rank_dropout, a.dora) == ("lokr", 8, True, 0.1, False)
    lora = _plan(tmp_path, 'kind = "lora"\nrank = 4').adapter
    assert 0 < a.params["unet"] <= lora.params["unet"]  # LoKr's count is bounded by LoRA's at the same rank
    dora = _plan(tmp_path, 'kind = "lora"\nrank = 4\ndora = true')
    assert dora.adapter.dora and dora.adapter.conv_targets == ()
    assert plan_from_json(plan_to_json(dora)).adapter == dora.adapter


def test_summary_shows_kind_targets_and_counts(tmp_path):
    a = _plan(tmp_path, 'kind = "lokr"\nrank = 4\nconv_rank = 2\ndenoiser_targets = ["to_q"]').adapter
    rows = dict(adapter_rows(a))
    assert rows["adapter"].startswith("lokr (factor -1) rank 4")
    assert rows["  targets"] == "to_q"
    assert rows["  conv targets"].endswith("(rank 2, alpha 2)")
    assert rows["  unet params"] == f"{a.params['unet']:,} (estimate)"
    assert dict(adapter_rows(_plan(tmp_path, 'kind = "none"').adapter)) == {"adapter": "none"}


def test_lokr_full_matrix_recipe_stays_a_small_share_of_the_unet(tmp_path):
    """LyCORIS's rank-100000 LoKr trains both Kronecker factors in full: at most 1/factor^2 of each layer."""
    plan = _plan(tmp_path, 'kind = "lokr"\nrank = 100000\nfactor = 16\nconv_rank = 100000')
    unet = next(c.params for c in plan.precision.components if c.name == "unet")
    assert 0 < plan.adapter.params["unet"] <= unet / 256
    assert plan.memory.fits


def test_lokr_bound_counts_each_blocks_factor_and_full_matrix(tmp_path):
    """The LoKr bound (1 / split^2 of a component) takes the smallest split among the adapter's factor and
    the blocks' own (a LyCORIS map entry's factor): a U-Net block at factor 4 bounds the U-Net by 1/16, a
    text-encoder block at 2 the text encoder by 1/4, each table counting for its own component; a block's
    full_matrix counts the full factors whatever the rank (issue 12)."""
    base = 'kind = "lokr"\nrank = 100000\nfactor = 16\n'
    te = 'text_encoder_targets = ["q_proj"]\n'
    train = "[train]\ntext_encoder = true\n"
    plain = _plan(tmp_path, base + te + train)
    blocks = _plan(
        tmp_path,
        base
        + te
        + '[[adapter.blocks]]\npattern = "attn1"\nrank = 8\nalpha = 8.0\nfactor = 4\n'
        + '[[adapter.blocks]]\npattern = "attn2"\nrank = 8\nalpha = 8.0\nfactor = 32\n'
        + '[[adapter.text_encoder_blocks]]\npattern = "layers\\\\.0\\\\."\nrank = 8\nalpha = 8.0\n'
        + "factor = 2\n"
        + train,
    )
    sizes = {c.name: c.params for c in blocks.precision.components}
    assert plain.adapter.params == {
        "unet": int(sizes["unet"] / 256),
        "text_encoder": int(sizes["text_encoder"] / 256),
    }
    assert blocks.adapter.params == {
        "unet": int(sizes["unet"] / 16),
        "text_encoder": int(sizes["text_encoder"] / 4),
    }
    low = (
        'kind = "lokr"\nrank = 2\nfactor = 8\n[[adapter.blocks]]\npattern = "attn1"\nrank = 2\nalpha = 2.0\n'
    )
    full = _plan(tmp_path, low + 'full_matrix = "on"\n').adapter
    assert full.params["unet"] == int(sizes["unet"] / 64) > _plan(tmp_path, low).adapter.params["unet"]
    assert full.blocks[0].full_matrix == "on" and not full.full_matrix


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_a_version_1_file_of_every_kind_reads_unet_targets_forward_and_upgrades(tmp_path, kind):
    """spec_version 1 named the denoiser targets `unet_targets` for every adapter kind: the migration renames
    them in [adapter] whatever the kind, and `dbspec upgrade` rewrites the file to version 2's name."""
    from dbspec.frontend import check_spec
    from dbspec.spec.upgrade import upgrade_text

    (tmp_path / "img").mkdir()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(tmp_path / "img" / "a.png")
    text = (
        f'spec_version = 1\n[model]\nbase = "{SD15}"\n[adapter]\nkind = "{kind}"\nrank = 4\nconv_rank = 2\n'
        'unet_targets = ["to_q", "ff.net.2"]\n[optimizer]\nlr = 1e-4\n'
        '[[datasets]]\nname = "s"\npath = "img"\nprompt = "a photo of ohwx"\n[schedule]\nsteps = 10\n'
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    checked = check_spec(spec, "spec.toml")
    assert [d.code for d in checked.diagnostics] == ["DBS107"]
    assert "`adapter.unet_targets` -> `adapter.denoiser_targets` (line 8)" in checked.diagnostics[0].message
    assert checked.spec.adapter.kind == kind and checked.spec.adapter.denoiser_targets == ["to_q", "ff.net.2"]
    upgraded, problems = upgrade_text(text, "spec.toml")
    assert upgraded is not None and not problems
    assert 'denoiser_targets = ["to_q", "ff.net.2"]' in upgraded.text and "unet_targets" not in upgraded.text
    spec.write_text(upgraded.text)
    planned = plan_spec(spec, GPU, "spec.toml", [])
    assert planned.plan is not None and not planned.diagnostics
    assert planned.plan.adapter.denoiser_targets == ("to_q", "ff.net.2")


def test_lokr_full_matrix_and_scalar_are_settled_in_the_plan(tmp_path):
    """LyCORIS's full_matrix makes both LoKr factors full at any rank: the plan says so (decompose_both and
    the Tucker core it overrides off), counts the full factors whatever the rank, and shows both switches."""
    low = _plan(tmp_path, 'kind = "lokr"\nrank = 2\nfactor = 8')
    full = _plan(
        tmp_path,
        'kind = "lokr"\nrank = 2\nfactor = 8\nfull_matrix = true\ndecompose_both = true\nscalar = true\n'
        "conv_rank = 2\ntucker = true",
    )
    a = full.adapter
    assert (a.full_matrix, a.scalar, a.decompose_both, a.tucker, a.lokr_unit_scale) == (
        True,
        True,
        False,
        False,
        True,
    )
    assert not low.adapter.full_matrix and not low.adapter.scalar
    unet = next(c.params for c in full.precision.components if c.name == "unet")
    assert a.params["unet"] == int(unet / 64) > low.adapter.params["unet"]
    rows = dict(adapter_rows(a))
    assert "full_matrix" in rows["  full matrix"] and "use_scalar" in rows["  scalar"]
    assert "  scalar" not in dict(adapter_rows(low.adapter))


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_scalar_is_planned_for_every_kind_and_full_matrix_is_lokr_only(tmp_path, kind):
    plan = _plan(tmp_path, f'kind = "{kind}"\nrank = 4\nscalar = true')
    assert plan.adapter.scalar and not plan.adapter.full_matrix


def test_full_exclude_patterns_are_rank_0_blocks(tmp_path):
    """A full adapter's `exclude` (a LyCORIS full file lacking some targeted layers' modules): rank-0 blocks
    over the denoiser's and the text encoders' paths, which runtime/blocks.py leaves without a copy."""
    full = _plan(tmp_path, 'kind = "full"\nexclude = ["attn2\\\\.to_q$"]\n').adapter
    assert [(b.pattern, b.rank) for b in full.blocks] == [(r"attn2\.to_q$", 0)]
    assert full.text_encoder_blocks == full.blocks
    assert not _plan(tmp_path, 'kind = "full"\n').adapter.blocks


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
def test_oft_exclude_patterns_are_rank_0_blocks_ahead_of_its_blocks(tmp_path, kind):
    """Diag-OFT's / BOFT's `exclude` (a LyCORIS file lacking some targeted layers' modules): rank-0 blocks
    ahead of the adapter's own blocks (runtime/blocks.py takes the first match and leaves a rank-0 layer
    without a rotation)."""
    spec = (
        f'kind = "{kind}"\nblock_size = 4\nexclude = ["attn2\\\\.to_q$"]\n'
        '[[adapter.blocks]]\npattern = "attn2"\nblock_size = 8\n'
    )
    a = _plan(tmp_path, spec).adapter
    assert [(b.pattern, b.rank) for b in a.blocks] == [(r"attn2\.to_q$", 0), ("attn2", 8)]
    assert [(b.pattern, b.rank) for b in a.text_encoder_blocks] == [(r"attn2\.to_q$", 0)]
    assert not _plan(tmp_path, f'kind = "{kind}"\n').adapter.blocks
    if kind == "diag-oft":  # kohya's form has no per-layer modules to leave out (DBS574)
        planned = plan_hub_spec(
            tmp_path,
            '[adapter]\nkind = "diag-oft"\nform = "kohya"\nblock_count = 4\nexclude = ["to_q$"]\n'
            "[optimizer]\nlr = 1e-4\n",
            SD15,
        )
        assert "DBS574" in {d.code for d in planned.diagnostics if d.severity == "error"}
