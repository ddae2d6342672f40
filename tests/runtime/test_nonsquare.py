"""A non-square resolution (`resolution_height`, kohya's `resolution = "W,H"`) trains: buckets off cut every
image to W x H, and the run resumes bit-exactly."""

from __future__ import annotations

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec


def test_a_non_square_resolution_trains_and_resumes_exactly(tmp_path):
    spec = write_spec(tmp_path, steps=4, dataset_extra="resolution_height = 96")
    spec.write_text(spec.read_text().replace("[buckets]\nstep = 16", '[buckets]\nmode = "square"\nstep = 16'))
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
    assert {img.bucket for img in plan.datasets[0].images} == {(64, 96)}
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
