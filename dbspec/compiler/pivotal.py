"""Pivotal tuning settled (`[pivotal]`): the new tokens, the tokenizer entries each adds, their LR and stop
step, and which text encoders get them. The runtime's side is runtime/tokens_ti.py."""

from __future__ import annotations

from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.plan.model import ModelPlan, PivotalPlan, PivotalTokenPlan


def added_tokens(token: str, vectors: int) -> tuple[str, ...]:
    """The tokenizer entries of a token of `vectors` vectors: `tok`, `tok_1` .. (diffusers' naming)."""
    return (token, *(f"{token}_{i}" for i in range(1, vectors)))


def mentions_token(text: str, tokens) -> bool:
    """Whether `text` contains one of the new tokens (case-insensitive, so a cache is never used wrongly)."""
    low = text.lower()
    return any(t.lower() in low for t in tokens)


def plan_pivotal(ctx: Context, model: ModelPlan | None) -> PivotalPlan | None:
    p = ctx.spec.pivotal
    if not p.tokens or model is None:
        return None
    fam = family_spec(model.family)
    if not all(e.tokenizer_class.startswith("CLIP") for e in fam.text_encoders):
        ctx.report(
            "DBS344",
            "error",
            f"pivotal.tokens need CLIP text encoders only; the model is {model.family}",
            ("pivotal", "tokens"),
            help="remove [pivotal], or use an SD1, SD2 or SDXL base model",
        )
        return None
    return PivotalPlan(
        tokens=tuple(PivotalTokenPlan(token=t, added=added_tokens(t, p.vectors)) for t in p.tokens),
        vectors=p.vectors,
        init_word=p.init_word,
        lr=p.lr,
        stop_step=p.stop_step,
        encoders=tuple(fam.text_encoder_names),
        params=len(p.tokens) * p.vectors * fam.context_dim,
    )
