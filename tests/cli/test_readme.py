"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_command = ci[-1]
    assert test_command in readme
    assert "torch==2.13.0" in ci[-5] or any("torch==2.13.0" in line for line in ci)


def test_readme_opens_with_install_and_test_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    first_block = lines[lines.index("```bash") + 1: lines.index("```bash") + 6]
    assert any("dbspec run specs/quickstart.toml" in line for line in first_block)
    assert any("pytest" in line for line in first_block)


def test_the_readme_spec_checks_clean(tmp_path):
    from dbspec.frontend import check_spec

    readme = (ROOT / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = tmp_path / "spec.toml"
    spec.write_text(block)
    checked = check_spec(spec)
    assert checked.spec is not None and checked.diagnostics == ()
