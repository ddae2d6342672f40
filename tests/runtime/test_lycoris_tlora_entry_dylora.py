"""A T-LoRA entry's own start on a DyLoRA network on SD 1.x/2.x and SDXL (issue 12, was DBS403, a spec's
DBS622: its DyloraBlock carried no sig_type / data_init): lycoris-lora 4.1.3's create_network hands
TLoraModule the entry's `sig_type` / `use_data_init` whatever the network's algorithm, and dbspec builds a
tlora block's layers in their own pass beside the DyLoRA layers (runtime/mixed_kinds.py), as beside LoCon /
LoHa / LoKr / GLoRA / full / IA^3. Checked on the tiny SD 1.x (block_size = network_dim): the sig_type case
each TLoraModule of LyCORIS's network, our export loaded, against our T-LoRA layer (its frozen start ours at
that sig_type, not the principal one; training outputs, input gradients, every trained tensor's gradient
by LyCORIS's name), the whole U-Net not compared (DyLoraModule draws a block in eval too, where dbspec's
DyLoRA layer is the saved LoRA); the random start test_lycoris_tlora_entry_random's check (each layer's Q,
P, λ and frozen copy bit for bit TLoraModule's draw from the generator state the layer drew at). Flux / SD3
/ Chroma's fused Linears beside a DyLoRA network's stay refused (unchecked). No tiny run."""

from __future__ import annotations

import pytest
import torch

import tests.runtime.test_lycoris_tlora_entry_random as entry_random
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.lycoris_tlora import TloraLayer
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_entry_signs import _ours, _plan, _preset, _theirs

pytest.importorskip("lycoris.modules.tlora")


@pytest.mark.parametrize("sig_type", ["last", "middle"])
def test_tlora_entry_sig_type_beside_dylora(pipe, tmp_path, monkeypatch, sig_type):  # noqa: F811
    """A T-LoRA entry's own `sig_type` on a DyLoRA network: its tlora block's sig_type (DyloraBlock's), each
    T-LoRA layer (and its frozen copy) starting from those triplets as the TLoraModule LyCORIS builds beside
    the DyLoraModules does, our weights loaded into it: its frozen start ours (not the principal one), the
    same training outputs, input gradients and every trained tensor's gradient by LyCORIS's name. (The
    DyLoRA layers themselves are not compared here: DyLoraModule draws a block in eval too, where dbspec's
    layer is the saved LoRA; test_lycoris_mixed_dylora.py checks them.)"""
    args = {"algo": "dylora", "block_size": "4"}
    plan = _plan(tmp_path, _preset("tlora", f'sig_type = "{sig_type}"'), args, 1.0)
    a = plan.adapter
    assert a.kind == "dylora"
    assert [(b.kind, b.sig_type, b.data_init) for b in a.blocks] == [("tlora", sig_type, True)]
    ours = _ours(pipe, a, {})
    made, _ = _theirs(pipe, tmp_path, monkeypatch, args, 1.0)
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", "DyLoraModule"}
    theirs = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "TLoraModule"}
    tensors = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(
        {k: v for k, v in tensors.items() if k.split(".")[0] in theirs}, strict=False
    )
    assert not result.unexpected_keys, result
    layers = {
        "lora_unet_" + n.replace(".", "_"): m for n, m in ours.named_modules() if isinstance(m, TloraLayer)
    }
    assert theirs and layers.keys() == theirs.keys()
    g = torch.Generator().manual_seed(5)
    for name, m in theirs.items():
        assert m.sig_type == sig_type
        layer = layers[name]
        torch.testing.assert_close(
            layer.lora_tlora_base_lambda["default"].reshape(m.base_lambda.shape), m.base_lambda, msg=name
        )
        s = torch.linalg.svdvals(m.org_module[0].weight.detach().float().reshape(m.shape[0], -1))
        assert not torch.allclose(m.base_lambda.flatten(), s[: m.lora_dim], atol=1e-4), name  # not principal
        base = layer.get_base_layer()
        shape = (2, base.in_features) if isinstance(base, torch.nn.Linear) else (2, base.in_channels, 4, 4)
        x = torch.randn(shape, generator=g)
        outs = []
        for module in (m.train(), layer.train()):
            xi = x.clone().requires_grad_(True)
            out = module(xi)
            out.square().sum().backward()
            outs.append((out.detach(), xi.grad))
        (want, want_grad), (got, got_grad) = outs
        assert not torch.allclose(got, base(x), atol=1e-4), name  # the trained update moves the output
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5, msg=name)
    grads = {
        f"{n}.{k}": v.grad for n, m in theirs.items() for k, v in m.named_parameters() if v.grad is not None
    }
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    assert len(grads) == 3 * len(theirs) and grads.keys() <= moved.keys()
    for key, value in grads.items():
        torch.testing.assert_close(moved[key], value.reshape(moved[key].shape), rtol=1e-4, atol=1e-6, msg=key)


def test_tlora_entry_random_start_beside_dylora(tmp_path, monkeypatch):
    """A T-LoRA entry's own `use_data_init = false` (the U-Net's transformers and CLIP's attention) on a
    DyLoRA network (its ResNets): each layer's random start TLoraModule's (the layers' classes compared
    without the network's DyLoraModules, which the shared check does not read: the ResNets' and no others)."""
    classes = entry_random._lycoris_classes
    own: list[str] = []

    def lycoris_classes(modules):
        modules = list(modules)
        own.extend(m.lora_name for m in modules if type(m).__name__ == "DyLoraModule")
        return classes([m for m in modules if type(m).__name__ != "DyLoraModule"])

    monkeypatch.setattr(entry_random, "_lycoris_classes", lycoris_classes)
    entry_random.test_tlora_entry_random_start_beside_locon_and_loha(tmp_path, monkeypatch, "dylora")
    assert own and all("resnets" in name for name in own)
