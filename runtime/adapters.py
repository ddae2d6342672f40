"""LoRA adapters through peft's own API, and which parameters train.

Adapters are injected with `peft.inject_adapter_in_model` for every module, UNet and text encoders alike, not
through diffusers' or transformers' `add_adapter`: those integrations gate on peft versions of their own
(transformers 5.24 asks for peft >= 0.22, unreleased when it shipped), and peft's API is
what they both call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from dbspec.plan.model import AdapterPlan

ADAPTER_NAME = "default"


def lora_config(adapter: AdapterPlan, targets: tuple[str, ...]) -> LoraConfig:
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def add_lora(module: torch.nn.Module, adapter: AdapterPlan, targets: tuple[str, ...], seed: int) -> None:
    """Attach a LoRA adapter; its random init is seeded so a run is reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_lora(module, lora_config(adapter, targets))


def inject_lora(module: torch.nn.Module, config: LoraConfig) -> None:
    """peft wraps the targeted layers in place, marks only the adapter weights trainable and sets
    `module.peft_config`, which the exporters read."""
    inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)


@contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """The base model's behaviour inside the block: every LoRA layer passes its input through unchanged."""
    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise RuntimeError("a base-model prior needs a LoRA run or a frozen teacher copy")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_adapter(module: torch.nn.Module | None) -> tuple[torch.nn.Module, str] | None:
    """The LoRA adapter a peft-adapted module carries, as (the plain module whose names are the model's own
    paths, the adapter's name); None when it carries none. The one reader the LoRA writers (diffusers format
    in checkpoints.py, kohya format in exports.py) share."""
    from peft import PeftModel

    if module is None or not getattr(module, "peft_config", None):
        return None
    if isinstance(module, PeftModel):  # its keys carry a base_model.model. prefix the model's own paths lack
        module = module.get_base_model()
    name = ADAPTER_NAME if ADAPTER_NAME in module.peft_config else next(iter(module.peft_config))
    return module, name


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def freeze(module: torch.nn.Module) -> None:
    module.requires_grad_(False)
