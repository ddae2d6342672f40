"""Build and save the built-in tiny models (`builtin:tiny-sd1`, `-sd2`, `-sdxl`, ...) from `dbspec.builtin`.

`materialize` writes an ordinary diffusers folder, so training loads a built-in through exactly the code
path of a real model (`from_pretrained(folder)`). Weights are random but a pure function of (name, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

import torch
import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from transformers import CLIPTextConfig, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from dbspec.families import family_spec
from dbspec.builtin import TOKENIZER_MERGES, BuiltinModel, builtin_model, t5_vocab, tokenizer_vocab

MARKER_FILE = "dbspec_builtin.json"  # written last into the temp folder: its presence means "complete"

_SCHEDULERS = {
    "DDPMScheduler": DDPMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}


def build_pipeline(name: str, seed: int = 0) -> DiffusionPipeline:
    """A randomly initialised pipeline for built-in `name`; same (name, seed) -> bit-identical weights.

    Seeds only a forked CPU RNG, so the caller's random state is left exactly as it was.
    """
    model = builtin_model(name)
    with torch.random.fork_rng(devices=[]):
        components = _build_components(model, seed)
    spec = family_spec(model.family)
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    components.update(dict.fromkeys(spec.absent_components))  # the refiner's missing first text encoder
    if spec.aesthetic_score:
        components["requires_aesthetics_score"] = True
    if spec.watermarker:
        # No watermarker: it needs the optional invisible-watermark package and would alter samples.
        return pipeline_class(**components, add_watermarker=False)
    if not spec.safety_checker:
        return pipeline_class(**components)
    return pipeline_class(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _seed_for(seed: int, component: str) -> int:
    # Each component gets its own stream, so changing one component's config leaves the others' weights alone.
    return zlib.crc32(f"{seed}:{component}".encode())


def _seeded(seed: int, component: str) -> None:
    torch.random.default_generator.manual_seed(_seed_for(seed, component))


def _build_components(model: BuiltinModel, seed: int) -> dict[str, Any]:
    spec = family_spec(model.family)
    _seeded(seed, spec.denoiser)
    components: dict[str, Any] = {spec.denoiser: getattr(diffusers, spec.denoiser_class)(**model.unet).eval()}
    _seeded(seed, "vae")
    components["vae"] = AutoencoderKL(**model.vae).eval()
    clips = [(model.text_encoder, model.tokenizer), (model.text_encoder_2, model.tokenizer_2)]
    for encoder, (config, settings) in zip(spec.text_encoders, clips):
        if config is None or settings is None:
            continue
        _seeded(seed, encoder.component)
        clip_class = getattr(transformers, encoder.model_class)
        components[encoder.component] = clip_class(CLIPTextConfig(**config)).eval()
        components[encoder.tokenizer] = build_tokenizer(settings)
    if model.text_encoder_3 is not None and model.tokenizer_3 is not None:
        t5 = spec.text_encoders[-1]  # SD3's third text encoder, Flux's second
        _seeded(seed, t5.component)
        components[t5.component] = T5EncoderModel(T5Config(**model.text_encoder_3)).eval()
        components[t5.tokenizer] = T5TokenizerFast(vocab=t5_vocab(), **model.tokenizer_3)
    scheduler_config = dict(model.scheduler)
    scheduler_class = _SCHEDULERS[scheduler_config.pop("_class_name")]
    components["scheduler"] = scheduler_class.from_config(scheduler_config)
    return components


def build_tokenizer(settings: dict[str, Any]) -> CLIPTokenizer:
    """The built-in CLIP BPE tokenizer (byte-level: no prompt ever yields an unknown token)."""
    return CLIPTokenizer(vocab=tokenizer_vocab(), merges=list(TOKENIZER_MERGES), **settings)


def materialize(name: str, folder: Path, seed: int = 0) -> Path:
    """Write built-in `name` as a diffusers folder at `folder` (atomically) and return it.

    A folder that already holds this identity and seed is reused as is. A folder holding another
    built-in (older version, other seed) is replaced; any other non-empty folder is left alone and
    FileExistsError is raised, since it may be the user's.
    """
    model = builtin_model(name)
    folder = Path(folder)
    marker = {"identity": model.identity, "seed": seed}
    if _holds(folder, marker):
        return folder
    _check_replaceable(folder)  # before building: fail fast on a folder we must not touch
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build_pipeline(name, seed).save_pretrained(staging, safe_serialization=True)
        _write_bpe_files(staging, model)
        stored = {**marker, "files": _manifest(staging)}
        (staging / MARKER_FILE).write_text(json.dumps(stored, indent=2) + "\n")
        _move_into_place(staging, folder, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _holds(folder: Path, marker: dict[str, Any]) -> bool:
    """The folder holds this built-in, every file as it was written (a damaged or partly deleted folder, or
    one from a dbspec that wrote no manifest, is rebuilt)."""
    stored = _read_marker(folder)
    if not isinstance(stored, dict) or {key: stored.get(key) for key in marker} != marker:
        return False
    files = stored.get("files")
    return isinstance(files, dict) and bool(files) and _manifest(folder) == files


def _manifest(folder: Path) -> dict[str, str]:
    """blake2b of every file but the marker, by relative path: a few MB for the tiny models, milliseconds."""
    try:
        return {
            path.relative_to(folder).as_posix(): hashlib.blake2b(
                path.read_bytes(), digest_size=16
            ).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != MARKER_FILE
        }
    except OSError:
        return {}


def _write_bpe_files(folder: Path, model: BuiltinModel) -> None:
    # transformers 5 saves only tokenizer.json; real SD folders also carry vocab.json + merges.txt, which
    # older transformers and other tools read. Same content, so every reader tokenizes identically.
    merges = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in TOKENIZER_MERGES)
    vocab = json.dumps(tokenizer_vocab(), ensure_ascii=False)
    spec = family_spec(model.family)
    subfolders = [e.tokenizer for e in spec.text_encoders if e.tokenizer_class == "CLIPTokenizer"]
    for subfolder in subfolders:
        (folder / subfolder / "vocab.json").write_text(vocab, encoding="utf-8")
        (folder / subfolder / "merges.txt").write_text(merges, encoding="utf-8")


def _move_into_place(staging: Path, folder: Path, marker: dict[str, Any]) -> None:
    if _holds(folder, marker):
        return  # another process finished the same folder meanwhile
    if folder.exists():
        _check_replaceable(folder)
        _discard(folder)
    try:
        os.replace(staging, folder)
    except OSError:
        # Another process finished the same folder first: fine when it wrote what we would have.
        if not _holds(folder, marker):
            raise


def _check_replaceable(folder: Path) -> None:
    """Only a missing folder, an empty one, or one holding some built-in may be replaced."""
    if not folder.exists() or _read_marker(folder) is not None:
        return
    if not folder.is_dir() or any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not a built-in model folder; not overwriting it")


def _discard(folder: Path) -> None:
    # Rename first so a half-deleted folder never sits at the final path.
    trash = folder.parent / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --- tiny evaluation models (evaluation.clip_model / dino_model = "builtin:tiny-clip" / "builtin:tiny-dino")
def build_metric_model(name: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """(model, processor) of a built-in evaluation model: a tiny random CLIPModel with a CLIPProcessor (the
    built-in tokenizer), or a tiny ViTModel shaped like DINO's with a ViTImageProcessor. Same (name, seed) ->
    the same weights; the caller's RNG state is left alone."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, name)
        if name == "builtin:tiny-clip":
            settings = builtin_model("builtin:tiny-sd1").tokenizer
            text = {
                k: v
                for k, v in builtin_model("builtin:tiny-sd1").text_encoder.items()
                if k
                in ("vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
            }
            config = CLIPConfig(
                text_config={
                    **text,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                },
                vision_config=vision,
                projection_dim=16,
            )
            processor = CLIPProcessor(
                image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                tokenizer=build_tokenizer(settings),
            )
            return CLIPModel(config).eval(), processor
        if name == "builtin:tiny-dino":
            model = ViTModel(ViTConfig(**vision), add_pooling_layer=False).eval()
            return model, ViTImageProcessor(size={"height": 32, "width": 32})
    raise ValueError(f"unknown built-in evaluation model {name!r}")


def build_preview_vae(name: str, seed: int = 0):
    """The built-in Tiny AutoEncoder `name` (dbspec.builtin.BUILTIN_PREVIEW_MODELS), randomly initialised:
    same (name, seed) -> bit-identical weights; the caller's random state is left as it was."""
    from diffusers import AutoencoderTiny

    from dbspec.builtin import BUILTIN_PREVIEW_MODELS

    if name not in BUILTIN_PREVIEW_MODELS:
        raise KeyError(f"unknown built-in preview model {name!r}; known: {', '.join(BUILTIN_PREVIEW_MODELS)}")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        _seeded(seed, name)
        vae = AutoencoderTiny(**BUILTIN_PREVIEW_MODELS[name]).eval()
        # diffusers' default init decodes every latent to black (outputs near 0, mapped to -1); He-initialised
        # convolutions and a mid-grey output bias make frames that differ with the latents, as tests need.
        convolutions = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convolutions:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                torch.nn.init.zeros_(conv.bias)
        last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(0.05)
        last.bias.fill_(0.5)
        return vae
