"""Dataset groups at run time: batches of each group's size that never mix groups, varying batch sizes under
gradient accumulation, and an interrupted run that resumes to the same weights bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.data import BucketBatchSampler
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

GROUPS = """
[[datasets]]
name = "second"
path = "data/class-toy"
prompt = "a photo of ohwx toy"
resolution = 64
flip = true
group = "trio"

[[groups]]
name = "trio"
batch_size = 3

[checkpoints]
every = 0
"""
SET = ["schedule.accumulation=2", 'schedule.lr_schedule="cosine"', "schedule.warmup_steps=2"]


def _spec(tmp_path: Path, steps: int) -> Path:
    return write_spec(tmp_path, steps=steps, extra=GROUPS)


def test_batches_never_mix_groups_and_take_their_group_size(tmp_path):
    plan = compile_spec(_spec(tmp_path, 4), SET)
    assert [(g.name, g.batch_size) for g in plan.groups] == [("", 2), ("trio", 3)]
    sampler = BucketBatchSampler.from_plan(plan)
    group_of = {i: d.group for i, d in enumerate(plan.datasets)}
    size_of = {g.name: g.batch_size for g in plan.groups}
    seen_sizes: dict[str, set[int]] = {"": set(), "trio": set()}
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == plan.schedule.batches_per_epoch
        for batch in batches:
            groups = {group_of[s.dataset] for s in batch}
            assert len(groups) == 1 and len({s.img.bucket for s in batch}) == 1
            (group,) = groups
            assert 1 <= len(batch) <= size_of[group]
            seen_sizes[group].add(len(batch))
        # every sample of the epoch exactly once per repeat
        drawn = sorted((s.dataset, s.image) for b in batches for s in b)
        planned = sorted(
            (di, ii)
            for di, d in enumerate(plan.datasets)
            for ii, img in enumerate(d.images)
            for _ in range(img.repeats)
        )
        assert drawn == planned
    assert 3 in seen_sizes["trio"] and 2 in seen_sizes[""]


def test_sampler_state_resumes_mid_epoch_with_groups(tmp_path):
    plan = compile_spec(_spec(tmp_path, 4), SET)
    whole = BucketBatchSampler.from_plan(plan)
    stream = iter(whole)
    first = [next(stream) for _ in range(3)]
    state = whole.state_dict()
    rest = list(stream)
    resumed = BucketBatchSampler.from_plan(plan)
    resumed.load_state_dict(state)
    assert list(iter(resumed)) == rest and first + rest == whole.epoch_batches(0)


def _unet_file(folder: Path) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_two_groups_of_different_batch_sizes_train_and_resume_bit_exact(tmp_path):
    spec = _spec(tmp_path, 6)
    whole = execute(compile_spec(spec, [*SET, "output.dir=whole"]))
    plan = compile_spec(spec, [*SET, "output.dir=parts"])
    assert plan.schedule.batches_per_epoch == sum(g.batches_per_epoch for g in plan.groups)
    assert plan.schedule.steps_per_epoch < 6  # the run crosses an epoch boundary after the resume
    first = execute(plan, stop_after=3)
    assert first.status == "interrupted" and first.steps == 3
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 6
    assert first.losses + second.losses == whole.losses
    a, b = _unet_file(Path(whole.final)), _unet_file(Path(second.final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
