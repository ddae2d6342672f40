"""Each sample's caption at a step: the plan's caption processing (kohya's, dbspec/plan/captions.py) drawn
from a generator seeded by the sample, so a resumed run trains on the very captions an
uninterrupted one would."""

from __future__ import annotations

from collections.abc import Sequence

from dbspec.plan.captions import draw_caption, sample_generator
from dbspec.plan.model import Plan
from dbspec.runtime.data import Sample


def step_captions(plan: Plan, batch: Sequence[Sample], *, step: int, epoch: int) -> list[tuple[str, str]]:
    """(caption, text-cache key) per sample at optimizer step `step` (0-based) in epoch `epoch` (1-based).

    The key is the image's own (a caption that never changes), the empty caption's (dropped), or "" (a caption
    drawn anew: it must be encoded now).
    """
    out = []
    for s in batch:
        p = plan.datasets[s.dataset].caption_processing
        text, dropped = draw_caption(s.img.caption, p, sample_generator(s.aug_seed), step=step, epoch=epoch)
        out.append((text, p.empty_text_key if dropped else s.img.text_key))
    return out
