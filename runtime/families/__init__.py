"""One runtime module per model family, behind `FamilyRuntime`.

The registry entry (`dbspec.families.FamilySpec`) holds what a family *is* as data; its runtime module holds
what only code can say: how prompts become embeddings, what extra conditioning the denoiser takes, how it is
called, how noise is added and what the loss regresses to, which pipeline samples it, and how its weights are
exported. The entry's `runtime` field names the module (`dbspec.runtime.families.<runtime>`); the module's
`runtime(spec)` returns the object. SD1 and SD2 share `sd` (they differ only in data); SDXL is `sdxl`; SD3 is
`sd3`. The objectives: `ddpm` (the UNet families) and `flow` (flow matching: SD3).
Nothing outside this package tests a family name: the loop, caches, sampling and exports ask `family_runtime`.
A family whose registry entry says `text_encoder_dropout` also has `drop_text_encoders(text, dropped,
text_encoders, tokenizers)`: the text conditioning with each sample's dropped encoder outputs zeroed
(loss.text_encoder_dropout; runtime/text_dropout.py calls it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

from dbspec.families import FamilySpec, family_spec

if TYPE_CHECKING:
    import torch

    from dbspec.plan.model import LossPlan, Plan
    from dbspec.runtime.models import Components


class Objective(Protocol):
    """The noise process a family trains under: its scheduler, the noisy input, and the loss target."""

    def noise_scheduler(
        self, config: dict, *, prediction: str, zero_terminal_snr: bool, flow=None
    ) -> Any: ...

    def sample_timesteps(
        self, loss: LossPlan, batch: int, generator, scheduler, latent_size: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """A batch's training timesteps, drawn from `generator` (the run's: resume draws the same);
        `latent_size` (h, w) for draws that depend on the image size (Flux's time shift)."""
        ...

    def output(self, loss: LossPlan, scheduler, pred, noisy, timesteps) -> torch.Tensor:
        """What the loss compares with the target: the prediction, or kohya's Flux transforms of it."""
        ...

    def weights(self, loss: LossPlan, scheduler, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (B,) of the timesteps (ones when no weighting is on)."""
        ...

    def huber_threshold(self, loss: LossPlan, scheduler, timesteps: torch.Tensor) -> torch.Tensor | None:
        """The pseudo-Huber c per sample, None unless the loss kind takes one."""
        ...

    def add_noise(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor): ...

    def target(
        self,
        scheduler,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        kind: str,
        loss: LossPlan | None = None,
    ) -> torch.Tensor:
        """What the prediction is compared with; `loss` for the forms that depend on it (flow_prediction)."""
        ...


class Exports(Protocol):
    """Weights in the layouts other tools load (docs/exports.md)."""

    def single_file_state(
        self, *, denoiser, vae, text_encoders: list, prediction: str, zero_terminal_snr: bool
    ) -> dict: ...

    def kohya_lora_state(
        self, *, denoiser, text_encoders: list, dtype: str
    ) -> tuple[dict, dict[str, str]]: ...

    def kohya_metadata(self, prediction: str) -> dict[str, str]: ...


class FamilyRuntime(Protocol):
    spec: FamilySpec
    objective: Objective
    exports: Exports

    def load(self, plan: Plan) -> Components:
        """The plan's model components (denoiser, VAE, text encoders, tokenizers, noise scheduler)."""
        ...

    def encode_prompts(
        self,
        text_encoders: list,
        tokenizers: list,
        prompts: list[str],
        *,
        clip_skip: int,
        max_tokens: int,
        device,
    ) -> dict[str, torch.Tensor]:
        """Text conditioning per prompt: {"prompt_embeds": (B, T, D)} and any extra outputs ("pooled");
        max_tokens beyond one window encodes several (runtime/text.py)."""
        ...

    def conditioning(self, text: dict, samples: Sequence, device) -> dict:
        """Extra denoiser keyword arguments for a batch of samples (SDXL: pooled text and size ids)."""
        ...

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, text: dict, extra: dict):
        """The denoiser's output for noisy latents."""
        ...

    def pipeline_class(self) -> type:
        """The diffusers pipeline that samples the family."""
        ...

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        """Pipeline keyword arguments for prompts encoded by `encode_prompts` (prompts longer than the
        pipeline's own 77-token encoding)."""
        ...


@functools.cache
def family_runtime(name: str) -> FamilyRuntime:
    """The runtime object of family `name` (KeyError names the known families)."""
    spec = family_spec(name)
    return import_module(f"{__name__}.{spec.runtime}").runtime(spec)
