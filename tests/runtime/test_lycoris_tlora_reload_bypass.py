"""`dbspec sample` reloads T-LoRA layers in the bypass_mode training gave them (runtime/lycoris_tlora.py
set_trained_tlora_bypass) where a run holds kinds beside T-LoRA: a LoCon adapter in bypass_mode whose
blocks give the self-attention T-LoRA (kind_adapter's pass, the adapter's bypass) and the cross-attention
Diag-OFT with a bypass of their own off (mixed_kinds.own_bypass, which built every reloaded layer in the
default forward, the T-LoRA layers left there). A tlora adapter's T-LoRA and Diag-OFT blocks with a bypass of
their own on reload so too (they did before: its bypass_mode beside other kinds is DBS578)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.runtime.runspec import compile_spec, write_spec

LOCON_TLORA_OFT = """
[adapter]
kind = "lora"
rank = 4
alpha = 1.0
bypass = true

[[adapter.blocks]]
pattern = "attn1"
kind = "tlora"
rank = 4
alpha = 1.0

[[adapter.blocks]]
pattern = "attn2"
kind = "diag-oft"
rank = 4
alpha = 0.0
bypass = "off"
"""


def _flags(unet) -> dict[str, tuple[str, bool]]:
    """Each T-LoRA and Diag-OFT layer's bypass flag."""
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    out = {}
    for name, layer in unet.named_modules():
        if isinstance(layer, TloraLayer):
            out[name] = ("tlora", layer.tlora_bypass)
        elif isinstance(layer, DiagOftLayer):
            out[name] = ("diag-oft", layer.oft_bypass)
    return out


def test_tlora_blocks_beside_an_own_bypass_block_reload_in_training_s_bypass(tmp_path):
    from dbspec.runtime.execute import execute
    from dbspec.runtime.sample import SampleRequest, load_pipeline

    spec = write_spec(tmp_path, steps=2, extra=LOCON_TLORA_OFT)
    plan = compile_spec(spec, ["train.text_encoder=false"])
    a = plan.adapter
    assert (a.kind, a.bypass) == ("lora", True)
    assert [(b.kind, b.bypass) for b in a.blocks] == [("tlora", True), ("diag-oft", False)]
    done = execute(plan, keep_models=True)
    assert done.status == "finished"
    trained = done.components.unet.eval()
    before = _flags(trained)
    assert {v for v in before.values()} == {("tlora", True), ("diag-oft", False)}

    pipe = load_pipeline(SampleRequest(source=Path(done.output), settings=plan.validation))
    again = pipe.unet.to(trained.device, trained.dtype).eval()
    assert _flags(again) == before
    generator = torch.Generator().manual_seed(0)
    config = trained.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    inputs = (sample.to(trained.device, trained.dtype), 500, context.to(trained.device, trained.dtype))
    with torch.no_grad():
        want = trained(*inputs).sample
        assert torch.equal(again(*inputs).sample, want)
        # the T-LoRA layers' default forward (what the reload gave them) computes the same update, rounded
        # otherwise (TLoraModule's (W + dW) - W): the flags, not only the output, tell the forwards apart
        for layer in again.modules():
            if hasattr(layer, "tlora_bypass"):
                layer.tlora_bypass = False
        assert not torch.equal(again(*inputs).sample, want)


# a tlora adapter (bypass_mode off: on beside other kinds is DBS578) whose down blocks' self-attention
# T-LoRA and cross-attention Diag-OFT set a bypass of their own on: kind_adapter's pass builds the T-LoRA
# layers in the default forward, set_tlora_bypass turns the down blocks' on, the rest stay off
TLORA_OFT = """
[adapter]
kind = "tlora"
rank = 4
alpha = 1.0

[[adapter.blocks]]
pattern = "down_blocks.*attn1"
rank = 4
alpha = 1.0
bypass = "on"

[[adapter.blocks]]
pattern = "attn2"
kind = "diag-oft"
rank = 4
alpha = 0.0
bypass = "on"
"""


def test_tlora_adapter_beside_an_own_bypass_block_reloads_in_training_s_bypass(tmp_path):
    """No run: the U-Net as training builds it (adapters.add_lora), its trained tensors moved off their
    start, saved as a run saves its adapter folders and loaded back with the arguments `dbspec sample`
    passes: each layer's flag and the output those of the built U-Net."""
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters, save_peft_adapters

    plan = compile_spec(write_spec(tmp_path, steps=1, extra=TLORA_OFT), ["train.text_encoder=false"])
    a = plan.adapter
    unet = build_pipeline("builtin:tiny-sd1").unet
    add_lora(unet, a, a.denoiser_targets, seed=0, conv=True)
    before = _flags(unet)
    assert set(before.values()) == {("tlora", True), ("tlora", False), ("diag-oft", True)}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_tlora_lambda" in name or "lora_oft_blocks" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    save_peft_adapters(tmp_path / "folders", {"unet": unet}, "fp32")
    again = build_pipeline("builtin:tiny-sd1").unet
    loaded = load_peft_adapters(
        tmp_path / "folders", {"unet": again}, a.lokr_unit_scale, a.bypass, a.oft_form, blocks=a
    )
    assert loaded == ["unet"] and _flags(again) == before
    config = unet.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        assert torch.equal(
            again.eval()(sample, 500, context).sample, unet.eval()(sample, 500, context).sample
        )
