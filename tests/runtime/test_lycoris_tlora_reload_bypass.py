"""`dbspec sample` reloads T-LoRA layers in the bypass_mode training gave them (runtime/lycoris_tlora.py
set_trained_tlora_bypass) where a run holds kinds beside T-LoRA: a LoCon adapter in bypass_mode whose
blocks give the self-attention T-LoRA (kind_adapter's pass, the adapter's bypass) and the cross-attention
Diag-OFT with a bypass of their own off (mixed_kinds.own_bypass, which built every reloaded layer in the
default forward, the T-LoRA layers left there)."""

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
