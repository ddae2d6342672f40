"""DBS522 lets IA^3, Diag-OFT and BOFT layers in LyCORIS's bypass forward over the cast backend (kohya's
--fp8_base): the forward reads the layer's output, not its float weight (tests/runtime/
test_lycoris_bypass_fp8_base.py); their default forward, other backends and fused projections stay refused."""

from __future__ import annotations

import pytest
from test_rules import DOG, STEPS, hits_of

from dbspec.compiler import rules

CAST = '[precision]\nquantize_denoiser = "fp8"\nquantize_text_encoder = "fp8"\nquantize_backend = "cast"\n'
QUANTO = '[precision]\nquantize_denoiser = "fp8"\nquantize_backend = "quanto"\n'
BLOCK = '[[adapter.blocks]]\npattern = "ff"\nkind = "{kind}"\nrank = 1\nalpha = 1.0\n'
KINDS = ("ia3", "diag-oft", "boft")


def _adapter(kind: str, extra: str = "") -> str:
    body = f'[adapter]\nkind = "{kind}"\n' + extra
    if kind in ("diag-oft", "boft"):
        body += "block_size = 4\n"
    return body


@pytest.mark.parametrize("kind", KINDS)
def test_an_adapter_in_bypass_over_the_cast_base_passes(kind):
    assert hits_of(rules.lycoris_switches_fit, DOG + STEPS + _adapter(kind, "bypass = true\n") + CAST) == []
    refused = [
        ("DBS522", "error", ("precision", key)) for key in ("quantize_denoiser", "quantize_text_encoder")
    ]
    assert hits_of(rules.lycoris_switches_fit, DOG + STEPS + _adapter(kind) + CAST) == refused
    quanto = hits_of(rules.lycoris_switches_fit, DOG + STEPS + _adapter(kind, "bypass = true\n") + QUANTO)
    assert quanto == [("DBS522", "error", ("precision", "quantize_denoiser"))]


def test_an_own_block_turning_bypass_off_keeps_the_refusal():
    off = '[[adapter.blocks]]\npattern = "ff"\nrank = 1\nalpha = 1.0\nbypass = "off"\n'
    hits = hits_of(rules.lycoris_switches_fit, DOG + STEPS + _adapter("ia3", "bypass = true\n") + off + CAST)
    assert ("DBS522", "error", ("precision", "quantize_denoiser")) in hits


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_in_bypass_over_the_cast_base_pass(kind):
    lora = '[adapter]\nkind = "lora"\n'
    block = BLOCK.format(kind=kind)
    network = DOG + STEPS + lora + "bypass = true\n" + block + CAST
    assert hits_of(rules.block_kinds_quantized, network) == []
    own = DOG + STEPS + lora + block + 'bypass = "on"\n' + CAST
    assert hits_of(rules.block_kinds_quantized, own) == []
    default = hits_of(rules.block_kinds_quantized, DOG + STEPS + lora + block + CAST)
    assert default == [("DBS522", "error", ("adapter", "blocks", 0, "kind"))]
    quanto = hits_of(rules.block_kinds_quantized, DOG + STEPS + lora + "bypass = true\n" + block + QUANTO)
    assert quanto == [("DBS522", "error", ("adapter", "blocks", 0, "kind"))]
