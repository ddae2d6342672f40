"""What `precision.compile` costs, in words for `dbspec plan` (the decisions are `plan.precision.compile`)."""

from __future__ import annotations

from dbspec.plan.model import Plan


def denoiser_shapes(plan: Plan) -> set[tuple[int, int, int]]:
    """(batch, width, height) of every micro-batch the denoiser will see: each bucket's full batches and its
    last, smaller one (ceil(samples / batch) batches per bucket)."""
    batch_of = {g.name: g.batch_size for g in plan.groups}
    shapes = set()
    for b in plan.buckets:
        batch = batch_of.get(b.group, plan.schedule.batch_size)
        total = b.instance_samples + b.class_samples
        if total <= 0 or b.batches_per_epoch <= 0:
            continue
        last = total - (b.batches_per_epoch - 1) * batch
        shapes |= {(min(batch, total), *b.size), (last, *b.size)}
    return shapes


def preserved_shapes(plan: Plan) -> set[tuple[int, int, int]]:
    """(batch, width, height) of output preservation's base forwards (datasets[].preserve_output): the
    preserved rows of a micro-batch, any count from 1 to its size (an upper bound: the data order decides)."""
    if not any(d.preserve_output for d in plan.datasets):
        return set()
    return {(k, w, h) for batch, w, h in denoiser_shapes(plan) for k in range(1, batch + 1)}


def expected_compiles(shapes: set[tuple[int, int, int]]) -> int:
    """Compiles of the denoiser under automatic dynamic shapes (an upper bound; the order of batches decides):
    the first shape; one more when the bucket size changes (width and height become symbolic); one more when
    the batch size changes among sizes >= 2; one for batches of one (torch specialises size 1)."""
    if not shapes:
        return 1
    batches = {b for b, _, _ in shapes}
    sizes = {(w, h) for _, w, h in shapes}
    return (
        1 + (len(sizes) > 1) + (len({b for b in batches if b > 1}) > 1) + (1 in batches and len(batches) > 1)
    )


def compile_summary(plan: Plan) -> str:
    """One line: what compiles, with what, and the start-up it costs."""
    c = plan.precision.compile
    if c is None:
        return "off (eager)"
    dynamic = {None: "automatic dynamic shapes", True: "dynamic shapes", False: "static shapes"}[c.dynamic]
    shapes = denoiser_shapes(plan)
    sizes = len({(w, h) for _, w, h in shapes})
    # the base forwards run without gradients and with the adapter off: failed guards, so graphs of their own
    base = preserved_shapes(plan)
    n = expected_compiles(shapes) + (expected_compiles(base) if base else 0)
    again = f"; up to {n} compiles of the denoiser in all" if n > 1 else "; no recompile"
    if base:
        again += " (output preservation's no-grad base forwards, adapter off, compile their own)"
    return (
        f"{' + '.join(c.components)} with {c.backend} ({c.mode} mode, {dynamic}): the first step compiles "
        "(minutes for real-size models; inductor's disk cache makes a rerun of the same shapes faster), "
        f"{len(shapes)} micro-batch shape(s) in {sizes} bucket "
        f"size(s){again}; validation and evaluation run eager"
    )
