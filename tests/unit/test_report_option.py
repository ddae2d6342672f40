"""[logging] report: whether a run ends by writing report.html. The plan records it and says when it is
off; it never changes what a run trains, so a run may resume with it changed."""

from __future__ import annotations

from dbspec.plan.io import plan_from_json, plan_to_json, run_hash
from tests.runtime.runspec import compile_spec, summary_text, write_spec


def test_the_report_is_on_by_default_and_off_is_said_in_the_summary(tmp_path):
    spec = write_spec(tmp_path)
    on = compile_spec(spec, report=True)
    off = compile_spec(spec, ["logging.report=false"], report=True)
    assert on.logging.report is True and off.logging.report is False
    assert "no report.html" in summary_text(off) and "no report.html" not in summary_text(on)
    assert run_hash(on) == run_hash(off)  # trains alike: resuming with the report switched is allowed
    assert plan_from_json(plan_to_json(off)).logging.report is False
