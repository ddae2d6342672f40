"""DBS618's hosts for an IA^3 block's input side (`on_input`, a LyCORIS map entry's train_on_input): blocks
of kind ia3 beside lora / loha / lokr / dylora / glora / full / tlora layers, and an ia3 adapter's own
blocks, those on Flux / SD3 / Chroma with fused_projections (one input-side scale per fused Linear, which
runtime/prepare.py own_input_side ties); tests/runtime/test_lycoris_ia3_entry_sides_networks.py checks them
against lycoris-lora 4.1.3."""

from __future__ import annotations

import pytest
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

BLOCK = '[[adapter.blocks]]\npattern = "ff"\n{kind}on_input = true\n'
MISPLACED = [("DBS618", "error", ("adapter", "blocks", 0, "on_input"))]


@pytest.mark.parametrize(
    ("adapter", "kind", "model", "expected"),
    [
        ('kind = "dylora"\nrank = 4\n', 'kind = "ia3"\nrank = 1\nalpha = 1.0\n', "", []),
        ('kind = "glora"\nrank = 4\n', 'kind = "ia3"\nrank = 1\nalpha = 1.0\n', "", []),
        ('kind = "full"\n', 'kind = "ia3"\nrank = 1\nalpha = 1.0\n', "", []),
        ('kind = "tlora"\nrank = 4\n', 'kind = "ia3"\nrank = 1\nalpha = 1.0\n', "", []),
        ('kind = "ia3"\n', "", "", []),
        ('kind = "ia3"\nfused_projections = true\n', "", 'family = "flux"\n', []),
        ('kind = "ia3"\n', "", 'family = "flux"\n', MISPLACED),  # its fused Linears' parts untied
        (
            'kind = "dylora"\nrank = 4\n',
            'kind = "lokr"\nrank = 1\nalpha = 1.0\n',
            "",
            MISPLACED,
        ),  # no IA^3 layers
        ('kind = "ia3"\n', 'kind = "lokr"\nrank = 1\nalpha = 1.0\n', "", MISPLACED),
    ],
)
def test_ia3_block_on_input_hosts(adapter, kind, model, expected):
    body = f"{model}[adapter]\n{adapter}{BLOCK.format(kind=kind)}{DOG}{STEPS}"  # `model`: [model]'s lines
    assert hits_of(rules.ia3_block_on_input, body) == expected
