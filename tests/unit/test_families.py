"""The model-family registry (dbspec/families.py) is the one place that knows the families.

Family names as string literals ("sd1", "sd2", "sdxl") appear in code only in the registry, in the built-in
tiny models, and in the converters on ALLOWED below (they map other tools' words to family names). A new file
testing a family name fails here: ask the registry (`family_spec(name).<fact>`) or the family's runtime module
(`dbspec.runtime.families.family_runtime(name)`), or add the fact to FamilySpec. A stale line fails too.
"""

from __future__ import annotations

import ast
import functools
import typing
from pathlib import Path

from dbspec import families
from dbspec.families import FAMILIES, Family, family_spec

ROOT = Path(__file__).resolve().parents[2]
HOME = {"dbspec/families.py", "dbspec/builtin.py"}  # the registry, and the tiny models (one per family)

# Converters translate another tool's vocabulary (script names, flags, model_family values) into dbspec's
# family names: that mapping is theirs to hold. A family those tools support adds its words there.
# file -> what it maps.
ALLOWED = {
    "dbspec/convert/kohya/model.py": "kohya's script names and v2 flag -> family",
    "dbspec/convert/kohya/datasets.py": "kohya sdxl scripts' bucket step",
    "dbspec/convert/kohya/inputs.py": "kohya GUI key named `sdxl`",
    "dbspec/convert/diffusers/convert.py": "diffusers script names (train_dreambooth_lora_sdxl) -> family",
    "dbspec/convert/diffusers/out.py": "diffusers script names -> family",
    "dbspec/convert/kohya/flow.py": "kohya's flux/sd3 script names -> family",
    "dbspec/convert/kohya/lora_flux.py": "kohya's networks.lora_flux -> the flux family's kohya target set",
    "dbspec/convert/kohya/lycoris_flux.py": "LyCORIS with flux_train_network.py -> flux's targets",
    "dbspec/convert/kohya/lycoris_sd3.py": "LyCORIS with sd3_train_network.py -> sd3's targets",
    "dbspec/convert/kohya/lycoris_flow_file.py": "LyCORIS preset files: flux_train_network.py on flux only",
    "dbspec/convert/kohya/lycoris_flow_factor_file.py": "LyCORIS LoKr/LoHa file: no chroma layout",
    "dbspec/convert/kohya/lycoris_flow_rebuilt.py": "LyCORIS Diag-OFT/GLoRA file: Chroma, FLUX.1 widths",
    "dbspec/convert/kohya/lycoris_flow_mixed.py": "LyCORIS mixed file: Chroma's T5 / final layer unmapped",
    "dbspec/convert/kohya/lycoris_flow_norms.py": "LyCORIS NormModule file: kohya's Flux / SD3 encoder lists",
    "dbspec/convert/kohya/lora_sd3.py": "kohya's networks.lora_sd3 -> the sd3 family's kohya target set",
    "dbspec/convert/kohya/file_ranks.py": "kohya lora_flux / lora_sd3 module names -> flux / sd3 paths",
    "dbspec/convert/diffusers/flow.py": "diffusers' Flux/SD3 script names -> family",
    "dbspec/convert/simpletuner/train.py": "SimpleTuner's model_family values -> family",
    "dbspec/convert/simpletuner/flow.py": "SimpleTuner's model_family sd3/flux (their own options)",
    "dbspec/convert/simpletuner/data.py": "SimpleTuner's model_family sdxl (caption dropout zeroes time ids)",
}


@functools.cache
def _facts(path: Path) -> tuple[list[int], int]:
    """The lines of the file's family-name literals, and how many Literal types of family names it declares:
    one parse per file and test process for the two tests below (each parsed every code file, most of its
    time; the trees are not kept)."""
    names = set(FAMILIES)
    lines, declares = [], 0
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            lines.append(node.lineno)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Literal"
        ):
            values = {e.value for e in ast.walk(node.slice) if isinstance(e, ast.Constant)}
            declares += bool(values & names)
    return lines, declares


def _family_literals(path: Path) -> list[int]:
    return _facts(path)[0]


def _code_files() -> list[Path]:
    return sorted([*(ROOT / "dbspec").rglob("*.py"), *(ROOT / "runtime").rglob("*.py")])


def test_family_names_only_in_the_registry_and_the_allow_list():
    naming = {str(p.relative_to(ROOT)): lines for p in _code_files() if (lines := _family_literals(p))}
    unexpected = {f"{path}:{lines}" for path, lines in naming.items() if path not in HOME | set(ALLOWED)}
    assert not unexpected, (
        "these files test a family name; ask dbspec.families instead (or add the place to "
        f"ALLOWED with its reason): {sorted(unexpected)}"
    )
    stale = set(ALLOWED) - set(naming)
    assert not stale, f"no family name left in {sorted(stale)}: delete their ALLOWED lines"


def test_the_family_type_is_declared_once():
    declared = [str(path.relative_to(ROOT)) for path in _code_files() for _ in range(_facts(path)[1])]
    assert declared == ["dbspec/families.py"]


def test_registry_matches_the_type_and_the_tiny_models():
    from dbspec.builtin import BUILTIN_MODELS

    assert tuple(FAMILIES) == typing.get_args(Family)
    for name, spec in FAMILIES.items():
        assert spec.name == name and family_spec(name) is spec
    for model in BUILTIN_MODELS.values():
        spec = family_spec(model.family)
        assert model.pipeline_class == spec.pipeline_class
        assert model.vae_scaling_factor == spec.vae_scaling_factor
        assert model.latent_channels == spec.latent_channels
        clips = (model.text_encoder is not None) + (model.text_encoder_2 is not None)  # Chroma: T5 alone
        assert clips + (model.text_encoder_3 is not None) == len(spec.text_encoders)
        assert model.prediction == spec.prediction
    assert families.ALL_TEXT_ENCODERS == ("text_encoder", "text_encoder_2", "text_encoder_3")


def test_unknown_family_names_the_known_ones():
    try:
        family_spec("sd9")
    except KeyError as exc:
        assert "sd1, sd2, sdxl, sdxl_refiner, sd3, flux, chroma" in str(exc)
    else:
        raise AssertionError("sd9 is not a family")
