"""tests/bench/cuda_checks.py kept working between GPU rentals: its cases compile for a CUDA target, its
reduced CPU mode trains and resumes in-process, and its time boxes stop what hangs."""

from __future__ import annotations

import json
import sys
import time

import pytest

from dbspec.compiler.target import parse_target
from tests.bench import cuda_checks
from tests.runtime.runspec import compile_spec, write_spec

H200 = parse_target("cuda:141GB:9.0")


@pytest.mark.parametrize(
    "case", [c for cases in cuda_checks.PARTS.values() for c in cases], ids=lambda c: c["name"]
)
def test_every_case_compiles_for_a_cuda_gpu(tmp_path, case):
    """A spec the compiler refuses would only show on the rented machine, as a wasted case."""
    spec = write_spec(tmp_path, base=case["base"], steps=6, extra=case["extra"])
    plan = compile_spec(spec, [*case["overrides"], "output.dir=out"], env=H200)
    assert plan.precision.mixed in ("bf16", "fp16")


def test_reduced_mode_trains_resumes_and_skips_what_needs_cuda(tmp_path):
    data = cuda_checks.main(
        ["--reduced", "--in-process", "--parts", "tiny", "--out", str(tmp_path / "out")]
        + ["--work", str(tmp_path / "work"), "--cases", "full_mixed_bf16", "full_mixed_fp16"]
    )
    assert json.loads((tmp_path / "out" / "cuda_checks.json").read_text())["tiny"] == data["tiny"]
    cases = data["tiny"]["cases"]
    trained = cases["full_mixed_bf16"]
    assert trained["status"] == "passed" and trained["finite"] and len(trained["losses"]) == 2
    assert trained["resume"]["equal"] and trained["resume"]["losses_equal"], trained["resume"]
    assert cases["full_mixed_fp16"] == {"status": "skipped", "why": "needs CUDA", "wall_s": 0.0}
    assert "cuda_checks:" in (tmp_path / "out" / "cuda_checks.log").read_text()


def test_a_hanging_child_is_killed_at_its_time_box(tmp_path):
    started = time.time()
    got = cuda_checks.child([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, 1, {})
    assert got["timed_out"] and time.time() - started < 30


def test_a_hanging_case_raises_at_its_time_box():
    with pytest.raises(cuda_checks.CaseTimeout), cuda_checks.time_box(0.2):
        time.sleep(5)


def test_limit_items_set_a_parts_or_a_cases_time_box(monkeypatch):
    monkeypatch.setattr(cuda_checks, "LIMITS", {"tiny": 170})
    monkeypatch.setattr(cuda_checks, "CASE_LIMITS", {})
    cuda_checks.set_limits(["tiny=230", "lora_fp8_quanto=250.5"])
    assert cuda_checks.LIMITS == {"tiny": 230.0}
    assert cuda_checks.CASE_LIMITS == {"lora_fp8_quanto": 250.5}
