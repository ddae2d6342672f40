"""`dbspec env`: what is installed, for bug reports, and the combinations known not to work.

Versions come from package metadata (no imports); only the torch facts need torch itself, and
`dbspec.runtime.probe` gathers them."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import attrs
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from dbspec import __version__

LIBRARIES = (
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "optimum-quanto",
    "safetensors",
    "tokenizers",
    "huggingface-hub",
    "numpy",
    "bitsandbytes",
)


@attrs.frozen(kw_only=True)
class KnownBreak:
    """All of `when` (package -> version specifier) installed together break `effect`;
    `fix` says what to do."""

    when: dict[str, str]
    effect: str
    fix: str


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        when={"transformers": ">=5.24", "peft": "<0.22"},
        effect="transformers' own peft integration (add_adapter, enable_adapters, ...) refuses this peft. "
        "dbspec still trains (it injects adapters through peft directly), but your own scripts that "
        "call text_encoder.add_adapter fail",
        fix="install the tested set: pip install -c requirements/lock.txt -e . (transformers 5.23), "
        "or peft >= 0.22 once it is released",
    ),
)


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def breaks_for(versions: dict[str, str | None]) -> list[KnownBreak]:
    """The known breaks whose every condition holds for these installed versions (None: not installed)."""
    return [b for b in KNOWN_BREAKS if all(_matches(versions.get(pkg), spec) for pkg, spec in b.when.items())]


def _matches(version: str | None, spec: str) -> bool:
    if version is None:
        return False
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def report(torch_facts: dict) -> dict:
    """Everything `dbspec env` prints; `torch_facts` from dbspec.runtime.probe (or {"installed": False})."""
    versions = {name: installed(name) for name in LIBRARIES}
    versions["torch"] = torch_facts.get("version")
    return {
        "dbspec": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch_facts,
        "libraries": {name: versions[name] for name in LIBRARIES},
        "warnings": [attrs.asdict(b) for b in breaks_for(versions)],
    }


def render_text(data: dict) -> str:
    torch = data["torch"]
    rows = [("dbspec", data["dbspec"]), ("python", data["python"]), ("platform", data["platform"])]
    if torch.get("version"):
        rows += [
            ("torch", f"{torch['version']} ({torch['build']})"),
            ("cuda", _devices(torch["cuda_devices"]) if torch["cuda_available"] else "not available"),
            ("mps", "available" if torch["mps_available"] else "not available"),
            ("bf16", torch["bf16"]),
        ]
    else:
        rows.append(("torch", "not installed (dbspec check and plan work; run, sample and masks need it)"))
    rows += [(name, version or "not installed") for name, version in data["libraries"].items()]
    lines = [f"{name:<16} {value}" for name, value in rows]
    for warning in data["warnings"]:
        combo = ", ".join(f"{pkg} {spec}" for pkg, spec in warning["when"].items())
        lines += [f"warning: {combo}: {warning['effect']}", f"  fix: {warning['fix']}"]
    return "\n".join(lines)


def _devices(devices: list[dict]) -> str:
    return "; ".join(
        f"{d['index']}: {d['name']} ({d['memory_gib']:.0f} GiB, cc {d['capability']})" for d in devices
    )
