"""Content-addressed tensor cache for latents and text embeddings, and the passes that fill it.

Layout, shared with the compiler (keep in step with `entry_path` in dbspec/compiler/caches.py, which
counts hits for `dbspec plan`; the runtime may not import the compiler):
<dir>/<kind>/<key[:2]>/<key>.safetensors, kind "latents" or "text". Keys hash everything that changes an entry
(image bytes, geometry, flip, encoder identity, dtype), so an entry is never stale, only missing or damaged; a
damaged one is deleted and rebuilt.

What a latent entry holds: the VAE posterior, `mean` and `std` (float32, (C, h, w), unscaled), not one
sample of it. The loop draws `mean + std * noise` each step and multiplies by the VAE's scaling factor, so
a cached run trains on the same distribution as an uncached one (`latent_dist.sample()` every step), as
diffusers' LoRA scripts do with their cached `latent_dist`. kohya caches a single sample, freezing the
VAE's noise for the whole run. The cost is twice the disk: 2 x 4 x 128 x 128 x 4 bytes = 512 KiB at 1024px.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import safetensors
import safetensors.torch
import torch
from rich.progress import Progress
from torch import Tensor

from dbspec.plan.captions import fixed_caption
from dbspec.plan.model import DatasetPlan, ImagePlan
from dbspec.runtime import faults
from dbspec.runtime.data import Share, load_pixels, own_share

log = logging.getLogger(__name__)

CacheKind = Literal["latents", "text", "embeddings"]
# Format tags match LATENT_FORMAT / TEXT_FORMAT in dbspec/compiler/caches.py (they are part of every key).
# "embeddings": the evaluation's reference-image embeddings (CLIP-I, DINO; runtime/evaluate.py).
FORMATS: dict[str, str] = {"latents": "latent-v1", "text": "text-v1", "embeddings": "embed-v1"}
REQUIRED: dict[str, tuple[str, ...]] = {
    "latents": ("mean", "std"),
    "text": ("prompt_embeds",),
    "embeddings": ("embeddings",),
}
_NONFINITE_HINT = {
    "latents": "an fp16 VAE overflowing (SDXL's original VAE does) is the usual cause: encode in fp32 or use "
    "the fp16-fix VAE",
    "text": "the text encoder overflowed in its dtype: encode in fp32",
    "embeddings": "the evaluation model overflowed in its dtype",
}
Job = TypeVar("Job")
# One item per encoder call: a VAE or text-encoder output depends, in its last bits, on which other items
# share the batch (kernel blocking), so a batch of one makes an entry's bytes a function of its own input
# alone and a resumed run that re-encodes an entry trains on the very same bytes. DreamBooth sets are small;
# the cost is a few seconds at most.
ENCODE_BATCH = 1


class CacheWriteError(Exception):
    """An entry could not be written (disk full, no permission): names the folder; the run stops cleanly."""


class TensorCache:
    """safetensors entries of one kind under `dir`; damaged entries read as misses and are deleted."""

    def __init__(
        self, dir: str | os.PathLike[str], kind: CacheKind, *, required: tuple[str, ...] | None = None
    ):
        if kind not in FORMATS:
            raise ValueError(f"cache kind must be one of {', '.join(FORMATS)}, got {kind!r}")
        self.root = Path(dir)
        self.kind = kind
        self.format = FORMATS[kind]
        # SDXL text entries also need "pooled_prompt_embeds": the loop passes both names.
        self.required = REQUIRED[kind] if required is None else required

    def path(self, key: str) -> Path:
        if len(key) < 2 or not key.isalnum():
            raise ValueError(f"cache keys are hex digests, got {key!r}")
        return self.root / self.kind / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The entry's tensors, or None when it is missing or damaged (then it is deleted, with a warning)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._discard(path, f"cannot be read ({exc})")
            return None
        try:
            tensors = safetensors.torch.load(data)
            meta = _metadata(data)
        except (safetensors.SafetensorError, ValueError, RuntimeError) as exc:  # ValueError covers bad JSON
            self._discard(path, f"is not a readable safetensors file ({exc})")
            return None
        problem = self._problem(key, tensors, meta)
        if problem:
            self._discard(path, problem)
            return None
        return tensors

    def put(self, key: str, tensors: Mapping[str, Tensor], meta: Mapping[str, str] | None = None) -> Path:
        """Store float tensors as float32 on CPU, atomically: a reader sees the old entry or
        the whole new one."""
        extra = dict(meta or {})
        if {"key", "format", "sha256"} & set(extra):
            raise ValueError("`key`, `format` and `sha256` metadata are set by the cache itself")
        missing = [name for name in self.required if name not in tensors]
        if missing:
            raise ValueError(f"{self.kind} entry {key} lacks tensors {missing}")
        prepared = {name: _prepare(t) for name, t in tensors.items()}
        for name, t in prepared.items():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{self.kind} tensor `{name}` for key {key} holds NaN or inf values; not cached. "
                    f"{_NONFINITE_HINT[self.kind]}"
                )
        data = safetensors.torch.save(
            prepared,
            metadata={**extra, "key": key, "format": self.format, "sha256": tensor_checksum(prepared)},
        )
        path = self.path(key)
        try:
            _write_atomic(path, data)
            faults.reached("cache.entry")
        except OSError as exc:
            raise CacheWriteError(
                f"cannot write {self.kind} cache entry into {path.parent} "
                f"({exc.strerror or exc}; {len(data)} bytes): free disk space or set cache.dir "
                "to a folder with room, then run again"
            ) from exc
        return path

    def _problem(self, key: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> str:
        if "key" not in meta or meta["key"] != key or "format" not in meta or meta["format"] != self.format:
            return f"has metadata {meta}, expected key {key} and format {self.format}"
        missing = [name for name in self.required if name not in tensors]
        if missing:
            return f"lacks tensors {missing}"
        if meta.get("sha256") != tensor_checksum(
            tensors
        ):  # a flipped bit loads fine: only a checksum sees it
            return "does not match its checksum (damaged on disk, or written by an older dbspec)"
        bad = [
            name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        return f"holds NaN or inf values in {bad}" if bad else ""

    def _discard(self, path: Path, problem: str) -> None:
        log.warning("cache entry %s %s; deleting it, it will be rebuilt", path, problem)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete damaged cache entry %s: %s", path, exc)


@attrs.frozen(kw_only=True)
class CacheCounts:
    hits: int  # valid entries found
    encoded: int  # entries computed and written now


def ensure_latents(
    cache: TensorCache,
    datasets: Sequence[DatasetPlan],
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    batch_size: int = ENCODE_BATCH,
    progress: Progress | None = None,
    share: Share = (0, 1),
) -> CacheCounts:
    """Encode every latent the plan keys (ImagePlan.latent_keys, one per flip state) that is not cached.

    `encode` maps float32 CPU pixels (B, 3, H, W) in [-1, 1] to the posterior's (mean, std), each
    (B, C, h, w): the loop passes a function returning `dist.mean, dist.std` of
    `vae.encode(x.to(device, dtype)).latent_dist`. Batches hold one bucket (one shape); torch.no_grad() is on.
    `share` (rank, processes): this process checks and fills only its share of the keys (see `_fill`).
    """
    jobs: dict[str, tuple[ImagePlan, bool, bool]] = {}  # key -> (image, flip, upright)
    for d in datasets:
        for img in d.images:
            for flip, key in zip((False, True), img.latent_keys):  # the compiler's order: unflipped first
                jobs.setdefault(key, (img, flip, d.exif_orientation == "apply"))

    def encode_batch(batch: list[tuple[ImagePlan, bool, bool]]) -> list[dict[str, Tensor]]:
        pixels = torch.stack(
            [load_pixels(img, crop_mode="center", flip=flip, upright=up) for img, flip, up in batch]
        )
        mean, std = encode(pixels)
        _check_batch({"mean": mean, "std": std}, len(batch))
        return [{"mean": mean[i], "std": std[i]} for i in range(len(batch))]

    return _fill(
        cache,
        jobs,
        encode_batch,
        group=lambda job: job[0].bucket,
        batch_size=batch_size,
        progress=progress,
        share=share,
    )


def ensure_text(
    cache: TensorCache,
    datasets: Sequence[DatasetPlan],
    encode: Callable[[list[str]], Mapping[str, Tensor]],
    *,
    batch_size: int = ENCODE_BATCH,
    progress: Progress | None = None,
    share: Share = (0, 1),
) -> CacheCounts:
    """Encode every caption the plan keys (ImagePlan.text_key) that is not cached; one entry per distinct key.

    `encode` maps captions to batched tensors, e.g. {"prompt_embeds": (B, 77, D)} and, for SDXL,
    {"pooled_prompt_embeds": (B, D2)} too. `share`: as in `ensure_latents`.
    """
    jobs: dict[str, str] = {}
    for d in datasets:
        if d.caption_processing.empty_text_key:  # dropped captions
            jobs.setdefault(d.caption_processing.empty_text_key, "")
        for img in d.images:
            if img.text_key:  # a caption that never changes: the text it always becomes
                text = fixed_caption(img.caption, d.caption_processing)
                if text is None:
                    raise ValueError(f"the plan caches the caption of {img.path}, which changes per step")
                jobs.setdefault(img.text_key, text)

    def encode_batch(captions: list[str]) -> list[dict[str, Tensor]]:
        out = dict(encode(list(captions)))
        _check_batch(out, len(captions))
        return [{name: t[i] for name, t in out.items()} for i in range(len(captions))]

    return _fill(
        cache, jobs, encode_batch, group=lambda job: 0, batch_size=batch_size, progress=progress, share=share
    )


def _fill(
    cache: TensorCache,
    jobs: dict[str, Job],
    encode_batch: Callable[[list[Job]], list[dict[str, Tensor]]],
    *,
    group: Callable[[Job], object],
    batch_size: int,
    progress: Progress | None,
    share: Share = (0, 1),
) -> CacheCounts:
    """Check every key of this process's share, then encode its misses in batches of one group each,
    writing entries as they come.

    With several processes, process r of N takes the keys r, r+N, r+2N, ... in the plan's order: a share is
    a function of the plan alone, never of what another process already wrote, so every key is filled by
    exactly one process and no process reads (or deletes as damaged) an entry another may be writing. An
    entry's bytes depend on its own input alone (ENCODE_BATCH), so a split fill writes what one process
    would. The caller waits for every process before anyone reads the cache."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mine = own_share(list(jobs), share)
    misses = [key for key in mine if cache.get(key) is None]  # reads and verifies every hit once
    groups: dict[object, list[str]] = {}
    for key in misses:
        groups.setdefault(group(jobs[key]), []).append(key)
    task = progress.add_task(f"caching {cache.kind}", total=len(misses)) if progress and misses else None
    for keys in groups.values():
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            with torch.no_grad():
                entries = encode_batch([jobs[key] for key in chunk])
            for key, tensors in zip(chunk, entries):
                cache.put(key, tensors)
            if task is not None:
                progress.advance(task, len(chunk))
    return CacheCounts(hits=len(mine) - len(misses), encoded=len(misses))


def _check_batch(tensors: Mapping[str, Tensor], size: int) -> None:
    wrong = {name: tuple(t.shape) for name, t in tensors.items() if t.ndim == 0 or t.shape[0] != size}
    if wrong:
        raise ValueError(f"the encoder returned shapes {wrong} for a batch of {size}")


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order: what an
    entry must still hold."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _prepare(t: Tensor) -> Tensor:
    t = t.detach().to("cpu", copy=True)  # own storage: a row of a batch must not drag the batch along
    return (t.float() if t.is_floating_point() else t).contiguous()


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's JSON header (8-byte little-endian length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return header["__metadata__"] if "__metadata__" in header else {}


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the target's folder, then os.replace: never a half-written entry under the real name.

    No fsync: a crash can at worst leave a damaged entry, which `get` detects and rebuilds, and
    fsyncing thousands of small entries would cost seconds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
