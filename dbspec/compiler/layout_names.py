"""DBS607: adapter targets and block patterns that name no layer of the public model.

The runtime matches `adapter.denoiser_targets` / `conv_targets` by peft's rule (the layer's path is the target
or ends with `.<target>`) and `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` patterns and `exclude`
by `re.search` over the layers' paths (runtime/blocks.py): one that names no layer matches nothing, silently.
The check is against the family's public models (dbspec/denoiser_layout.py; a public hub model's own layout),
not the loaded one: the tiny twins in tests are smaller, and the runtime never fails on it."""

from __future__ import annotations

import re
from collections.abc import Iterable

from dbspec.compiler.context import Context
from dbspec.denoiser_layout import (
    PublicLayout,
    block_ranges,
    denoiser_paths,
    text_encoder_paths,
)
from dbspec.families import FamilySpec, family_spec
from dbspec.plan.model import ModelPlan
from dbspec.spec.model import LowRankAdapter
from dbspec.util.targets import suffixes

_CODE = "DBS607"


def check_layout_names(ctx: Context, model: ModelPlan | None) -> None:
    """DBS607 per given target list with targets that name no layer, and per pattern that matches none."""
    adapter = ctx.spec.adapter
    if model is None or not isinstance(adapter, LowRankAdapter):
        return
    family = family_spec(model.family)
    layouts = family.layouts_of(model.base)
    if not layouts:
        return
    denoisers = [suffixes(denoiser_paths(layout.shape)) for layout in layouts]
    texts = _text_paths(family)
    where = _where(family, layouts)
    for key in ("denoiser_targets", "conv_targets"):
        given = getattr(adapter, key, ())
        if not ctx.raw.given(("adapter", key)) or not given:
            continue
        missing = [t for t in given if not any(t in names for names in denoisers)]
        if missing:
            shown = ", ".join(f'"{t}"' for t in missing)
            ctx.report(
                _CODE,
                "warning",
                f"adapter.{key} {shown} {'names' if len(missing) == 1 else 'name'} no layer of {where}: "
                "peft adapts a layer whose path is a target or ends with `.<target>`, so "
                f"{'it matches' if len(missing) == 1 else 'they match'} nothing",
                ("adapter", key),
                help="name layers the model has (block indices within its range), or remove these",
            )
    for table, searched in (
        ("blocks", denoisers),
        ("text_encoder_blocks", [texts]),
        ("exclude", [*denoisers, texts]),
    ):
        for i, pattern in enumerate(_patterns(getattr(adapter, table, ()))):
            if pattern is None or any(_searches(pattern, paths) for paths in searched):
                continue
            path = ("adapter", table, i) if table == "exclude" else ("adapter", table, i, "pattern")
            inside = _text_where(family) if table == "text_encoder_blocks" else where
            key = f"adapter.{table}[{i}]" + ("" if table == "exclude" else ".pattern")
            ctx.report(
                _CODE,
                "warning",
                f'{key} "{pattern}" matches no layer of {inside}: the run searches it (re.search) in each '
                "adapted layer's path, so it acts nowhere",
                path,
                help="match the model's paths (block indices within its range), or remove the entry",
            )


def _patterns(entries: Iterable) -> list[str | None]:
    """Each entry's pattern (`exclude` holds strings); None for one `re` cannot compile (its own check)."""
    out: list[str | None] = []
    for entry in entries:
        pattern = entry if isinstance(entry, str) else entry.pattern
        try:
            re.compile(pattern)
        except re.error:
            pattern = None
        out.append(pattern)
    return out


def _searches(pattern: str, paths: frozenset[str]) -> bool:
    return any(re.search(pattern, p) for p in paths)


def _text_paths(family: FamilySpec) -> frozenset[str]:
    """Every text encoder's layers as runtime/blocks.py searches them: `<component>.<path>`."""
    return frozenset(
        f"{e.component}.{p}"
        for e in family.text_encoders
        for p in text_encoder_paths(e.model_class, e.layers)
    )


def _where(family: FamilySpec, layouts: tuple[PublicLayout, ...]) -> str:
    """The model(s) checked against and their block ranges."""
    if len(layouts) == 1:
        return f"{layouts[0].title}'s {family.denoiser} ({block_ranges(layouts[0].shape)})"
    each = "; ".join(f"{layout.title}: {block_ranges(layout.shape)}" for layout in layouts)
    return f"any public {family.title} {family.denoiser} ({each})"


def _text_where(family: FamilySpec) -> str:
    layers = ", ".join(
        f"{e.component} {'encoder.block' if e.model_class.startswith('T5') else 'text_model.encoder.layers'} "
        f"0-{e.layers - 1}"
        for e in family.text_encoders
    )
    return f"{family.title}'s text encoders ({layers}; paths searched as `<component>.<path>`)"
