"""A full / IA^3 adapter's [[adapter.blocks]] of another `kind` (LyCORIS preset entries of another algorithm
on an algo=full / ia3 network, issue 12): on SD 1.x/2.x, SDXL, and Flux / SD3 / Chroma with
fused_projections, with the options every kind builds alike; DBS578 for the full adapter's
rank dropout."""

from __future__ import annotations

import pytest
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

LOCON = "[[adapter.blocks]]\npattern = 'ff'\nkind = 'lora'\nrank = 4\nalpha = 1.0\n"


@pytest.mark.parametrize("kind", ["full", "ia3"])
def test_blocks_of_another_kind_on_the_unet_families(kind):
    body = DOG + STEPS + f'[adapter]\nkind = "{kind}"\n' + LOCON
    assert hits_of(rules.mixed_block_kinds, body) == []
    assert hits_of(rules.mixed_kinds_family, 'family = "sdxl"\n' + body) == []
    # Flux / SD3 / Chroma: one module of the block's kind per fused Linear, as kohya's network builds it
    assert hits_of(rules.mixed_kinds_family, 'family = "flux"\n' + body) == [
        ("DBS578", "error", ("adapter", "blocks", 0, "kind"))
    ]
    fused = body.replace(f'kind = "{kind}"\n', f'kind = "{kind}"\nfused_projections = true\n')
    for family in ("flux", "sd3", "chroma"):
        assert hits_of(rules.mixed_kinds_family, f'family = "{family}"\n' + fused) == []
    text = body.replace("[[adapter.blocks]]", "[[adapter.text_encoder_blocks]]")  # no fused layer there
    assert hits_of(rules.mixed_kinds_family, 'family = "flux"\n' + text) == []


def test_ia3_bypass_beside_other_kinds():
    """IA^3's bypass is LyCORIS's network bypass_mode, which its blocks' layers take too (issue 12); a full /
    IA^3 network's rank_dropout beside LoRA blocks passes too (test_convert_kohya_rank_dropout_kinds.py)."""
    body = DOG + STEPS + '[adapter]\nkind = "ia3"\nbypass = true\n' + LOCON
    assert hits_of(rules.mixed_block_kinds, body) == []


@pytest.mark.parametrize("kind", ["full", "ia3"])
def test_max_norm_without_blocks_it_scales_warns(kind):
    body = DOG + STEPS + f'[adapter]\nkind = "{kind}"\nmax_norm = 1.0\n'
    assert hits_of(rules.blocks_max_norm_scales_something, body) == [
        ("DBS610", "warning", ("adapter", "max_norm"))
    ]
    assert hits_of(rules.blocks_max_norm_scales_something, body + LOCON) == []


def test_glora_bypass_beside_dylora_blocks():
    """A GLoRA adapter's bypass reaches its DyLoRA blocks (issue 12; was DBS578): DyLoraModule's bypass
    forward, one block per layer (DBS549 for several: LyCORIS's crashes), no dropout read
    (tests/runtime/test_lycoris_glora_bypass_dylora_entries.py)."""
    dylora = "[[adapter.blocks]]\npattern = 'ff'\nkind = 'dylora'\nrank = 4\nalpha = 2.0\nunit = 4\n"
    body = DOG + STEPS + '[adapter]\nkind = "glora"\nbypass = true\ndropout = 0.2\n' + dylora
    assert hits_of(rules.mixed_block_kinds, body) == []
    assert hits_of(rules.dylora_bypass_runs, body) == []
    several = body.replace("unit = 4", "unit = 2")
    assert hits_of(rules.dylora_bypass_runs, several) == [
        ("DBS549", "error", ("adapter", "blocks", 0, "rank"))
    ]
