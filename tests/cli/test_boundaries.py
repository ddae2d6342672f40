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
        bad = [
            n for n in _imports(path) if n.split(".")[0] in {h.split(".")[0] for h in HEAVY} - {"safetensors"}
        ]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_runtime_takes_a_plan_only():
    forbidden = ("tomli", "tomllib", "dbspec.spec", "dbspec.compiler", "dbspec.convert", "dbspec.frontend")
    for path in (ROOT / "runtime").rglob("*.py"):
        bad = [n for n in _imports(path) if n.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# The layers, lowest first: a module may import only from its own layer's package or a lower layer (the data
# flow CLI -> spec -> compiler -> plan, with the runtime beside the compiler, reading plans only).
LAYERS: dict[str, int] = {
    # the public models' module paths, pure data the family registry holds (families.py imports it)
    "denoiser_layout": -1,
    "util": 0,
    "diagnostics": 0,
    "codes": 0,
    "families": 0,
    "envreport": 0,
    "builtin": 1,
    "weightfiles": 1,  # where a component's tensors sit in a weight file (plan checks, runtime loads)
    "unet_layout": 1,  # the original <-> diffusers U-Net names (kohya SDXL files: converter, runtime exports)
    "flow_layout": 1,  # kohya's Flux / SD3 Linears in diffusers' names (LyCORIS preset files, file ranks)
    "plan": 1,
    "spec": 1,
    "report": 2,  # reads a run folder and its plan; the runtime writes it at the end of a run
    "compiler": 2,
    "runtime": 2,
    "frontend": 3,
    "convert": 4,
    "masks": 4,
    "cli_common": 5,
    "cli_convert": 6,
    "cli_upgrade": 6,
    "cli_tokens": 6,
    "cli": 7,
}
RUNTIME_MAY_IMPORT = {
    "builtin",
    "families",
    "plan",
    "util",
    "runtime",
    "report",
    "weightfiles",
    "unet_layout",
    "flow_layout",
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "runtime":
        return "runtime"
    return rel[1] if len(rel) > 2 else rel[1].removesuffix(".py")


def _dbspec_imports(path: Path) -> set[str]:
    """First-level dbspec packages a module imports (`from dbspec import codes` counts as `codes`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "dbspec":
            found |= {alias.name for alias in node.names}
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            else []
        )
        found |= {name.split(".")[1] for name in names if name.startswith("dbspec.")}
    return found - {"__version__"}


def test_every_module_imports_only_its_layer_or_below():
    broken = []
    for path in [*(ROOT / "dbspec").rglob("*.py"), *(ROOT / "runtime").rglob("*.py")]:
        source = _package(path)
        if source == "__init__":
            continue
        for target in _dbspec_imports(path) - {source}:
            allowed = target in RUNTIME_MAY_IMPORT if source == "runtime" else LAYERS[target] < LAYERS[source]
            if not allowed:
                broken.append(f"{path.relative_to(ROOT)}: {source} imports {target}")
    assert broken == []


def test_every_package_has_a_layer():
    packages = {_package(path) for path in (ROOT / "dbspec").rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYERS), packages - set(LAYERS)
