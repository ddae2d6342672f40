"""Live previews while validation images are sampled: a Tiny AutoEncoder (diffusers `AutoencoderTiny`)
decodes the latents every `plan.validation.preview.every` sampling steps, through the pipeline's
`callback_on_step_end`. Each image gets its frames (`previews/pNN-iNN-sKKK.png`) and an animated WebP of
its denoising (`previews/pNN-iNN.webp`, the final image last) in the validation folder; each frame may be
POSTed to a webhook.

Previews never stop training: a preview model that cannot load, a decode that fails or a webhook that does not
answer is logged (logger `dbspec.runtime.preview`) and the images are sampled without it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dbspec.plan.model import PreviewPlan
from dbspec.util.atomic import write_bytes_atomic

log = logging.getLogger(__name__)
_LOADED: dict[tuple[str, str, str, str], Any] = {}  # (model, path, device, dtype) -> the decoder, or None
WEBP_FRAME_MS = 250


def load_preview_vae(preview: PreviewPlan, device: torch.device, dtype: torch.dtype) -> Any | None:
    """The plan's Tiny AutoEncoder on `device` in `dtype`, loaded once per process; None (logged) when it
    cannot be loaded."""
    key = (preview.model, preview.path, str(device), str(dtype))
    if key not in _LOADED:
        try:
            _LOADED[key] = _load(preview).to(device=device, dtype=dtype).eval().requires_grad_(False)
        except Exception as exc:  # noqa: BLE001 - offline, missing, corrupt: previews are skipped, training goes on
            log.warning("live previews off: cannot load %s: %s: %s", preview.model, type(exc).__name__, exc)
            _LOADED[key] = None
    return _LOADED[key]


def _load(preview: PreviewPlan) -> Any:
    from diffusers import AutoencoderTiny

    if preview.source == "builtin":
        from dbspec.runtime.tiny import build_preview_vae

        return build_preview_vae(preview.model)
    if preview.path:
        return AutoencoderTiny.from_pretrained(preview.path)
    # A hub id not in the cache when planned: from_pretrained downloads it unless HF_HUB_OFFLINE is set.
    return AutoencoderTiny.from_pretrained(preview.model, revision=preview.revision or None)


class Previews:
    """The previews of one validation round: `callback(prompt_index, image_index, prompt)` is the pipeline's
    `callback_on_step_end` for one image, `finish(...)` writes that image's animation."""

    def __init__(self, preview: PreviewPlan, vae: Any, folder: Path, train_step: int, total_steps: int):
        self.plan, self.vae, self.folder = preview, vae, Path(folder) / "previews"
        self.train_step, self.total_steps = train_step, total_steps
        self._frames: list[Image.Image] = []
        self._decoding = vae is not None
        self._posting = bool(preview.webhook)
        self.paths: list[Path] = []  # every file written, in order
        self.posted = 0

    def callback(self, prompt_index: int, image_index: int, prompt: str):
        self._frames = []
        wanted = set(self.plan.sampling_steps)

        def on_step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
            sampling_step = step_index + 1
            if self._decoding and sampling_step in wanted:
                self._frame(callback_kwargs["latents"], prompt_index, image_index, prompt, sampling_step)
            return callback_kwargs

        return on_step_end

    def _frame(self, latents, prompt_index: int, image_index: int, prompt: str, sampling_step: int) -> None:
        try:
            image = self._decode(latents)
        except Exception as exc:  # noqa: BLE001 - a preview must never stop validation or training
            log.warning(
                "live previews off for this validation: decoding failed: %s: %s", type(exc).__name__, exc
            )
            self._decoding = False
            return
        self._frames.append(image)
        name = f"p{prompt_index:02d}-i{image_index:02d}-s{sampling_step:03d}.png"
        png = _png(image)
        write_bytes_atomic(self.folder / name, png)
        self.paths.append(self.folder / name)
        if self._posting:
            self._post(
                {
                    "event": "dbspec.preview",
                    "train_step": self.train_step,
                    "prompt_index": prompt_index,
                    "image_index": image_index,
                    "prompt": prompt,
                    "sampling_step": sampling_step,
                    "sampling_steps": self.total_steps,
                    "width": image.width,
                    "height": image.height,
                    "file": name,
                    "image_png_base64": base64.b64encode(png).decode("ascii"),
                }
            )

    def _decode(self, latents: torch.Tensor) -> Image.Image:
        # Pipeline latents are already scaled for the denoiser, the space TAESD decodes (its scaling_factor
        # is 1.0); the output is in [-1, 1].
        with torch.no_grad():
            pixels = self.vae.decode(latents[:1].to(device=self.vae.device, dtype=self.vae.dtype)).sample
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    def _post(self, payload: dict) -> None:
        request = urllib.request.Request(
            self.plan.webhook,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "dbspec"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.plan.webhook_timeout) as response:  # noqa: S310 - the spec's http(s) URL (DBS286)
                response.read()
            self.posted += 1
        except Exception as exc:  # noqa: BLE001 - refused, timeout, HTTP error: logged, training goes on
            # One failure stops posting for the rest of this validation: a dead webhook costs at most one
            # timeout per validation.
            log.warning(
                "preview webhook %s failed (%s: %s); no more previews posted in this validation",
                self.plan.webhook,
                type(exc).__name__,
                exc,
            )
            self._posting = False

    def finish(self, prompt_index: int, image_index: int, final: Image.Image) -> None:
        """The animated WebP of this image's frames, ending on the final image."""
        if not self._frames:
            return
        frames = [frame.convert("RGB") for frame in (*self._frames, final)]
        size = frames[-1].size
        frames = [frame if frame.size == size else frame.resize(size) for frame in frames]
        buffer = io.BytesIO()
        frames[0].save(
            buffer,
            format="WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=WEBP_FRAME_MS,
            loop=0,
            lossless=True,
        )
        path = self.folder / f"p{prompt_index:02d}-i{image_index:02d}.webp"
        write_bytes_atomic(path, buffer.getvalue())
        self.paths.append(path)
        self._frames = []


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
