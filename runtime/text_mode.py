"""validation.text_encoder_mode = "training": kohya's validation loss and sample images encode their prompts
with the text encoders in the mode of training steps (train_network.py's validation puts only its network in
eval mode; flux_train_utils.sample_images switches no mode at all), so under --gradient_checkpointing T5-XXL
(Flux, SD3) encodes with its dropout while the network's own dropouts are off.

The dropout draws come from torch's global generators, as T5's nn.Dropout draws them. They are seeded here
for each evaluation and each validation image (kohya seeds them with its validation seed, and with each
sample prompt's seed) and restored afterwards, so the training stream draws exactly what it draws without
validation and a resumed run repeats the uninterrupted one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def adapters_eval(encoders: Iterable[torch.nn.Module]) -> None:
    """The adapter layers of each encoder (peft's tuner layers: LoRA and the LyCORIS kinds) in eval mode,
    their dropouts off, as kohya's network.eval(); the encoder's own modules keep their mode."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for encoder in encoders:
        for module in encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module.eval()


@contextlib.contextmanager
def seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """torch's global CPU generator (and `device`'s CUDA one) seeded with `seed` inside, restored after."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
