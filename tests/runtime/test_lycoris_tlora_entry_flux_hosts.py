"""A T-LoRA entry's own start on Flux's (SD3's, Chroma's) fused Linears on a GLoRA, full or IA^3 network
(issue 12, was DBS403, a spec's DBS622 with fused_projections): lycoris-lora 4.1.3's create_network hands
TLoraModule the entry's `sig_type` / `use_data_init` whatever the network's algorithm, and dbspec fits a
tlora block's fused layers in the same pass beside any kind's (runtime/prepare.py _tie_fused_kinds,
runtime/lycoris_tlora.py fit_fused_tlora: one SVD of kohya's stacked weight, Q and λ shared by the parts).
Checked as beside LoCon / LoKr (test_lycoris_tlora_entry_starts.py's checks, run on these networks): the
sig_type case (Flux, SD3, Chroma) every kohya layer's module (TLoraModule with LyCORIS's own frozen start
at that sig_type, GLoRAModule, FullModule, IA3Module) against the parts (outputs, input gradients), every
trained tensor's gradient LyCORIS's; the random start each fused T-LoRA layer's Q, P, λ and frozen copy bit
for bit TLoraModule(use_data_init=False)'s on kohya's stacked Linear from the generator state its
first-built part drew at, the generator after alike. No tiny run (the runtime path is unchanged)."""

from __future__ import annotations

import pytest
import torch

import tests.runtime.test_lycoris_tlora_entry_starts as starts

pytest.importorskip("lycoris.modules.tlora")


@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
@pytest.mark.parametrize("network", ["glora", "full", "ia3"])
def test_fused_tlora_entry_sig_type_beside_glora_full_and_ia3(tmp_path, monkeypatch, family, network):
    """A T-LoRA entry's own `sig_type = "last"` on a GLoRA (full, IA^3) network on Flux's fused Linears:
    test_lycoris_tlora_entry_starts.py's check (every module's outputs and input gradients against the parts),
    each of LyCORIS's trained tensors' gradients compared, none left out (FullModule's by its Parameter names
    `weight` / `bias`: our FullLayer's trained weight, test_lycoris_tlora_entry_hosts.py)."""
    import tests.runtime.test_lycoris_mixed_flow_bypass_dropout as bypass_dropout

    export, counted = _full_named_as_lycoris(bypass_dropout.lycoris_state), []

    def every_grad(unet, encoders, made, family):
        """_grads_as_lycoris's check, every LyCORIS trained tensor compared (the count kept), its tolerance
        relative to the tensor's largest gradient (a FullModule weight's float32 sums run to ~1e2)."""
        grads = {
            f"{n}.{k}": v.grad for n, m in made.items() for k, v in m.named_parameters() if v.grad is not None
        }
        assert len(grads) == sum(p.requires_grad for m in made.values() for p in m.parameters())
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.grad if p.grad is not None else torch.zeros_like(p)
        ours = export(unet=unet, text_encoders=encoders, family=family, dtype="fp32")
        for key, value in ours.items():
            if key in grads:
                want = grads[key].reshape(value.shape)
                atol = 1e-6 * max(1.0, want.abs().max().item())
                torch.testing.assert_close(value, want, rtol=1e-4, atol=atol, msg=key)
        counted.append((len(grads.keys() & ours.keys()), len(grads)))
        return 2 * len(made)  # the shared check's floor; the count is checked exactly below

    monkeypatch.setattr(bypass_dropout, "_grads_as_lycoris", every_grad)
    starts.test_fused_tlora_entry_sig_type_beside_other_kinds(tmp_path, monkeypatch, family, network)
    [(compared, want)] = counted
    assert compared == want


def _full_named_as_lycoris(export):
    """lycoris_state for the gradients' check (our trained tensors holding their gradients): each full
    layer's `diff` / `diff_b` (W' - W) written with W zero, so the gradient itself, by FullModule's Parameter
    names `weight` / `bias` (FullModule trains W + diff, our FullLayer W', the same gradient)."""
    from dbspec.runtime.lycoris_full import FullLayer

    def exported(**kwargs):
        bases = [layer.get_base_layer() for layer in kwargs["unet"].modules() if isinstance(layer, FullLayer)]
        kept = [(b, b.weight.data, None if b.bias is None else b.bias.data) for b in bases]
        for base, weight, bias in kept:
            base.weight.data = torch.zeros_like(weight)
            if bias is not None:
                base.bias.data = torch.zeros_like(bias)
        try:
            tensors = export(**kwargs)
        finally:
            for base, weight, bias in kept:
                base.weight.data = weight
                if bias is not None:
                    base.bias.data = bias
        assert any(k.endswith(".diff") for k in tensors) == bool(kept)
        names = {".diff": ".weight", ".diff_b": ".bias"}
        return {
            next((k[: -len(e)] + n for e, n in names.items() if k.endswith(e)), k): v
            for k, v in tensors.items()
        }

    return exported


@pytest.mark.parametrize("network", ["glora", "full", "ia3", "dylora"])
def test_flux_tlora_entry_random_start_beside_glora_full_and_ia3(tmp_path, monkeypatch, network):
    """A T-LoRA entry's own `use_data_init = false` on a GLoRA (full, IA^3, DyLoRA: was DBS403 there) network,
    Flux's fused Linears."""
    starts.test_flux_tlora_entry_random_start_beside_other_kinds(tmp_path, monkeypatch, network)


@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_fused_tlora_entry_sig_type_beside_dylora(tmp_path, monkeypatch, family):
    """A T-LoRA entry's own `sig_type = "last"` on a DyLoRA network on Flux's / SD3's / Chroma's fused
    Linears (was DBS403, a spec's DBS622 with fused_projections: "unchecked beside the fused DyLoRA layers"):
    the plan's T-LoRA blocks beside the dylora adapter's layers (fitted after tie_fused_dylora, prepare.py
    _tie_fused_kinds), each kohya layer's TLoraModule (LyCORIS's own frozen start at that sig_type on the
    stacked weight) loaded from our export computes what the parts do in training (outputs, input gradients)
    and every T-LoRA tensor's gradient is LyCORIS's. The DyLoRA layers' own checks against DyLoraModule on
    these fused Linears: test_lycoris_mixed_flow_dylora.py."""
    from types import SimpleNamespace

    from tests.runtime.test_lycoris_flow_tlora_mixed_opts import FAMILIES, _built, _layers_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _grads_as_lycoris
    from tests.runtime.test_lycoris_tlora import _no_gc

    _no_gc(monkeypatch)
    file = FAMILIES[family][1].replace("OWN", 'sig_type = "last"')
    plan, ours, layers, made = _built(
        tmp_path, monkeypatch, family, file, {"algo": "dylora"}, only="TLoraModule"
    )
    a = plan.adapter
    assert a.fused and a.kind == "dylora"
    assert {(b.kind, b.sig_type) for b in a.blocks if b.kind == "tlora"} == {("tlora", "last")}
    tloras = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "TLoraModule"}
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", "DyLoraModule"}
    assert tloras and all(m.sig_type == "last" for m in tloras.values())
    compared = _layers_as_lycoris(SimpleNamespace(unet_loras=list(tloras.values())), ours, layers, 0.0, False)
    assert any(fused for _, fused in compared.values())  # a fused T-LoRA layer among them
    assert _grads_as_lycoris(ours, [], tloras, family) >= 3 * len(tloras)
