"""The memory estimate of the cast backend (kohya's fp8_base): 1 byte per stored weight, no scales; a U-Net is
cast whole, a text encoder keeps its embeddings in the held dtype."""

from __future__ import annotations

from dbspec.compiler.memory import UNQUANTIZED_SHARE, _weight_bytes
from dbspec.plan.model import ComponentPlan


def _component(name: str, params: int) -> ComponentPlan:
    return ComponentPlan(name=name, dtype="bf16", trainable="lora", quantized="fp8", params=params)


def test_a_cast_unet_counts_one_byte_per_parameter():
    notes: list[str] = []
    assert _weight_bytes(_component("unet", 1_000_000), notes, "cast", "sd1") == 1_000_000
    assert "cast" in notes[0]
    # quanto's fp8 counts scales and keeps norms and biases in bf16: more
    assert _weight_bytes(_component("unet", 1_000_000), [], "quanto", "sd1") > 1_000_000


def test_a_cast_text_encoder_keeps_its_embeddings_in_the_held_dtype():
    share = UNQUANTIZED_SHARE["text_encoder"]
    expected = int(1_000_000 * ((1 - share) * 1 + share * 2))
    assert _weight_bytes(_component("text_encoder", 1_000_000), [], "cast", "sd1") == expected
