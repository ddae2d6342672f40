"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    install, test = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-2:]
    assert install in readme and test in readme
    assert "torch==2.13.0" in install and "-c requirements/lock.txt" in install


def test_the_lock_pins_every_dependency_but_torch():
    import tomli

    lock = (ROOT / "requirements" / "lock.txt").read_text()
    pinned = {
        line.split("==")[0].lower() for line in lock.splitlines() if "==" in line and not line.startswith("#")
    }
    project = tomli.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + [r for extra in extras.values() for r in extra]
    names = {_name(requirement) for requirement in wanted} - {"dbspec"}  # the test extra names dbspec[quant]
    assert names - pinned == {"torch"}
    assert "torch" not in pinned and "nvidia-cublas-cu12" not in pinned


def _name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()


def test_readme_opens_with_install_and_test_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    first_block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 6]
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
