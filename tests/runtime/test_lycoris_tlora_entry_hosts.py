"""A T-LoRA entry's own start on a GLoRA, full or IA^3 network (issue 12, was DBS403, a spec's DBS622):
lycoris-lora 4.1.3's create_network hands TLoraModule the entry's `sig_type` / `use_data_init` whatever the
network's algorithm, and dbspec builds a tlora block's layers in their own pass beside any kind's
(runtime/mixed_kinds.py add_mixed / kind_adapter: beside a full / IA^3 adapter only the catch-all size
differs), so on SD 1.x they start as beside LoCon / LoHa / LoKr. Checked as there: the sig_type case with
test_lycoris_entry_signs.same_as_lycoris (outputs, gradients, the export loading; each frozen start LyCORIS's,
not the principal one; FullModule's trained weight and bias by their Parameter names), the full and IA^3
networks' random start with test_lycoris_tlora_entry_random's check (each layer's Q, P, λ and frozen copy bit
for bit TLoraModule's draw from the generator state the layer drew at, the generator after alike, the saved
adapters reloading). A GLoRA network's random start (built alike, pinned unchecked by
tests/unit/test_convert_kohya_tlora_entry_random.py), a DyLoRA network's entries (a spec's DBS622,
tests/unit/test_rules.py) and the fused Linears beside GLoRA / full / IA^3 stay refused. No tiny run."""

from __future__ import annotations

import pytest
import torch

import tests.runtime.test_lycoris_tlora_entry_random as entry_random
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
import tests.runtime.test_lycoris_entry_signs as signs
from tests.runtime.test_lycoris_entry_signs import _ours, _plan, _preset, same_as_lycoris

pytest.importorskip("lycoris.modules.tlora")


@pytest.mark.parametrize(
    ("algo", "sig_type", "held", "module"),
    [
        ("glora", "last", "attn1_to_q.a1", "GLoRAModule"),
        ("full", "middle", "attn1_to_q.weight", "FullModule"),
        ("ia3", "last", "attn1_to_q.weight", "IA3Module"),
    ],
)
def test_tlora_entry_sig_type_beside_other_hosts(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    algo,
    sig_type,
    held,
    module,
):
    """A T-LoRA entry's own `sig_type` on a GLoRA (full, IA^3) network: its tlora block's sig_type, the layers
    (and their frozen copy) starting from those triplets as TLoraModule does, trained alike beside the
    network's layers."""
    args = {"algo": algo}
    plan = _plan(tmp_path, _preset("tlora", f'sig_type = "{sig_type}"'), args, 1.0)
    a = plan.adapter
    assert a.kind == algo
    assert [(b.kind, b.sig_type, b.data_init) for b in a.blocks] == [("tlora", sig_type, True)]
    ours = _ours(pipe, a, {})
    if algo == "full":  # FullModule's trained weight (and bias): our export's diff (diff_b), its gradient
        monkeypatch.setattr(signs, "lycoris_state", _full_grads_named_as_lycoris(signs.lycoris_state))
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, ("ff_net_0_proj.lambda_layer", held))
    theirs = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "TLoraModule"}
    assert theirs and all(m.sig_type == sig_type for m in theirs.values())
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", module}
    frozen = {
        "lora_unet_" + n.replace(".", "_"): m.lora_tlora_base_lambda["default"]
        for n, m in ours.named_modules()
        if hasattr(m, "lora_tlora_base_lambda")
    }
    assert frozen.keys() == theirs.keys()
    for name, m in theirs.items():
        torch.testing.assert_close(frozen[name].reshape(m.base_lambda.shape), m.base_lambda, msg=name)
        s = torch.linalg.svdvals(m.org_module[0].weight.detach().float().reshape(m.shape[0], -1))
        assert not torch.allclose(m.base_lambda.flatten(), s[: m.lora_dim], atol=1e-4), name  # not principal


def _full_grads_named_as_lycoris(export):
    """same_as_lycoris's export, its second call (our trained tensors holding their gradients) giving each
    full layer's trained weight (and bias) by FullModule's Parameter names `weight` / `bias`: FullModule
    trains W + diff, our FullLayer W' (its `diff` export is W' - W), the same gradient."""
    from dbspec.runtime.lycoris_full import FullLayer

    calls = []

    def exported(**kwargs):
        tensors = export(**kwargs)
        calls.append(1)
        if len(calls) == 1:
            return tensors
        tensors = {k: v for k, v in tensors.items() if not k.endswith((".diff", ".diff_b"))}
        for name, layer in kwargs["unet"].named_modules():
            if isinstance(layer, FullLayer):
                key = "lora_unet_" + name.replace(".", "_")
                tensors[f"{key}.weight"] = layer.lora_full["default"].detach()
                if "default" in layer.lora_full_bias:
                    tensors[f"{key}.bias"] = layer.lora_full_bias["default"].detach()
        return tensors

    return exported


@pytest.mark.parametrize(
    ("algo", "module"), [("full", "FullModule"), ("ia3", "IA3Module"), ("glora", "GLoRAModule")]
)
def test_tlora_entry_random_start_beside_full_and_ia3(tmp_path, monkeypatch, algo, module):
    """A T-LoRA entry's own `use_data_init = false` (the U-Net's transformers and CLIP's attention) on a full
    (IA^3) network (its ResNets): each layer's random start TLoraModule's, as beside LoCon / LoHa / LoKr (the
    layers' classes compared without the network's own modules, which the shared check does not read: they
    are the ResNets' layers and no others)."""
    classes = entry_random._lycoris_classes
    own: list[str] = []

    def lycoris_classes(modules):
        modules = list(modules)
        own.extend(m.lora_name for m in modules if type(m).__name__ == module)
        return classes([m for m in modules if type(m).__name__ != module])

    monkeypatch.setattr(entry_random, "_lycoris_classes", lycoris_classes)
    entry_random.test_tlora_entry_random_start_beside_locon_and_loha(tmp_path, monkeypatch, algo)
    assert own and all("resnets" in name for name in own)
