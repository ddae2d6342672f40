"""Architecture rules: dbspec/ never imports torch; runtime/ never reads TOML or imports the spec/compiler."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "optimum", "safetensors.torch")


def test_check_plan_and_cli_import_no_torch(tmp_path):
    code = (
        "import sys\n"
        f"tmp = {str(tmp_path)!r}\n"
        "from typer.testing import CliRunner\n"
        "from dbspec.cli import app\n"
        "r = CliRunner().invoke(app, ['check', 'specs/quickstart.toml'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['plan', 'specs/quickstart.toml', '--target', 'cpu',\n"
        "                             '--set', f'cache.dir={tmp}'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_dbspec_package_has_no_heavy_imports():
    for path in (ROOT / "dbspec").rglob("*.py"):
        bad = [n for n in _imports(path) if n.split(".")[0] in {h.split(".")[0] for h in HEAVY} - {"safetensors"}]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_runtime_takes_a_plan_only():
    forbidden = ("tomli", "tomllib", "dbspec.spec", "dbspec.compiler", "dbspec.convert", "dbspec.frontend")
    for path in (ROOT / "runtime").rglob("*.py"):
        bad = [n for n in _imports(path) if n.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
