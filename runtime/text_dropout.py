"""Per-text-encoder conditioning dropout at run time (plan.loss.text_encoder_dropout): each sample's draw
(dbspec/plan/text_dropout.py), then the family's runtime zeroes those encoders' parts of the text
conditioning. Applied to the embeddings a step uses, cached or encoded now, so text caches stay valid."""

from __future__ import annotations

from collections.abc import Sequence

from dbspec.plan.text_dropout import dropped_encoders
from dbspec.runtime.data import Sample
from dbspec.runtime.families import family_runtime


def drop_text(parts, batch: Sequence[Sample], text: dict) -> dict:
    """`text` with the batch's dropped encoder outputs zeroed; `text` itself when off or nothing dropped."""
    rates = parts.plan.loss.text_encoder_dropout
    if not rates:
        return text
    dropped = [dropped_encoders(rates, s.aug_seed) for s in batch]
    if not any(any(row) for row in dropped):
        return text
    family = family_runtime(parts.plan.model.family)
    return family.drop_text_encoders(text, dropped, parts.text_encoders, parts.tokenizers)
