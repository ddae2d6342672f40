"""Every diagnostic code the code can emit has a section in docs/errors.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_is_documented():
    used = set()
    for path in (ROOT / "dbspec").rglob("*.py"):
        used |= set(re.findall(r'"(DBS\d{3})"', path.read_text()))
    documented = set(re.findall(r"^### (DBS\d{3})$", (ROOT / "docs" / "errors.md").read_text(), re.M))
    assert used, "no codes found"
    assert not used - documented, f"undocumented codes: {sorted(used - documented)}"
