"""dbspec.runtime: executes a Plan. The only package that imports torch, diffusers, accelerate and peft."""

import logging


class _TorchvisionFallbackNotice(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL version without torchvision.
    diffusers' Stable Diffusion pipelines name CLIP and SigLIP image processors (for safety checkers) when
    imported; dbspec never runs them, so the notice on every run says nothing. Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


# transformers' loggers are plain `logging` loggers named after their modules; no import of transformers here.
logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNotice())
