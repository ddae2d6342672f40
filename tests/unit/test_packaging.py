"""pyproject.toml names what exists, and the code runs on every Python it admits."""

from __future__ import annotations

import ast
from pathlib import Path

import tomli

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomli.loads((ROOT / "pyproject.toml").read_text())


def test_every_listed_package_has_its_folder_and_package_data_exists():
    setuptools = PROJECT["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    for package in setuptools["packages"]:
        top = next(name for name in sorted(folders, key=len, reverse=True) if package.startswith(name))
        folder = (
            ROOT / folders[top] / Path(*package[len(top) :].strip(".").split(".") if package != top else ())
        )
        assert (folder / "__init__.py").is_file(), package
    for package, patterns in setuptools.get("package-data", {}).items():
        for pattern in patterns:
            assert list((ROOT / folders.get(package, package)).glob(pattern)), (
                f"{package}: {pattern} matches nothing"
            )


def test_toml_is_read_with_tomli_everywhere():
    # tomllib is stdlib only from 3.11; one reader for specs and legacy configs alike, whatever the floor.
    offenders = []
    for path in [*(ROOT / "dbspec").rglob("*.py"), *(ROOT / "runtime").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(ROOT)}" for name in names if name == "tomllib"]
    assert offenders == []


def test_the_python_floor_is_the_one_ci_tests_and_the_lock_resolves_for():
    assert PROJECT["project"]["requires-python"] == ">=3.11"
    assert "--python-version 3.11" in (ROOT / "tools" / "lock.sh").read_text()
