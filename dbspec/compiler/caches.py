"""Cache pass: content-addressed keys for latents and text embeddings, and hits against the disk now.

A latent key hashes everything that changes the tensor: image bytes, bucket, resize, crop, flip, the VAE's
identity and dtype. A text key hashes the caption, the text encoders' identity, clip skip and dtype. So a
changed image, resolution or VAE can never reuse an old entry. The runtime writes entries at these keys.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import attrs

from dbspec.compiler.context import Context
from dbspec.plan.model import CachePlan, DatasetPlan, ImagePlan, ModelPlan, PrecisionPlan

LATENT_FORMAT = "latent-v1"
TEXT_FORMAT = "text-v1"


def _key(parts: list) -> str:
    # repr() of str/int/bool/tuple is unambiguous and stable, and much cheaper than json at 20k images.
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).hexdigest()


def latent_key(img: ImagePlan, flip: bool, vae_identity: str, vae_dtype: str) -> str:
    return _key([LATENT_FORMAT, img.sha, img.bucket, img.resized, img.crop, flip, vae_identity, vae_dtype])


def text_key(caption: str, model: ModelPlan, dtype: str) -> str:
    return _key([TEXT_FORMAT, caption, model.text_identity, model.family, model.clip_skip, dtype])


def entry_path(cache_dir: Path, kind: str, key: str) -> Path:
    """Where the runtime stores an entry: <dir>/<kind>/<ab>/<key>.safetensors."""
    return cache_dir / kind / key[:2] / f"{key}.safetensors"


def stored_keys(cache_dir: Path, kind: str) -> set[str]:
    """Keys with an entry on disk: one listing per prefix folder instead of a stat per key."""
    found: set[str] = set()
    try:
        prefixes = list(os.scandir(cache_dir / kind))
    except OSError:
        return found
    for prefix in prefixes:
        if prefix.is_dir():
            with os.scandir(prefix.path) as entries:
                found.update(e.name[: -len(".safetensors")] for e in entries if e.name.endswith(".safetensors"))
    return found


def plan_caches(ctx: Context, model: ModelPlan | None, datasets: tuple[DatasetPlan, ...],
                precision: PrecisionPlan) -> tuple[tuple[DatasetPlan, ...], CachePlan]:
    c, spec = ctx.spec.cache, ctx.spec
    cache_dir = ctx.cache_dir
    notes: list[str] = []
    te_trains = spec.train.text_encoder
    text_on = c.text_embeddings and not te_trains and model is not None
    if c.text_embeddings and te_trains:
        notes.append("text embeddings are not cached: the text encoder trains")
    vae_dtype = next(p.dtype for p in precision.components if p.name == "vae")
    text_dtype = next(p.dtype for p in precision.components if p.name == "text_encoder")
    out: list[DatasetPlan] = []
    keys: dict[str, set[str]] = {"latents": set(), "text": set()}
    text_keys: dict[str, str] = {}
    for d in datasets:
        latents_on = c.latents and d.crop == "center" and model is not None
        if c.latents and d.crop == "random":
            notes.append(f"dataset `{d.name}`: latents are not cached (random crops differ every epoch)")
        images = []
        for img in d.images:
            used = img.repeats > 0  # balanced-out class images never train: nothing to encode
            lkeys = tuple(latent_key(img, f, model.vae_identity, vae_dtype) for f in _flips(d)) \
                if latents_on and used else ()
            if text_on and used and img.caption not in text_keys:
                text_keys[img.caption] = text_key(img.caption, model, text_dtype)  # captions repeat: hash once
            tkey = text_keys[img.caption] if text_on and used else ""
            keys["latents"].update(lkeys)
            keys["text"].update((tkey,) if tkey else ())
            images.append(_with_keys(img, lkeys, tkey))
        out.append(attrs.evolve(d, images=tuple(images)))
    hits = {kind: len(ks & stored_keys(cache_dir, kind)) for kind, ks in keys.items()}
    plan = CachePlan(dir=str(cache_dir), latents=c.latents, text_embeddings=text_on,
                     latent_hits=hits["latents"], latent_misses=len(keys["latents"]) - hits["latents"],
                     text_hits=hits["text"], text_misses=len(keys["text"]) - hits["text"], notes=tuple(notes))
    return tuple(out), plan


_IMAGE_FIELDS = tuple(f.name for f in attrs.fields(ImagePlan))


def _with_keys(img: ImagePlan, latent_keys: tuple[str, ...], text_key: str) -> ImagePlan:
    """attrs.evolve without its per-call introspection (this runs once per image)."""
    values = {name: getattr(img, name) for name in _IMAGE_FIELDS}
    values.update(latent_keys=latent_keys, text_key=text_key)
    return ImagePlan(**values)


def _flips(d: DatasetPlan) -> tuple[bool, ...]:
    return (False, True) if d.flip else (False,)
