"""LoRA goes through peft's own API: no diffusers or transformers integration gate can stop it.

transformers 5.24 refused `add_adapter` unless peft >= 0.22 (unreleased when it shipped). The gate is a module
constant that each integration checks when called; raising it past any release proves that training a UNet and
text-encoder LoRA, with the base-model prior that switches adapters off, never passes through such a gate."""

from __future__ import annotations

from pathlib import Path

import diffusers.loaders.peft
import pytest
import torch
import transformers.integrations.peft

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import adapters_disabled, inject_lora, lora_config
from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import TEXT_ENCODER_LORA, make_plan

UNRELEASED = "99.0"


@pytest.fixture
def peft_gates_closed(monkeypatch):
    monkeypatch.setattr(transformers.integrations.peft, "MIN_PEFT_VERSION", UNRELEASED)
    monkeypatch.setattr(diffusers.loaders.peft, "MIN_PEFT_VERSION", UNRELEASED)
    with pytest.raises(ValueError, match="PEFT"):  # the gate is really closed for the integrations' own API
        build_pipeline("builtin:tiny-sd1").text_encoder.add_adapter(lora_config(_Adapter(), ("q_proj",)))


def _Adapter() -> AdapterPlan:  # noqa: N802 (reads as the plan it stands for)
    return AdapterPlan(kind="lora", rank=2, alpha=2.0)


def test_text_encoder_lora_trains_with_the_base_model_prior_behind_closed_gates(tmp_path, peft_gates_closed):
    plan = make_plan(tmp_path, steps=2, extra=TEXT_ENCODER_LORA + '\n[loss]\nprior = "base_model"\n')
    result = execute(plan)
    assert result.status == "finished"
    assert (Path(result.final) / "pytorch_lora_weights.safetensors").exists()


def test_adapters_disabled_gives_the_base_output_and_restores_the_adapter():
    encoder = build_pipeline("builtin:tiny-sd1").text_encoder.requires_grad_(False)
    ids = torch.tensor([[0, 5, 6, 7, 1]])
    with torch.no_grad():
        base = encoder(ids).last_hidden_state
        inject_lora(encoder, lora_config(_Adapter(), ("q_proj", "v_proj")))
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        adapted = encoder(ids).last_hidden_state
        with adapters_disabled(encoder):
            off = encoder(ids).last_hidden_state
        again = encoder(ids).last_hidden_state
    assert not torch.allclose(adapted, base)
    assert torch.equal(off, base) and torch.equal(again, adapted)
    assert all(("lora_" in n) == p.requires_grad for n, p in encoder.named_parameters())


def test_adapters_disabled_without_lora_says_what_is_needed():
    encoder = build_pipeline("builtin:tiny-sd1").text_encoder
    with pytest.raises(RuntimeError, match="LoRA run or a frozen teacher"), adapters_disabled(encoder):
        pass
