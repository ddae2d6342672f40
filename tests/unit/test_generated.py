"""Generated files are committed; these tests fail when they are stale and print how to regenerate."""

import json
from pathlib import Path

import jsonschema
import pytest
import tomli

from dbspec.frontend import check_spec
from dbspec.spec.reference import errors_markdown, reference_markdown
from dbspec.spec.schema import schema_text

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "dbspec schema --docs docs/spec-reference.md"
REGENERATE_ERRORS = "dbspec schema --errors docs/errors.md"
SPECS = sorted((ROOT / "specs").rglob("*.toml"))


def test_schema_is_current():
    committed = (ROOT / "schemas" / "dbspec.schema.json").read_text()
    assert committed == schema_text(), f"schemas/dbspec.schema.json is stale: run `{REGENERATE}`"


def test_reference_is_current():
    committed = (ROOT / "docs" / "spec-reference.md").read_text()
    assert committed == reference_markdown(), f"docs/spec-reference.md is stale: run `{REGENERATE}`"


def test_error_codes_doc_is_current():
    committed = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert committed == errors_markdown(), (
        f"docs/errors.md is stale (edit dbspec/codes.py, not the file): run `{REGENERATE_ERRORS}`"
    )


def test_schema_is_valid_draft_2020_12():
    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert '"null"' not in schema_text()


def test_there_are_specs():
    assert len(SPECS) >= 5


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_spec_validates(path):
    text = path.read_text()
    assert text.splitlines()[0] == "#:schema ../schemas/dbspec.schema.json" or path.parent != ROOT / "specs"
    jsonschema.validate(tomli.loads(text), json.loads(schema_text()), cls=jsonschema.Draft202012Validator)
    checked = check_spec(path)
    assert checked.spec is not None
    assert [d for d in checked.diagnostics] == []


def test_schema_rejects_what_check_rejects():
    schema = json.loads(schema_text())
    bad = {"spec_version": 2, "model": {"base": "x", "bogus": 1}, "datasets": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
