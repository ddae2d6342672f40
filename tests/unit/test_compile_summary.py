"""How many times the denoiser compiles under automatic dynamic shapes, as `dbspec plan` says it."""

from __future__ import annotations

from dbspec.plan.compiled import expected_compiles


def test_one_shape_compiles_once():
    assert expected_compiles({(2, 64, 64)}) == 1
    assert expected_compiles(set()) == 1


def test_each_kind_of_change_recompiles_once():
    assert expected_compiles({(2, 64, 64), (2, 48, 80), (2, 80, 48)}) == 2  # sizes become symbolic once
    assert expected_compiles({(4, 64, 64), (2, 64, 64), (3, 64, 64)}) == 2  # batch becomes symbolic once
    assert expected_compiles({(2, 64, 64), (1, 64, 64)}) == 2  # a batch of one is specialised: its own
    assert expected_compiles({(2, 64, 64), (1, 48, 80), (3, 80, 48)}) == 4


def test_output_preservation_counts_its_base_forwards(tmp_path):
    """The preserved rows' base forward (no grad, adapter off) compiles its own graphs, for sub-batches of 1
    up to the batch size."""
    from dbspec.plan.compiled import compile_summary, denoiser_shapes, preserved_shapes
    from dbspec.plan.model import TargetEnv
    from tests.runtime.runspec import compile_spec, write_spec

    gpu = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, description="test gpu")
    keep = '[[datasets]]\nname = "keep"\npath = "data/class-toy"\nprompt = "a toy"\nresolution = 64\n'
    extra = '[adapter]\nkind = "lora"\n[precision]\ncompile = true\n'
    plain = compile_spec(write_spec(tmp_path / "plain", extra=keep + extra), env=gpu)
    kept = compile_spec(
        write_spec(tmp_path / "kept", extra=keep + "preserve_output = true\n" + extra), env=gpu
    )
    assert preserved_shapes(plain) == set()
    assert denoiser_shapes(kept) == denoiser_shapes(plain)
    assert preserved_shapes(kept) == {(k, w, h) for b, w, h in denoiser_shapes(kept) for k in range(1, b + 1)}
    n = expected_compiles(denoiser_shapes(kept)) + expected_compiles(preserved_shapes(kept))
    assert f"up to {n} compiles" in compile_summary(kept) and "base forwards" in compile_summary(kept)
    assert "base forwards" not in compile_summary(plain)


def test_the_plan_summary_says_what_output_preservation_targets_and_costs(tmp_path):
    from dbspec.plan.summary import preserved_summary
    from tests.runtime.runspec import make_plan

    keep = '[[datasets]]\nname = "keep"\npath = "data/class-toy"\nprompt = "a toy"\nresolution = 64\n'
    plan = make_plan(tmp_path, extra=keep + 'preserve_output = true\n[adapter]\nkind = "lora"\n')
    kept = next(d for d in plan.datasets if d.name == "keep")
    total = sum(d.samples_per_epoch for d in plan.datasets)
    (line,) = preserved_summary(plan)
    assert line.startswith("output preservation: dataset `keep`: target = the base model's prediction")
    assert f"({kept.samples_per_epoch} of {total} per epoch" in line
    assert "target of keep: ε̂ of the base model (adapter off)" in plan.loss.formula
