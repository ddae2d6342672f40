"""spec_version 1 -> 2: reading an old file forward (dbspec/spec/migrate.py) and
`dbspec upgrade` (spec/upgrade.py).

Each FORMS case is a version-1 spec written in one TOML form, with comments everywhere, and the exact text the
upgrade must give: only the renamed keys and the spec_version value change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomli
from PIL import Image
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.compiler.target import parse_target
from dbspec.frontend import check_spec, plan_spec
from dbspec.plan.io import plan_to_data, run_hash
from dbspec.spec.migrate import RENAMES, migrate_data
from dbspec.spec.model import SPEC_VERSION
from dbspec.spec.upgrade import upgrade_text

CPU = parse_target("cpu")
REST = """
[model]  # the base
base = "builtin:tiny-sd1"

[[datasets]]
name = "toy"   # instance
path = "inst"
prompt = "a photo of ohwx toy"
resolution = 64

[buckets]
step = 16

[optimizer]
lr = 1e-4

[schedule]
steps = 4

[cache]
dir = "cache"

[output]
dir = "out"
"""

# name -> (version-1 text, the upgraded text)
FORMS = {
    "tables": (
        """# a spec of version 1
spec_version = 1  # the version

[adapter]
kind = "lora"
unet_targets = ["to_q", "to_v"]  # which layers

[train]
# the UNet trains
unet = true
text_encoder = false

[precision]
quantize_unet = "int8"   # int8 base
"""
        + REST,
        """# a spec of version 1
spec_version = 2  # the version

[adapter]
kind = "lora"
denoiser_targets = ["to_q", "to_v"]  # which layers

[train]
# the UNet trains
denoiser = true
text_encoder = false

[precision]
quantize_denoiser = "int8"   # int8 base
"""
        + REST,
    ),
    "dotted": (
        """spec_version=1
adapter.kind = "lora"
adapter . unet_targets = [
  "to_q",  # q
  "to_k",
]
train.unet=true # dotted
precision.quantize_unet = 'int8'
"""
        + REST,
        """spec_version=2
adapter.kind = "lora"
adapter . denoiser_targets = [
  "to_q",  # q
  "to_k",
]
train.denoiser=true # dotted
precision.quantize_denoiser = 'int8'
"""
        + REST,
    ),
    "inline": (
        """spec_version = 1
adapter = { kind = "lora", unet_targets = ["to_q"] }  # inline
train = {unet=true, text_encoder=false}
precision = { quantize_unet = "int8" }
"""
        + REST,
        """spec_version = 2
adapter = { kind = "lora", denoiser_targets = ["to_q"] }  # inline
train = {denoiser=true, text_encoder=false}
precision = { quantize_denoiser = "int8" }
"""
        + REST,
    ),
    "quoted": (
        """spec_version = 1
[adapter]
kind = "lora"
"unet_targets" = ["to_q"]
[train]
'unet' = true
[precision]
"quantize_unet" = "int8"
"""
        + REST,
        """spec_version = 2
[adapter]
kind = "lora"
"denoiser_targets" = ["to_q"]
[train]
'denoiser' = true
[precision]
"quantize_denoiser" = "int8"
"""
        + REST,
    ),
    "after_datasets": (  # renamed keys in tables after an array of tables, and a key that keeps its name
        REST.replace("[model]", "spec_version = 1\n[model]", 1)
        + '\n[[datasets]]\nname = "more"\npath = "inst"\nprompt = "x"\n\n[train]\nunet = false\n'
        "text_encoder = true\n",
        REST.replace("[model]", "spec_version = 2\n[model]", 1)
        + '\n[[datasets]]\nname = "more"\npath = "inst"\nprompt = "x"\n\n[train]\ndenoiser = false\n'
        "text_encoder = true\n",
    ),
    "unicode_tabs_no_final_newline": (
        REST.replace("[model]", "spec_version = 1\n[model]", 1)
        + '[train]\n\tunet\t=\ttrue # t\u00e9\n[adapter]\nkind="lora"\nunet_targets=["\u65e5\u672c"]',
        REST.replace("[model]", "spec_version = 2\n[model]", 1)
        + '[train]\n\tdenoiser\t=\ttrue # t\u00e9\n[adapter]\nkind="lora"\ndenoiser_targets=["\u65e5\u672c"]',
    ),
    "crlf": (
        "spec_version = 1\r\n[train]\r\nunet = true  # crlf\r\n" + REST.replace("\n", "\r\n"),
        "spec_version = 2\r\n[train]\r\ndenoiser = true  # crlf\r\n" + REST.replace("\n", "\r\n"),
    ),
}


def _project(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    (tmp_path / "inst").mkdir(exist_ok=True)
    for i, size in enumerate([(128, 128), (160, 120)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(tmp_path / "inst" / f"{i}.png")
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# --- the rewrite --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(FORMS))
def test_upgrade_changes_only_the_renamed_keys_and_the_version(form: str) -> None:
    old, expected = FORMS[form]
    upgrade, problems = upgrade_text(old, "spec.toml")
    assert problems == [] and upgrade is not None
    assert upgrade.text == expected
    assert tomli.loads(upgrade.text) == migrate_data(tomli.loads(old), 1)[0]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_upgrade_is_idempotent(form: str) -> None:
    upgraded, _ = upgrade_text(FORMS[form][0], "spec.toml")
    again, problems = upgrade_text(upgraded.text, "spec.toml")
    assert problems == [] and not again.changed and again.text == upgraded.text


def test_the_forms_hold_every_renamed_key() -> None:
    for form in ("tables", "dotted", "inline", "quoted"):
        data = tomli.loads(FORMS[form][0])
        assert all(rename.old in data[rename.table[0]] for rename in RENAMES[1]), form


def test_the_upgraded_file_compiles_to_the_same_run(tmp_path: Path) -> None:
    for form, (old, _) in FORMS.items():
        folder = tmp_path / form
        folder.mkdir()
        spec = _project(folder, old)
        before = plan_spec(spec, CPU, "spec.toml")
        assert _run("upgrade", str(spec)).exit_code == 0
        after = plan_spec(spec, CPU, "spec.toml")
        assert before.plan is not None and after.plan is not None, (form, before.diagnostics)
        # DBS248: the int8 base is quantised by quanto, the default backend (deprecated upstream), in both;
        # DBS607: the unicode form's target "\u65e5\u672c" names no layer of SD1.5's UNet, in both
        same_in_both = ("DBS248", "DBS607")
        assert [d.code for d in before.diagnostics if d.code not in same_in_both] == ["DBS107"], form
        assert not [d for d in after.diagnostics if d.code not in same_in_both], form
        assert [d.code for d in before.diagnostics if d.code == "DBS607"] == [
            d.code for d in after.diagnostics if d.code == "DBS607"
        ], form
        assert run_hash(before.plan) == run_hash(after.plan)
        same = {k: v for k, v in plan_to_data(after.plan).items() if k not in ("origins", "warnings")}
        assert {
            k: v for k, v in plan_to_data(before.plan).items() if k not in ("origins", "warnings")
        } == same


# --- reading version 1 forward ------------------------------------------------------------------------------


def test_a_version_1_file_reads_forward_with_one_warning_naming_the_keys_and_lines(tmp_path: Path) -> None:
    spec = _project(tmp_path, FORMS["tables"][0])
    checked = check_spec(spec, "spec.toml")
    (warning,) = [d for d in checked.diagnostics if d.code != "DBS248"]  # DBS248: quanto by default
    assert (warning.code, warning.severity, warning.path) == ("DBS107", "warning", "spec_version")
    assert "spec.toml is spec_version 1" in warning.message
    assert "`adapter.unet_targets` -> `adapter.denoiser_targets` (line 6)" in warning.message
    assert "`train.unet` -> `train.denoiser` (line 10)" in warning.message
    assert "`precision.quantize_unet` -> `precision.quantize_denoiser` (line 14)" in warning.message
    assert "dbspec upgrade spec.toml" in warning.help
    assert (warning.span.line, warning.span.col) == (2, 16)
    s = checked.spec
    assert (s.train.denoiser, s.adapter.denoiser_targets, s.precision.quantize_denoiser) == (
        True,
        ["to_q", "to_v"],
        "int8",
    )


def test_errors_in_a_version_1_file_name_the_users_key_at_its_line(tmp_path: Path) -> None:
    text = FORMS["dotted"][0].replace("train.unet=true", 'train.unet="yes"')
    checked = check_spec(_project(tmp_path, text), "spec.toml")
    (bad,) = [d for d in checked.diagnostics if d.severity == "error"]
    assert (
        bad.code == "DBS101" and bad.path == "train.unet" and "`train.unet` must be a boolean" in bad.message
    )
    assert (bad.span.line, bad.span.col) == (7, 12)


def test_a_rule_on_a_renamed_key_points_at_the_users_line(tmp_path: Path) -> None:
    text = (
        FORMS["tables"][0]
        .replace('kind = "lora"\n', 'kind = "none"\n', 1)
        .replace('unet_targets = ["to_q", "to_v"]  # which layers\n', "")
    )
    checked = check_spec(_project(tmp_path, text), "spec.toml")
    (bad,) = [d for d in checked.diagnostics if d.code == "DBS212"]
    assert bad.path == "precision.quantize_unet" and bad.span.line == 13


def test_the_plan_origin_of_a_renamed_key_is_the_users_line(tmp_path: Path) -> None:
    planned = plan_spec(_project(tmp_path, FORMS["tables"][0]), CPU, "spec.toml")
    assert planned.plan.origins["train.denoiser"].where == "spec.toml:10:1"
    assert planned.plan.train_denoiser and planned.plan.adapter.denoiser_targets == ("to_q", "to_v")


def test_a_set_override_of_an_old_name_is_read_forward(tmp_path: Path) -> None:
    spec = _project(tmp_path, FORMS["tables"][0])
    checked = check_spec(spec, "spec.toml", ["train.unet=false", "train.text_encoder=true"])
    assert checked.spec is not None and checked.spec.train.denoiser is False
    (warning,) = [d for d in checked.diagnostics if d.code != "DBS248"]  # DBS248: quanto by default
    assert "`train.unet` -> `train.denoiser` (--set)" in warning.message


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        (
            "spec_version = 1\n[train]\ndenoiser = true\n",
            "train.denoiser",
            "the spec_version 2 name of `train.unet`",
        ),
        (
            "spec_version = 1\n[train]\nunet = true\ndenoiser = true\n",
            "train.denoiser",
            "also sets `train.unet`",
        ),
        (
            "spec_version = 2\n[train]\nunet = true\n",
            "train.unet",
            "was renamed to `train.denoiser` in spec_version 2",
        ),
    ],
)
def test_names_of_another_version_are_an_error(tmp_path: Path, text: str, key: str, what: str) -> None:
    checked = check_spec(_project(tmp_path, text + REST), "spec.toml")
    (bad,) = [d for d in checked.diagnostics if d.severity == "error"]
    assert (bad.code, bad.path) == ("DBS108", key) and what in bad.message
    assert bad.span is not None and bad.span.line == 3 + (
        "denoiser = true\n" in text and "unet = true\n" in text
    )
    upgrade, problems = upgrade_text(text + REST, "spec.toml")
    assert upgrade is None and [p.code for p in problems] == ["DBS108"]


def test_a_set_override_of_a_new_name_on_a_version_1_file_is_an_error(tmp_path: Path) -> None:
    checked = check_spec(_project(tmp_path, FORMS["tables"][0]), "spec.toml", ["train.denoiser=false"])
    assert [d.code for d in checked.diagnostics if d.severity == "error"] == ["DBS108"]
    assert checked.diagnostics[0].span.origin == "--set" or checked.diagnostics[-1].span.origin == "--set"


# --- the command --------------------------------------------------------------------------------------------


def test_upgrade_rewrites_the_file_prints_the_diff_and_keeps_its_mode(tmp_path: Path) -> None:
    old, expected = FORMS["tables"]
    spec = _project(tmp_path, old)
    os.chmod(spec, 0o640)
    result = _run("upgrade", str(spec))
    assert result.exit_code == 0
    assert spec.read_bytes() == expected.encode()
    assert (spec.stat().st_mode & 0o777) == 0o640
    assert (
        f"--- {spec} (spec_version 1)" in result.stdout
        and f"+++ {spec} (spec_version {SPEC_VERSION})" in result.stdout
    )
    assert "-unet = true\n+denoiser = true\n" in result.stdout
    assert (
        "upgraded from spec_version 1 to 2" in result.stdout
        and "train.unet -> train.denoiser (line 10)" in result.stdout
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spec.toml")]  # no temporary left


def test_upgrade_of_a_symlinked_spec_rewrites_its_target(tmp_path: Path) -> None:
    real = _project(tmp_path, FORMS["inline"][0], "real.toml")
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    assert _run("upgrade", str(link)).exit_code == 0
    assert link.is_symlink() and real.read_text() == FORMS["inline"][1]


@pytest.mark.parametrize("flag", ["--dry-run", "--check"])
def test_dry_run_and_check_change_nothing(tmp_path: Path, flag: str) -> None:
    old = FORMS["quoted"][0]
    spec = _project(tmp_path, old)
    before = spec.stat().st_mtime_ns
    result = _run("upgrade", str(spec), flag)
    assert result.exit_code == (1 if flag == "--check" else 0)
    assert '+"denoiser_targets" = ["to_q"]' in result.stdout
    assert spec.read_bytes() == old.encode() and spec.stat().st_mtime_ns == before


@pytest.mark.parametrize("flag", [None, "--dry-run", "--check"])
def test_a_current_file_is_left_untouched(tmp_path: Path, flag: str | None) -> None:
    current = FORMS["tables"][1]
    spec = _project(tmp_path, current)
    before = spec.stat().st_mtime_ns
    result = _run("upgrade", str(spec), *([flag] if flag else []))
    assert result.exit_code == 0
    assert result.stdout == f"{spec}: already spec_version {SPEC_VERSION}; nothing to upgrade\n"
    assert spec.stat().st_mtime_ns == before and spec.read_text() == current


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        (b"spec_version = 1\n[train\nunet = true\n", "error[DBS001]"),
        (b"\xff\xfe not utf-8", "error[DBS003]"),
        (b"[train]\nunet = true\n", "has no `spec_version`"),
        (b"spec_version = 3\n", "has spec_version 3; `dbspec upgrade` reads versions 1 to 2"),
        (b'spec_version = "1"\n', "has spec_version '1'"),
        (b"spec_version = 1\n[train]\nunet = true\ndenoiser = false\n", "error[DBS108]"),
    ],
)
def test_bad_input_is_an_error_naming_the_file(tmp_path: Path, content: bytes | None, expected: str) -> None:
    spec = tmp_path / "bad.toml"
    if content is not None:
        spec.write_bytes(content)
    result = _run("upgrade", str(spec))
    assert result.exit_code == 1
    assert expected in result.output and str(spec) in result.output
    if content is not None:
        assert spec.read_bytes() == content


def test_every_old_key_of_a_shipped_spec_is_gone() -> None:
    root = Path(__file__).resolve().parents[2]
    for spec in sorted((root / "specs").glob("*.toml")):
        data = tomli.loads(spec.read_text())
        assert data["spec_version"] == SPEC_VERSION, spec
        upgrade, problems = upgrade_text(spec.read_text(), spec.name)
        assert problems == [] and not upgrade.changed, spec
    assert (
        json.loads((root / "schemas" / "dbspec.schema.json").read_text())["properties"]["spec_version"][
            "const"
        ]
        == SPEC_VERSION
    )


def test_explain_an_old_name_shows_the_new_key() -> None:
    result = _run("explain", "adapter.unet_targets")
    assert result.exit_code == 0
    assert result.stdout.startswith(
        "`adapter.unet_targets` is the spec_version 1 name of `adapter.denoiser_targets`"
    )
    assert "denoiser_targets = [" in result.stdout


def test_a_version_1_file_without_renamed_keys_warns_and_upgrades_its_version_only(tmp_path: Path) -> None:
    text = "spec_version = 1  # keep\n" + REST
    (warning,) = check_spec(_project(tmp_path, text), "spec.toml").diagnostics
    assert warning.code == "DBS107" and "no key needed renaming" in warning.message
    upgrade, _ = upgrade_text(text, "spec.toml")
    assert upgrade.text == "spec_version = 2  # keep\n" + REST and upgrade.renamed == ()
