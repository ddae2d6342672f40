"""Dataset groups ([[groups]], kohya's [[datasets]]): per-group batch size, buckets and class balancing.

Expected numbers are worked out by hand in each test from kohya's rules (kohya.md §1, §4, §5): class images
balance against their own group's instance samples; per bucket ceil(samples / the group's batch size) batches;
the epoch concatenates every group's batches.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_compile import codes, compile_in, image, planned_ok, write_spec


def _folder(root: Path, name: str, sizes: list[tuple[int, int]]) -> str:
    for i, size in enumerate(sizes):
        image(root / name / f"{i}.png", size)
    return name


def _groups_spec(tmp_path: Path, groups: str, *datasets: dict, **tables) -> Path:
    path = write_spec(tmp_path, *datasets, **tables)
    path.write_text(path.read_text() + groups)
    return path


TWO_GROUPS = """
[[groups]]
name = "wide"
batch_size = 3

[[groups]]
name = "close"
batch_size = 1
bucket_step = 8
"""


def _two_group_datasets(tmp_path: Path) -> tuple[dict, ...]:
    return (
        {"name": "a", "path": _folder(tmp_path, "a", [(64, 64)] * 3), "repeats": 2, "group": "wide"},
        {
            "name": "a_reg",
            "role": "class",
            "path": _folder(tmp_path, "a_reg", [(64, 64)] * 4),
            "prompt": "a toy",
            "group": "wide",
        },
        {"name": "b", "path": _folder(tmp_path, "b", [(64, 64)]), "group": "close"},
        {
            "name": "b_reg",
            "role": "class",
            "path": _folder(tmp_path, "b_reg", [(64, 64)] * 2),
            "prompt": "a toy",
            "group": "close",
        },
        {"name": "c", "path": _folder(tmp_path, "c", [(64, 64)] * 5)},
    )


def test_each_group_balances_its_class_images_against_its_own_instance_images(tmp_path):
    _groups_spec(tmp_path, TWO_GROUPS, *_two_group_datasets(tmp_path))
    plan = planned_ok(tmp_path)
    repeats = {d.name: [img.repeats for img in d.images] for d in plan.datasets}
    # wide: 3 images x 2 = 6 instance samples; 4 reg images once each = 4, then +1 on the first two = 6
    assert repeats["a_reg"] == [2, 2, 1, 1]
    # close: 1 instance sample; the first reg image reaches it, the second is never used
    assert repeats["b_reg"] == [1, 0]
    by_name = {g.name: g for g in plan.groups}
    assert [g.name for g in plan.groups] == ["", "wide", "close"]  # the default group first
    assert by_name[""].datasets == ("c",) and by_name[""].batch_size == plan.schedule.batch_size == 1
    assert (by_name["wide"].instance_samples, by_name["wide"].class_samples) == (6, 6)
    assert (by_name["close"].instance_samples, by_name["close"].class_samples) == (1, 1)
    # one 64x64 bucket per group: default 5 / 1 = 5 batches, wide 12 / 3 = 4, close 2 / 1 = 2
    assert [g.batches_per_epoch for g in plan.groups] == [5, 4, 2]
    assert plan.schedule.batches_per_epoch == plan.schedule.steps_per_epoch == 11
    assert {(b.group, b.size) for b in plan.buckets} == {(g, (64, 64)) for g in ("", "wide", "close")}


def test_one_pool_would_balance_differently(tmp_path):
    """The same datasets without groups: the class images balance against all 12 instance samples."""
    datasets = [{k: v for k, v in d.items() if k != "group"} for d in _two_group_datasets(tmp_path)]
    write_spec(tmp_path, *datasets)
    plan = planned_ok(tmp_path)
    assert plan.groups == () and all(d.group == "" for d in plan.datasets)
    assert plan.schedule.class_samples_per_epoch == 12  # 6 reg images: 6, then +1 each = 12


def test_group_bucket_keys_take_the_buckets_table_for_keys_not_written(tmp_path):
    sizes = [(144, 112)]  # aspect 1.29: step 16 buckets near it are 80x48 (1.67) and 64x64; step 8 has 72x56
    datasets = (
        {"name": "a", "path": _folder(tmp_path, "a", sizes), "group": "wide"},
        {"name": "b", "path": _folder(tmp_path, "b", sizes), "group": "close"},
    )
    _groups_spec(tmp_path, TWO_GROUPS, *datasets)
    plan = planned_ok(tmp_path)
    by_name = {g.name: g for g in plan.groups}
    assert by_name["wide"].bucket_step == 16  # [buckets] step = 16 (written in the spec)
    assert by_name["close"].bucket_step == 8
    buckets = {d.name: [img.bucket for img in d.images] for d in plan.datasets}
    assert buckets == {"a": [(64, 64)], "b": [(72, 56)]}


def test_group_batch_size_zero_takes_the_schedule_batch_size(tmp_path):
    groups = '\n[[groups]]\nname = "g"\nbucket_mode = "square"\n'
    _groups_spec(
        tmp_path,
        groups,
        {"path": _folder(tmp_path, "a", [(64, 64)] * 4), "group": "g"},
        schedule={"batch_size": 2},
    )
    plan = planned_ok(tmp_path)
    assert [(g.name, g.batch_size, g.bucket_mode, g.batches_per_epoch) for g in plan.groups] == [
        ("g", 2, "square", 2)
    ]


def test_group_rules(tmp_path):
    groups = """
[[groups]]
name = "a"
batch_size = 2
bucket_min_size = 512
bucket_max_size = 256

[[groups]]
name = "a"
bucket_step = 12

[[groups]]
name = "unused"
bucket_no_upscale = true
bucket_max_size = 256
"""
    _groups_spec(tmp_path, groups, {"path": _folder(tmp_path, "x", [(64, 64)]), "group": "nope"})
    planned = compile_in(tmp_path)
    found = {(d.code, d.path, d.severity) for d in planned.diagnostics}
    assert ("DBS250", "datasets[0].group", "error") in found
    assert ("DBS251", "groups[1].name", "error") in found
    assert ("DBS252", "groups[2].name", "warning") in found
    assert ("DBS253", "groups[0].bucket_min_size", "error") in found
    assert ("DBS253", "groups[1].bucket_step", "error") in found
    assert ("DBS253", "groups[2].bucket_no_upscale", "warning") in found
    message = next(d.message for d in planned.diagnostics if d.code == "DBS250")
    assert "`nope`" in message and "`a`" in message and "`unused`" in message


def test_short_bucket_warning_names_the_group_batch_size(tmp_path):
    groups = '\n[[groups]]\nname = "g"\nbatch_size = 4\n'
    _groups_spec(tmp_path, groups, {"path": _folder(tmp_path, "a", [(64, 64)] * 3), "group": "g"})
    planned = compile_in(tmp_path)
    short = [d for d in planned.diagnostics if d.code == "DBS333"]
    assert len(short) == 1 and "group `g`" in short[0].message and "batch_size 4" in short[0].message
    assert short[0].path == "groups[0].batch_size"
    assert "DBS333" in codes(planned, "warning")


def test_plan_summary_shows_the_groups_and_their_batch_sizes(tmp_path):
    import io

    from rich.console import Console

    from dbspec.plan.summary import render_summary

    _groups_spec(tmp_path, TWO_GROUPS, *_two_group_datasets(tmp_path))
    console = Console(file=io.StringIO(), width=200)
    render_summary(planned_ok(tmp_path), console)
    text = console.file.getvalue()
    assert "Dataset groups" in text and "a, a_reg" in text and "(default)" in text
    assert "1 (default), 3 (wide), 1 (close) x 1 accumulation" in text
