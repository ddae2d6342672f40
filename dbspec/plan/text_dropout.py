"""Per-text-encoder conditioning dropout (plan.loss.text_encoder_dropout, kohya's SD3 `--clip_l_dropout_rate`,
`--clip_g_dropout_rate`, `--t5_dropout_rate`) as a pure function: which of a sample's encoder outputs are
zeroed. kohya draws `random.random() < rate` per sample, encoder by encoder in the family's order, and
draws nothing for a rate of 0; dbspec does the same from a generator seeded by the sample (the sampler draws
its seed from the run seed and the epoch), so a resumed run drops exactly what an uninterrupted one would and
the training noise stream is untouched. `runtime/text_dropout.py` zeroes what this says."""

from __future__ import annotations

import random
from collections.abc import Sequence


def dropout_generator(aug_seed: int) -> random.Random:
    """The generator of one sample's encoder draws (str seeds hash with sha512: stable across runs)."""
    return random.Random(f"dbspec-text-encoder-dropout:{aug_seed}")


def dropped_encoders(rates: Sequence[float], aug_seed: int) -> tuple[bool, ...]:
    """Per encoder, whether this sample's output of it is zeroed at its step."""
    rng = dropout_generator(aug_seed)
    return tuple(rate > 0 and rng.random() < rate for rate in rates)
