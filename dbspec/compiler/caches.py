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
from dbspec.compiler.pivotal import mentions_token
from dbspec.compiler.precision import any_text_encoder_trains, text_encoder_runs_trained
from dbspec.compiler.text_masks import has_t5
from dbspec.plan.model import CachePlan, DatasetPlan, ModelPlan, PrecisionPlan
from dbspec.spec.model import Dataset

LATENT_FORMAT = "latent-v1"
TEXT_FORMAT = "text-v1"


def _key(parts: list) -> str:
    # repr() of str/int/bool/tuple is unambiguous and stable, and much cheaper than json at 20k images.
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).hexdigest()


def latent_key(sha: str, bucket, resized, crop, flip: bool, vae_identity: str, vae_dtype: str) -> str:
    return _latent_key(sha, bucket, resized, crop, flip, _model_part(vae_identity, vae_dtype))


def _model_part(vae_identity: str, vae_dtype: str) -> bytes:
    return repr((LATENT_FORMAT, vae_identity, vae_dtype)).encode()


def _latent_key(sha: str, bucket, resized, crop, flip: bool, model_part: bytes) -> str:
    """The image part as plain integers and the model part pre-encoded: this runs per image and flip."""
    digest = hashlib.blake2b(model_part, digest_size=20)
    digest.update(
        f"|{sha}|{bucket[0]},{bucket[1]}|{resized[0]},{resized[1]}|{crop[0]},{crop[1]}|{flip:d}".encode()
    )
    return digest.hexdigest()


def text_key(caption: str, model: ModelPlan, dtype: str) -> str:
    # max_tokens joins the key only when it changes the embedding's shape: one-window keys stay as they were.
    windows = [model.max_tokens] if model.max_tokens != 75 else []
    # T5's length shapes the embeddings of families with T5 (SD3); the others' keys stay as they were.
    t5 = [model.t5_max_length] if has_t5(model.family) else []
    # weighted captions join the key only when on (their embeddings differ); other keys stay as they were.
    weighted = ["weighted"] if model.weighted_captions else []
    # the text attention masks change the embeddings (and Flux's entries hold the mask): keyed only when on
    masks = [
        name
        for name, on in (("t5_mask", model.t5_attention_mask), ("clip_mask", model.clip_attention_mask))
        if on
    ]
    return _key(
        [
            TEXT_FORMAT,
            caption,
            model.text_identity,
            model.family,
            model.clip_skip,
            dtype,
            *windows,
            *t5,
            *weighted,
            *masks,
        ]
    )


@attrs.define
class Keyer:
    """Computes an image's cache keys as the datasets pass builds it (so each ImagePlan is made once)."""

    model: ModelPlan | None
    latents: bool
    text: bool
    vae_dtype: str
    text_dtype: str
    text_keys: dict = attrs.field(factory=dict)  # caption -> key: captions repeat, hash each once
    trained_tokens: tuple[str, ...] = ()  # pivotal tokens: captions with one are never cached (they train)
    model_part: bytes = b""

    def __attrs_post_init__(self) -> None:
        if self.model is not None:
            self.model_part = _model_part(self.model.vae_identity, self.vae_dtype)

    def keys(
        self, d: Dataset, sha: str, bucket, resized, crop, caption: str | None
    ) -> tuple[tuple[str, ...], str]:
        """Latent keys, and the text key of `caption` (the text it always becomes; None: it
        changes per step)."""
        if self.model is None:
            return (), ""
        lkeys: tuple[str, ...] = ()
        if self.latents and d.crop == "center" and not d.color_aug and not d.face_crop:
            lkeys = (_latent_key(sha, bucket, resized, crop, False, self.model_part),)
            if d.flip:
                lkeys += (_latent_key(sha, bucket, resized, crop, True, self.model_part),)
        if not self.text or caption is None:
            return lkeys, ""
        return lkeys, self.keys_text(caption)

    def empty_key(self) -> str:
        """The key of the empty caption (dropped captions), "" without a text cache."""
        return self.keys_text("") if self.text and self.model is not None else ""

    def keys_text(self, caption: str) -> str:
        assert self.model is not None
        if caption not in self.text_keys:
            trained = self.trained_tokens and mentions_token(caption, self.trained_tokens)
            self.text_keys[caption] = "" if trained else text_key(caption, self.model, self.text_dtype)
        return self.text_keys[caption]


def t5_dropout(spec, model: ModelPlan | None) -> bool:
    """T5-XXL encodes with its dropout at every step (train.text_encoder_mode = "train" on a family with
    T5): its outputs differ per step, so no text embedding is cached."""
    return spec.train.text_encoder_mode == "train" and model is not None and has_t5(model.family)


def make_keyer(ctx: Context, model: ModelPlan | None, precision: PrecisionPlan) -> Keyer:
    c = ctx.spec.cache
    dtype = {p.name: p.dtype for p in precision.components}
    return Keyer(
        model=model,
        latents=c.latents,
        text=c.text_embeddings
        and not text_encoder_runs_trained(ctx.spec)
        and not t5_dropout(ctx.spec, model),
        vae_dtype=dtype["vae"],
        # the first text encoder's (the SDXL refiner has only text_encoder_2)
        text_dtype=next(d for name, d in dtype.items() if name.startswith("text_encoder")),
        trained_tokens=tuple(ctx.spec.pivotal.tokens),
    )


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
                found.update(
                    e.name[: -len(".safetensors")] for e in entries if e.name.endswith(".safetensors")
                )
    return found


def plan_cache(
    ctx: Context,
    model: ModelPlan | None,
    datasets: tuple[DatasetPlan, ...],
    caption_notes: tuple[str, ...] = (),
) -> CachePlan:
    """Where the caches live and how many entries the plan's keys find on disk now."""
    c, spec = ctx.spec.cache, ctx.spec
    notes: list[str] = list(caption_notes)
    text_on = c.text_embeddings and not text_encoder_runs_trained(spec) and model is not None
    if c.text_embeddings and text_encoder_runs_trained(spec):
        trains = "T5-XXL trains (train.t5)" if spec.train.t5 else "the text encoder trains"
        if not any_text_encoder_trains(spec):
            idle = "t5_idle" if spec.train.text_encoder_idle != "kohya" else "text_encoder_idle"
            trains = f'the text encoder carries the adapter under grad (train.{idle} = "kohya")'
        notes.append(f"text embeddings are not cached: {trains}")
    elif c.text_embeddings and t5_dropout(spec, model):
        text_on = False
        notes.append(
            "text embeddings are not cached: T5-XXL encodes in train mode "
            '(train.text_encoder_mode = "train"), its dropout differing every step; every caption is encoded '
            "at every step"
        )
    if text_on and spec.pivotal.tokens:
        notes.append(
            "text embeddings of captions with a pivotal token are not cached (the token embeddings train): "
            f"{_token_captions(datasets, spec.pivotal.tokens)} caption(s) encoded at every step"
        )
    notes += [
        f"dataset `{d.name}`: latents are not cached (random crops differ every epoch)"
        for d in datasets
        if c.latents and d.crop == "random"
    ]
    notes += [
        f"dataset `{d.name}`: latents are not cached (colour augmentation differs every step)"
        for d in datasets
        if c.latents and d.color_aug and d.crop != "random"
    ]
    notes += [
        f"dataset `{d.name}`: latents are not cached (the face crop draws a new scale and window every step)"
        for d in datasets
        if c.latents and d.face_crop is not None and not d.color_aug and d.crop != "random"
    ]
    keys: dict[str, set[str]] = {"latents": set(), "text": set()}
    for d in datasets:
        if d.caption_processing.empty_text_key:
            keys["text"].add(d.caption_processing.empty_text_key)
        for img in d.images:
            keys["latents"].update(img.latent_keys)
            if img.text_key:
                keys["text"].add(img.text_key)
    hits = {kind: len(ks & stored_keys(ctx.cache_dir, kind)) for kind, ks in keys.items()}
    return CachePlan(
        dir=str(ctx.cache_dir),
        latents=c.latents,
        text_embeddings=text_on,
        latent_hits=hits["latents"],
        latent_misses=len(keys["latents"]) - hits["latents"],
        text_hits=hits["text"],
        text_misses=len(keys["text"]) - hits["text"],
        notes=tuple(notes),
    )


def _token_captions(datasets: tuple[DatasetPlan, ...], tokens) -> int:
    """How many images' captions name a pivotal token (their text embeddings are computed every step)."""
    return sum(1 for d in datasets for img in d.images if mentions_token(img.caption or "", tokens))
