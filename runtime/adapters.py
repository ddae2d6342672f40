"""LoRA adapters through peft (diffusers' and transformers' add_adapter), and which parameters train."""

from __future__ import annotations

import torch
from peft import LoraConfig

from dbspec.plan.model import AdapterPlan

ADAPTER_NAME = "default"


def lora_config(adapter: AdapterPlan, targets: tuple[str, ...]) -> LoraConfig:
    return LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      init_lora_weights="gaussian", target_modules=list(targets))


def add_lora(module: torch.nn.Module, adapter: AdapterPlan, targets: tuple[str, ...], seed: int) -> None:
    """Attach a LoRA adapter; its random init is seeded so a run is reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.add_adapter(lora_config(adapter, targets))


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def freeze(module: torch.nn.Module) -> None:
    module.requires_grad_(False)


def has_lora(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "peft_config", None))
