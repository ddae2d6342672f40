"""Shared fixtures for the `dbspec convert` tests: image folders made with PIL, running a converter into a
spec file, and compiling that spec to a plan for an RTX-4090-like target."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import pytest
from PIL import Image

from dbspec.convert import convert
from dbspec.convert.diffusers.convert import DiffusersRequest, convert_diffusers
from dbspec.convert.kohya.convert import convert_kohya
from dbspec.convert.kohya.inputs import KohyaRequest
from dbspec.convert.common.run import Outcome
from dbspec.convert.simpletuner.convert import SimpleTunerRequest, convert_simpletuner
from dbspec.frontend import check_spec, plan_spec
from dbspec.plan.model import Plan, TargetEnv

GPU = TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
SD15 = "runwayml/stable-diffusion-v1-5"
SD21 = "stabilityai/stable-diffusion-2-1"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids never resolve from this machine's cache: plans use the published models' facts."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@functools.cache
def _encoded(mode: str, size: tuple[int, int], color: tuple, ext: str, orientation: int | None) -> bytes:
    """One image file's bytes, encoded once per test process (the conversion tests write ~1000 alike)."""
    out, image = io.BytesIO(), Image.new(mode, size, color)
    extra = {}
    if orientation is not None:
        extra["exif"] = Image.Exif()
        extra["exif"][0x0112] = orientation
    image.save(out, format=Image.registered_extensions()[ext.lower()], **extra)
    return out.getvalue()


def images(
    folder: Path,
    count: int,
    size: tuple[int, int] = (96, 64),
    *,
    prefix: str = "img",
    ext: str = ".png",
    mode: str = "RGB",
    caption: str | None = None,
    caption_ext: str = ".caption",
    orientation: int | None = None,
) -> list[Path]:
    """`count` small images (and caption files when `caption` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        path = folder / f"{prefix}{i:03d}{ext}"
        color = (40 + i % 200, 90, 160) if mode == "RGB" else (40 + i % 200, 90, 160, 128)
        path.write_bytes(_encoded(mode, size, color, ext, orientation))
        if caption is not None:
            path.with_suffix(caption_ext).write_text(f"{caption} {i}\n", encoding="utf-8")
        made.append(path)
    return made


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def out_path(tmp: Path) -> Path:
    return tmp / "specs" / "converted.toml"


def kohya(tmp: Path, *, allow: bool = False, **request) -> Outcome:
    req = KohyaRequest(cwd=tmp, **request)
    out = out_path(tmp)
    return convert(lambda: convert_kohya(req, out, allow), out)


def diffusers(tmp: Path, command: str, *, allow: bool = False) -> Outcome:
    req = DiffusersRequest(command=command, cwd=tmp)
    out = out_path(tmp)
    return convert(lambda: convert_diffusers(req, out, allow), out)


def simpletuner(tmp: Path, config: str, backend: str | None, *, allow: bool = False) -> Outcome:
    req = SimpleTunerRequest(config=Path(config), backend=Path(backend) if backend else None, cwd=tmp)
    out = out_path(tmp)
    return convert(lambda: convert_simpletuner(req, out, allow), out)


def plan_of(outcome: Outcome, tmp: Path, overrides: list[str] | None = None) -> Plan:
    """The converted spec passes `dbspec check` and compiles; its plan."""
    assert outcome.written, errors(outcome)
    return plan_at(out_path(tmp), overrides)


def plan_at(path: Path, overrides: list[str] | None = None) -> Plan:
    checked = check_spec(path)
    assert not [d for d in checked.diagnostics if d.severity == "error"], checked.diagnostics
    planned = plan_spec(path, GPU, overrides=overrides)
    assert planned.plan is not None, [f"{d.code} {d.path}: {d.message}" for d in planned.diagnostics]
    return planned.plan


def errors(outcome: Outcome) -> list[str]:
    return [f"{d.code} {d.path}: {d.message}" for d in outcome.diagnostics if d.severity == "error"]


def codes(outcome: Outcome) -> set[str]:
    return {d.code for d in outcome.diagnostics}


def messages(outcome: Outcome, code: str) -> str:
    return "\n".join(d.message for d in outcome.diagnostics if d.code == code)


def fate(outcome: Outcome, key: str) -> str:
    return outcome.conversion.reports[key].fate


def repeats(plan: Plan, dataset: int) -> list[int]:
    return [img.repeats for img in plan.datasets[dataset].images]


# A kohya LoRA command line over a folder `d/10_sks dog` of three 512 px images (the converter tests' base).
KOHYA_LORA = (
    f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora "
    "--train_data_dir d --resolution 512 --max_train_steps 300 --learning_rate 1e-4"
)


def kohya_lora(tmp: Path, args: str, base: str = KOHYA_LORA) -> Outcome:
    """`base` plus `args` converted, with its image folder made."""
    images(tmp / "d" / "10_sks dog", 3, (512, 512))
    return kohya(tmp, command=f"{base} {args}")


def expressible(outcome: Outcome, refused: tuple[str, ...] = ("DBS402", "DBS403")) -> Outcome:
    """The outcome, after checking that none of the `refused` codes was reported."""
    assert not set(refused) & codes(outcome), errors(outcome)
    return outcome


def exact(outcome: Outcome) -> Outcome:
    """The outcome, converted with no refusal and no stated difference (no DBS402, DBS403 or DBS404)."""
    return expressible(outcome, ("DBS402", "DBS403", "DBS404"))


def component_file(path: Path) -> Path:
    """A small .safetensors with the tensor names (and widths) of the component kohya's file `path` names:
    clip_l / clip_g / t5xxl (transformers layout), ae (LDM layout), flux1 (BFL layout), chroma (lodestones'),
    sd3 (MMDiT)."""
    from safetensors.numpy import save_file
    import numpy as np

    name = path.name.lower()
    if "clip_l" in name or "clip_g" in name:
        width = 768 if "clip_l" in name else 1280
        shapes = {"text_model.embeddings.token_embedding.weight": (4, width)}
    elif "t5" in name:
        shapes = {"shared.weight": (4, 4096), "encoder.block.0.layer.0.SelfAttention.k.weight": (4, 4096)}
    elif name.startswith(("ae", "vae")):
        shapes = {
            "encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3),
            "decoder.conv_in.weight": (4, 16, 3, 3),
        }
    elif "sd3" in name:
        shapes = {
            f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight": (3, 2) for i in range(24)
        }
        shapes["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"] = (3, 2)
    elif "chroma" in name:  # lodestones' layout: Flux's blocks, the approximator, no guidance_in
        shapes = {
            "double_blocks.0.img_attn.qkv.weight": (3, 2),
            "single_blocks.0.linear1.weight": (3, 2),
            "distilled_guidance_layer.in_proj.weight": (3, 2),
        }
    else:
        shapes = {"double_blocks.0.img_attn.qkv.weight": (3, 2), "single_blocks.0.linear1.weight": (3, 2)}
        if "schnell" not in name:
            shapes["guidance_in.in_layer.weight"] = (3, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(v, dtype=np.float16) for k, v in shapes.items()}, str(path))
    return path


# flux_train_network.py with lycoris.kohya at network_dim 4, alpha 1 (the runtime tests' tiny Flux twins)
FLUX_LYCORIS = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev "
    "--clip_l clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors --train_data_dir=x "
    "--resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 --learning_rate=1e-2 "
    "--max_train_steps=2 --save_model_as=safetensors --output_dir=out --model_prediction_type raw "
    "--guidance_scale 1.0 "
)


def flux_lycoris(tmp: Path, network_args: str, flags: str = "") -> Outcome:
    """FLUX_LYCORIS with `network_args` (quoted arguments) and `flags`, on two 64x64 images in x/10_ohwx and
    stand-in component files, converted; no refusal (DBS402 / DBS403) is asserted."""
    images(tmp / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp / name)
    outcome = kohya(tmp, command=f"{FLUX_LYCORIS}--network_args {network_args} {flags}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    return outcome


# train_dreambooth_lora_sd3.py (diffusers 58eb52c) builds the transformer's LoraConfig target_modules so:
SD3_SCRIPT_LAYERS = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]


def sd3_script_targets(lora_layers: str | None, lora_blocks: str | None) -> list[str]:
    """The script's rule, line for line: --lora_layers (else its default list), each inside every block of
    --lora_blocks."""
    if lora_layers is not None:
        target_modules = [layer.strip() for layer in lora_layers.split(",")]
    else:
        target_modules = list(SD3_SCRIPT_LAYERS)
    if lora_blocks is not None:
        target_blocks = [int(block.strip()) for block in lora_blocks.split(",")]
        target_modules = [
            f"transformer_blocks.{block}.{module}" for block in target_blocks for module in target_modules
        ]
    return target_modules
