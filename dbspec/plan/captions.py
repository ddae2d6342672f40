"""kohya's caption processing (sd-scripts `BaseDataset.process_caption`) as pure functions of a CaptionPlan.

The order is kohya's, and so is every random draw, in the same order, from the generator passed in:

1. whole-caption dropout: one draw when `caption_dropout_rate > 0` (dropped when it is below the rate), or
   every caption of an epoch divisible by `caption_dropout_every_n_epochs` (epochs counted from 1); a dropped
   caption is "" and nothing else happens;
2. wildcards (`enable_wildcard`): one line of a multi-line caption is chosen, then each `{a|b|c}` is replaced
   by one choice, left to right (`{{` and `}}` stand for literal braces); without wildcards only the first
   line is used;
3. when shuffling, tag dropout or token warm-up is on, the caption is cut into tags at `caption_separator`:
   with `keep_tokens_separator` present, the part before it (and after a second one) stays fixed and the
   middle part is flexible, empty tags dropped; otherwise the first `keep_tokens` tags stay fixed (empty tags
   kept). Token warm-up keeps the first tags of the flexible part; then they are shuffled; then each is
   dropped with `caption_tag_dropout_rate` (one draw per tag); the tags are joined with ", ";
4. `secondary_separator` is replaced by `caption_separator`.

`runtime` calls `draw_caption` per sample and step; the compiler calls `fixed_caption` to know which captions
never change between steps (their text embeddings can be cached).
"""

from __future__ import annotations

import math
import random
import re

from dbspec.plan.model import CaptionPlan

_WILDCARD = re.compile(r"\{([^}]+)\}")


def draw_caption(
    caption: str, p: CaptionPlan, rng: random.Random, *, step: int, epoch: int
) -> tuple[str, bool]:
    """The caption a sample trains with at optimizer step `step` (0-based) of epoch `epoch` (1-based), and
    whether it was dropped (then it is "")."""
    if _dropped(p, rng, epoch):
        return "", True
    return _transform(caption, p, rng, step), False


def process_caption(
    caption: str, p: CaptionPlan, rng: random.Random, *, step: int = 0, epoch: int = 1
) -> str:
    return draw_caption(caption, p, rng, step=step, epoch=epoch)[0]


def tokenized(p: CaptionPlan) -> bool:
    """Whether captions are cut into tags and re-joined (kohya does it only for these three options)."""
    return p.shuffle_caption or p.token_warmup_step > 0 or p.caption_tag_dropout_rate > 0


def fixed_caption(caption: str, p: CaptionPlan) -> str | None:
    """The text a caption always becomes when it is not dropped, or None when it can change from step to step.

    A shuffle of one tag, wildcards with a single choice and no line to pick count as fixed; any draw that can
    change the text, or a token warm-up, does not.
    """
    if p.token_warmup_step > 0:
        return None
    try:
        return _transform(caption, p, _NoDraws(), 0)
    except _Varies:
        return None


class _Varies(Exception):
    pass


class _NoDraws(random.Random):
    """A generator that refuses every draw whose result could matter."""

    def random(self) -> float:
        raise _Varies

    def choice(self, seq):
        if len(seq) == 1:
            return seq[0]
        raise _Varies

    def shuffle(self, x, *args) -> None:
        if len(set(x)) > 1:
            raise _Varies


def _dropped(p: CaptionPlan, rng: random.Random, epoch: int) -> bool:
    by_chance = p.caption_dropout_rate > 0 and rng.random() < p.caption_dropout_rate
    every = p.caption_dropout_every_n_epochs
    return by_chance or (every > 0 and epoch % every == 0)


def _transform(caption: str, p: CaptionPlan, rng: random.Random, step: int) -> str:
    caption = _wildcards(caption, rng) if p.enable_wildcard else caption.split("\n")[0]
    if tokenized(p):
        head, flexible, tail = _cut(caption, p)
        flexible = _warmed_up(flexible, p, step)
        if p.shuffle_caption:
            rng.shuffle(flexible)
        if p.caption_tag_dropout_rate > 0:
            flexible = [tag for tag in flexible if rng.random() >= p.caption_tag_dropout_rate]
        caption = ", ".join(head + flexible + tail)
    if p.secondary_separator:
        caption = caption.replace(p.secondary_separator, p.caption_separator)
    return caption


def _wildcards(caption: str, rng: random.Random) -> str:
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    # Doubled braces are literal: park them under markers the caption does not contain, substitute, restore.
    left, right = "\u2985", "\u2986"
    while left in caption or right in caption:
        left, right = left + "\u2985", right + "\u2986"
    parked = caption.replace("{{", left).replace("}}", right)
    chosen = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), parked)
    return chosen.replace(left, "{").replace(right, "}")


def _cut(caption: str, p: CaptionPlan) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, flexible tags, fixed tail)."""
    sep, mark = p.caption_separator, p.keep_tokens_separator
    if mark and mark in caption:
        head, rest = caption.split(mark, 1)
        rest, tail = rest.split(mark, 1) if mark in rest else (rest, "")
        return _tags(head, sep), _tags(rest, sep), _tags(tail, sep)
    tags = [t.strip() for t in caption.strip().split(sep)]
    k = p.keep_tokens
    return (tags[:k], tags[k:], []) if k > 0 else ([], tags, [])


def _tags(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def _warmed_up(tags: list[str], p: CaptionPlan, step: int) -> list[str]:
    """The first tags only, growing linearly from `token_warmup_min` at step 0 to all at
    `token_warmup_step`."""
    steps = p.token_warmup_step
    if not steps or step >= steps:
        return tags
    count = math.floor(step * ((len(tags) - p.token_warmup_min) / steps)) + p.token_warmup_min
    return tags[:count]


def sample_generator(aug_seed: int) -> random.Random:
    """The generator of one sample's caption draws: a function of the sample's seed alone (the sampler draws
    it from the run seed and the epoch), so a resumed run draws exactly what an uninterrupted one would."""
    return random.Random(f"dbspec-caption:{aug_seed}")  # str seeds hash with sha512: stable across runs
