"""kohya's caption processing (dbspec/plan/captions.py) against kohya's own outputs and the
properties it keeps.

kohya_captions.json holds outputs of sd-scripts' `BaseDataset.process_caption` itself, run outside this
repository on each case's caption and options with `random.seed(seed)` first; dbspec's function, given
`random.Random(seed)`, must return the same text: it makes the same draws in the same order.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import attrs
import pytest

from dbspec.plan.captions import draw_caption, fixed_caption, process_caption, sample_generator
from dbspec.plan.model import CaptionPlan

CASES = json.loads((Path(__file__).parent / "kohya_captions.json").read_text(encoding="utf-8"))["cases"]


def plan_of(options: dict, total_steps: int = 0) -> CaptionPlan:
    """kohya's subset options as a CaptionPlan, warm-up resolved as the compiler resolves it."""
    values = {k: v for k, v in options.items() if v is not None}
    warmup = values.get("token_warmup_step", 0)
    if 0 < warmup < 1:
        values["token_warmup_step"] = math.floor(warmup * total_steps)
    return CaptionPlan(**values)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['seed']}")
def test_same_text_as_kohya(case):
    p = plan_of(case["options"], case["total_steps"])
    got = process_caption(
        case["caption"], p, random.Random(case["seed"]), step=case["step"], epoch=case["epoch"]
    )
    assert got == case["expected"]


def test_the_cases_cover_every_option():
    seen = Counter(k for c in CASES for k, v in c["options"].items() if v)
    for field in attrs.fields(CaptionPlan):
        if field.name in ("varying_images", "varying_samples_per_epoch", "empty_text_key"):
            continue
        assert seen[field.name] or field.name == "caption_separator", field.name
    assert any(c["options"].get("caption_separator") == ";" for c in CASES)
    assert (
        sum(c["expected"] == "" and bool(c["caption"]) for c in CASES) >= 10
    )  # dropped captions are among them


TAGS = [f"tag{i}" for i in range(12)]
CAPTION = ", ".join(TAGS)


def draws(p: CaptionPlan, n: int = 2000, *, caption: str = CAPTION, step: int = 0, epoch: int = 1) -> list:
    return [draw_caption(caption, p, sample_generator(i), step=step, epoch=epoch) for i in range(n)]


def test_shuffle_keeps_the_first_tags_and_the_multiset():
    outs = draws(CaptionPlan(shuffle_caption=True, keep_tokens=3), 300)
    orders = set()
    for text, dropped in outs:
        tags = text.split(", ")
        assert not dropped and tags[:3] == TAGS[:3]
        assert sorted(tags) == sorted(TAGS)
        orders.add(tuple(tags))
    assert len(orders) > 250  # it really shuffles


def test_caption_dropout_rate_is_statistical():
    outs = draws(CaptionPlan(caption_dropout_rate=0.3))
    rate = sum(d for _, d in outs) / len(outs)
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(outs))
    assert all(t == "" for t, d in outs if d) and all(t == CAPTION for t, d in outs if not d)


def test_every_n_epochs_drops_whole_epochs():
    p = CaptionPlan(caption_dropout_every_n_epochs=3)
    for epoch in range(1, 10):
        assert all(d == (epoch % 3 == 0) for _, d in draws(p, 20, epoch=epoch))


def test_tag_dropout_rate_and_order():
    outs = draws(CaptionPlan(caption_tag_dropout_rate=0.25, keep_tokens=2))
    kept = 0
    for text, _ in outs:
        tags = text.split(", ")
        assert tags[:2] == TAGS[:2]
        rest = tags[2:]
        assert rest == [t for t in TAGS[2:] if t in rest]  # no shuffle: the order is kept
        kept += len(rest)
    share = kept / (len(outs) * 10)
    assert abs(share - 0.75) < 0.02


def test_wildcards_choose_from_the_braces():
    p = CaptionPlan(enable_wildcard=True)
    outs = Counter(t for t, _ in draws(p, 600, caption="a {red|green|blue} {{x}} ball"))
    assert set(outs) == {f"a {c} {{x}} ball" for c in ("red", "green", "blue")}
    assert min(outs.values()) > 150
    lines = Counter(t for t, _ in draws(p, 300, caption="one\ntwo\nthree"))
    assert set(lines) == {"one", "two", "three"}
    assert {t for t, _ in draws(CaptionPlan(), 5, caption="one\ntwo")} == {"one"}


def test_secondary_separator_is_joined_after_the_shuffle():
    p = CaptionPlan(shuffle_caption=True, secondary_separator="::")
    for text, _ in draws(p, 200, caption="long hair::braid, blue eyes, hat::red"):
        tags = text.split(", ")
        assert "long hair,braid" in tags and "hat,red" in tags  # moved as one tag, then re-separated


def test_keep_tokens_separator_fixes_head_and_tail():
    p = CaptionPlan(shuffle_caption=True, keep_tokens_separator="|||", caption_tag_dropout_rate=0.5)
    for text, _ in draws(p, 300, caption="a, b ||| c, d, e, f ||| g, h"):
        tags = text.split(", ")
        assert tags[:2] == ["a", "b"] and tags[-2:] == ["g", "h"]
        assert set(tags[2:-2]) <= {"c", "d", "e", "f"}
    # Without shuffling, dropout or warm-up the separator stays in the text, as in kohya.
    assert process_caption("a ||| b", CaptionPlan(keep_tokens_separator="|||"), random.Random(0)) == "a ||| b"


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 30])
def test_token_warmup_counts(step):
    p = CaptionPlan(token_warmup_step=10, token_warmup_min=2, keep_tokens=1)
    text = process_caption(CAPTION, p, random.Random(0), step=step)
    flexible = len(TAGS) - 1
    expected = flexible if step >= 10 else math.floor(step * (flexible - 2) / 10) + 2
    assert text.split(", ") == TAGS[: 1 + expected]


def test_fixed_caption():
    assert fixed_caption(CAPTION, CaptionPlan()) == CAPTION
    assert fixed_caption("a;b", CaptionPlan(secondary_separator=";")) == "a,b"
    assert fixed_caption("a, b", CaptionPlan(caption_dropout_rate=0.5)) == "a, b"  # dropout: cached + empty
    assert fixed_caption("ohwx dog", CaptionPlan(shuffle_caption=True)) == "ohwx dog"  # one tag: no change
    assert fixed_caption("ohwx, dog", CaptionPlan(shuffle_caption=True, keep_tokens=1)) == "ohwx, dog"
    assert fixed_caption("a, b", CaptionPlan(shuffle_caption=True)) is None
    assert fixed_caption("a, b", CaptionPlan(caption_tag_dropout_rate=0.1)) is None
    assert fixed_caption("a", CaptionPlan(token_warmup_step=5)) is None
    assert fixed_caption("a {b|c}", CaptionPlan(enable_wildcard=True)) is None
    assert fixed_caption("a {b}", CaptionPlan(enable_wildcard=True)) == "a b"
    assert fixed_caption("a\nb", CaptionPlan(enable_wildcard=True)) is None


def test_same_sample_same_caption():
    p = CaptionPlan(shuffle_caption=True, caption_dropout_rate=0.2, caption_tag_dropout_rate=0.2)
    assert draws(p, 50) == draws(p, 50)
