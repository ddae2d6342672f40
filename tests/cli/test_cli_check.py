"""`dbspec check` and `dbspec explain` through the CLI: exit codes, text and JSON output, --set, --strict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.diagnostics import Diagnostic, Span, render_all_text

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.toml"

VALID = """spec_version = 2

[model]
base = "runwayml/stable-diffusion-v1-5"

[[datasets]]
name = "dog"
path = "data/dog"
prompt = "a photo of ohwx dog"

[schedule]
steps = 800
"""
WARNS = VALID + "warmup_steps = 50\n"  # a warning (DBS211), no error
BROKEN = (
    VALID.replace(
        'prompt = "a photo of ohwx dog"', 'prompt = "a photo of ohwx dog"\nrepeats = "100"\nflip = 1'
    )
    + 'batch_size = 0\nwarmup_steps = 50\n\n[optimizer]\nlearning_rate = 1e-6\nkind = "adam"\n'
)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "spec.toml") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


# -- exit codes -------------------------------------------------------------------------------------


def test_a_valid_spec_exits_0_and_says_ok():
    result = invoke("check", str(QUICKSTART))
    assert result.exit_code == 0
    assert result.stdout == f"{QUICKSTART}: ok\n"


def test_errors_exit_1(write):
    result = invoke("check", write(BROKEN))
    assert result.exit_code == 1
    assert "error[DBS101]" in result.stdout
    assert result.stdout.rstrip().endswith("5 errors, 1 warning")


def test_warnings_alone_exit_0(write):
    spec = write(WARNS)
    result = invoke("check", spec)
    assert result.exit_code == 0
    assert "warning[DBS211]" in result.stdout
    assert result.stdout.endswith(f"1 warning\n{spec}: ok\n")


def test_warnings_with_strict_exit_1(write):
    result = invoke("check", write(WARNS), "--strict")
    assert result.exit_code == 1
    assert "warning[DBS211]" in result.stdout and ": ok" not in result.stdout


def test_strict_without_problems_exits_0():
    assert invoke("check", str(QUICKSTART), "--strict").exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--no-such-option", "x.toml"),
        ("check", "spec.toml", "--format", "xml"),
        ("check",),
        ("no-such-command",),
    ],
    ids=["unknown option", "bad format", "missing argument", "unknown command"],
)
def test_usage_errors_exit_2(args, write):
    result = invoke(*[write(VALID) if a == "spec.toml" else a for a in args])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_bad_format_names_the_choices(write):
    result = invoke("check", write(VALID), "--format", "xml")
    assert "--format must be text or json" in result.output


def test_a_missing_file_is_dbs002(tmp_path):
    missing = str(tmp_path / "nope.toml")
    result = invoke("check", missing)
    assert result.exit_code == 1
    assert f"error[DBS002]: spec file `{missing}` does not exist" in result.stdout
    records = json.loads(invoke("check", missing, "--format", "json").stdout)["diagnostics"]
    assert [(r["code"], r["span"]) for r in records] == [("DBS002", None)]


def test_a_folder_is_dbs002(tmp_path):
    result = invoke("check", str(tmp_path))
    assert result.exit_code == 1
    assert "error[DBS002]: cannot read spec file" in result.stdout


# -- JSON ----------------------------------------------------------------------------------------------


def _diagnostic(record: dict) -> Diagnostic:
    span = Span(**record["span"]) if record["span"] else None
    return Diagnostic(**{**record, "span": span, "notes": tuple(record["notes"])})


@pytest.mark.parametrize("overrides", [[], ["--set", "schedule.accumulation=0", "--set", "model.famly=sd1"]])
def test_json_records_are_the_text_output(write, overrides):
    spec = write(BROKEN)
    text = invoke("check", spec, *overrides)
    as_json = invoke("check", spec, *overrides, "--format", "json")
    assert as_json.exit_code == text.exit_code == 1
    payload = json.loads(as_json.stdout)
    records = payload["diagnostics"]
    assert {tuple(sorted(r)) for r in records} == {
        ("code", "help", "message", "notes", "path", "severity", "span")
    }
    sources = {spec: Path(spec).read_text(), "<--set>": "\n".join(overrides[1::2])}
    assert render_all_text([_diagnostic(r) for r in records], sources) + "\n" == text.stdout
    assert payload["errors"] == sum(r["severity"] == "error" for r in records)
    assert payload["warnings"] == sum(r["severity"] == "warning" for r in records)


def test_json_for_a_valid_spec_is_empty():
    result = invoke("check", str(QUICKSTART), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"diagnostics": [], "errors": 0, "warnings": 0}


# -- --set -------------------------------------------------------------------------------------------


def test_set_is_applied(write):
    spec = write(VALID.replace("steps = 800\n", "batch_size = 2\n"))
    assert invoke("check", spec).exit_code == 1  # no run length
    result = invoke("check", spec, "--set", "schedule.steps=800", "--set", "model.base=some/hub-id")
    assert result.exit_code == 0, result.stdout


def test_set_errors_are_marked_and_point_into_the_override(write):
    result = invoke("check", write(VALID), "--set", "datasets[0].repeats=0", "--set", 'optimizer.lr="fast"')
    assert result.exit_code == 1
    assert "  --> <--set>:1:21 (from --set)\n" in result.stdout
    assert "1 | datasets[0].repeats=0\n" in result.stdout
    assert "  --> <--set>:2:14 (from --set)\n" in result.stdout
    records = json.loads(
        invoke("check", write(VALID), "--set", "datasets[0].repeats=0", "--format", "json").stdout
    )
    (record,) = records["diagnostics"]
    assert record["span"]["origin"] == "--set" and record["span"]["file"] == "<--set>"
    assert record["path"] == "datasets[0].repeats"


def test_set_overrides_what_the_file_says(write):
    result = invoke(
        "check",
        write(BROKEN),
        "--set",
        "datasets[0].repeats=100",
        "--set",
        "datasets.0.flip=true",
        "--set",
        "schedule.batch_size=1",
    )
    assert (
        "repeats" not in result.stdout and "flip" not in result.stdout and "batch_size" not in result.stdout
    )


def test_malformed_set_is_dbs004(write):
    result = invoke("check", write(VALID), "--set", "optimizer.lr")
    assert result.exit_code == 1
    assert "error[DBS004]: cannot read override `optimizer.lr`" in result.stdout
    assert "(from --set)" in result.stdout


# -- explain -----------------------------------------------------------------------------------------


def test_explain_shows_type_default_doc_and_example():
    result = invoke("explain", "optimizer.lr")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("optimizer.lr\n")
    assert "  type:    number\n" in out and "  default: 2e-06\n" in out and "  bounds:  >= 0\n" in out
    assert "Learning rate." in out
    assert "  example:\n    [optimizer]\n    lr = " in out


@pytest.mark.parametrize(
    ("key", "first_line"),
    [
        ("datasets.repeats", "datasets.repeats"),
        ("adapter.rank", "adapter.rank"),
        ("spec_version", "spec_version"),
        ("[schedule]", "[schedule] holds: schedule.steps"),
    ],
)
def test_explain_other_keys(key, first_line):
    result = invoke("explain", key)
    assert result.exit_code == 0
    assert result.stdout.startswith(first_line)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("optimizer.learning_rate", "`optimizer.lr`"),
        ("lr", "`optimizer.lr`"),
        ("schedule.step", "`schedule.steps`"),
    ],
)
def test_explain_unknown_key_exits_1_with_did_you_mean(key, suggestion):
    result = invoke("explain", key)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"unknown key `{key}`; did you mean ")
    assert suggestion in result.stdout


def test_explain_nonsense_exits_1():
    result = invoke("explain", "zzzzzz")
    assert result.exit_code == 1
    assert result.stdout == "unknown key `zzzzzz`\n"


# -- the installed command -----------------------------------------------------------------------------


def test_the_console_script_matches_the_in_process_run(write):
    spec = write(BROKEN)
    proc = subprocess.run(
        [sys.executable, "-m", "dbspec.cli", "check", spec], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == invoke("check", spec).stdout
    assert proc.stderr == ""


def test_explain_a_code_shows_its_row():
    result = invoke("explain", "dbs225")
    assert result.exit_code == 0
    assert result.stdout.startswith(
        "DBS225 (error): `output.dir` overlaps the run's inputs\n\n`output.dir` overlaps"
    )


def test_explain_an_unknown_code_exits_1():
    result = invoke("explain", "DBS999")
    assert result.exit_code == 1
    assert result.stdout == "unknown code `DBS999` (docs/errors.md lists them)\n"
