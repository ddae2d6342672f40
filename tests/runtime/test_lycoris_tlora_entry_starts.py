"""A T-LoRA entry's own start on another algorithm's network (issue 12, was DBS403, a spec's DBS622): its
`sig_type` (the weight's last / middle singular triplets) and `use_data_init = false` (a random start), which
lycoris-lora 4.1.3's create_network hands TLoraModule whatever the network's algorithm. On a LoKr network (SD
1.x): dbspec's T-LoRA pass beside the LoKr layers (runtime/mixed_kinds.py, one sub-adapter per kind) builds
them as beside LoCon / LoHa, checked as there: the sig_type case with test_lycoris_entry_signs.same_as_lycoris
(outputs, gradients, the export loading; each frozen start LyCORIS's, not the principal one), the random start
with test_lycoris_tlora_entry_random's check (each layer's Q, P, λ and frozen copy bit for bit TLoraModule's
draw from the generator state the layer drew at, the generator after alike, the saved adapters reloading).
Beside LoCon on Flux / SD3 / Chroma's fused Linears (one TLoraModule per kohya layer, runtime/lycoris_tlora.py
fit_fused_tlora's one SVD of the stacked weight): every kohya module against the parts with LyCORIS's own
frozen start (sig_type), and each fused layer's random start TLoraModule(use_data_init=False)'s on kohya's
stacked Linear; on Flux beside LoKr / LoHa alike (sig_type) and beside LoKr (random start). No tiny run."""

from __future__ import annotations

import pytest
import torch

import tests.runtime.test_lycoris_tlora_entry_random as entry_random
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_entry_signs import _ours, _plan, _preset, same_as_lycoris

pytest.importorskip("lycoris.modules.tlora")


@pytest.mark.parametrize("sig_type", ["last", "middle"])
def test_tlora_entry_sig_type_beside_lokr(pipe, tmp_path, monkeypatch, sig_type):  # noqa: F811
    """A T-LoRA entry's own `sig_type` on a LoKr network: its tlora block's sig_type, the layers (and their
    frozen copy) starting from those triplets as TLoraModule does, trained alike beside the LoKr layers."""
    args = {"algo": "lokr"}
    plan = _plan(tmp_path, _preset("tlora", f'sig_type = "{sig_type}"'), args, 1.0)
    a = plan.adapter
    assert a.kind == "lokr"
    assert [(b.kind, b.sig_type, b.data_init) for b in a.blocks] == [("tlora", sig_type, True)]
    ours = _ours(pipe, a, {})
    held = ("ff_net_0_proj.lambda_layer", "attn1_to_q.lokr_w1")
    made = same_as_lycoris(pipe, tmp_path, monkeypatch, a, args, 1.0, held)
    theirs = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "TLoraModule"}
    assert theirs and all(m.sig_type == sig_type for m in theirs.values())
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", "LokrModule"}
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


def test_tlora_entry_random_start_beside_lokr(tmp_path, monkeypatch):
    """A T-LoRA entry's own `use_data_init = false` (the U-Net's transformers and CLIP's attention) on a LoKr
    network (its ResNets): each layer's random start TLoraModule's, as beside LoCon / LoHa."""
    entry_random.test_tlora_entry_random_start_beside_locon_and_loha(tmp_path, monkeypatch, "lokr")


@pytest.mark.parametrize(
    ("family", "network"),
    [("flux", "locon"), ("sd3", "locon"), ("chroma", "locon"), ("flux", "lokr"), ("flux", "loha")],
)
def test_fused_tlora_entry_sig_type_beside_other_kinds(tmp_path, monkeypatch, family, network):
    """On Flux's / SD3's / Chroma's fused Linears (one TLoraModule per kohya layer) a T-LoRA entry's own
    `sig_type = "last"` on a LoCon / LoKr / LoHa network (was DBS403, a spec's DBS622 with fused_projections):
    layer's parts start from the last triplets of ONE SVD of the stacked weight (runtime/lycoris_tlora.py
    fit_fused_tlora), so every kohya layer's module, its frozen start LyCORIS's own, computes what the parts
    do in training (outputs, input gradients) and every trained tensor's gradient is LyCORIS's."""
    from dbspec.runtime.lycoris_export import lycoris_state
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.test_lycoris_flow_rank_dropout_layers import _network, _plan, _prepared
    from tests.runtime.test_lycoris_flow_tlora_mixed_opts import FAMILIES, _layers_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _grads_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_full import _kohya_layers, _kohya_tree
    from tests.runtime.test_lycoris_tlora import _no_gc

    _no_gc(monkeypatch)
    script, text, rows, parts_of = FAMILIES[family]
    plan = _plan(tmp_path, family, script, text.replace("OWN", 'sig_type = "last"'), {"algo": network})
    a = plan.adapter
    assert a.fused and a.kind == {"locon": "lora"}.get(network, network)
    assert {(b.kind, b.sig_type) for b in a.blocks} == {("tlora", "last")}
    transformer = build_pipeline(f"builtin:tiny-{family}").transformer.float()
    guidance = len(getattr(getattr(transformer, "distilled_guidance_layer", None), "layers", ()))
    ours = _prepared(transformer, "unet", plan, a.denoiser_targets)
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    swapped = None
    if family == "sd3":
        from dbspec.runtime.sd3_kohya import swapped
    layers = _kohya_layers(ours, rows(guidance), parts_of, swapped)
    made = _network(
        monkeypatch, network, tmp_path / "p.toml", [torch.nn.Module()] * 3, _kohya_tree(layers), {}
    )
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    modules = {m.lora_name: m for m in made.unet_loras}
    tloras = [m for m in modules.values() if type(m).__name__ == "TLoraModule"]
    assert tloras and all(m.sig_type == "last" for m in tloras)
    compared = _layers_as_lycoris(made, ours, layers, 0.0, moves=False)
    fused = {
        type(modules["lora_unet_" + p.replace(".", "_")]).__name__ for p, (_, f) in compared.items() if f
    }
    assert "TLoraModule" in fused
    assert _grads_as_lycoris(ours, [], modules, family) >= 2 * len(modules)


@pytest.mark.parametrize("network", ["locon", "lokr"])
def test_flux_tlora_entry_random_start_beside_other_kinds(tmp_path, monkeypatch, network):
    """On Flux's fused Linears a T-LoRA entry's own `use_data_init = false` on a LoCon (LoKr) network: each
    fused T-LoRA layer's start (trained and frozen Q, P, λ) is bit for bit TLoraModule(use_data_init=False)'s
    on kohya's stacked Linear from the generator state the layer's first-built part drew at, which leaves the
    generator as our draw does; not the weight's SVD; Q and λ one Parameter over the parts."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from dbspec.runtime.lycoris_tlora import TloraLayer, random_start
    from dbspec.runtime.prepare import _prepare
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.test_lycoris_flow_rank_dropout_layers import FLUX, _plan
    from tests.runtime.test_lycoris_flow_tlora import _flux_layers, _kohya_linear, _ours
    from tests.runtime.test_lycoris_flow_tlora_mixed_opts import FLUX_FILE
    from tests.runtime.test_lycoris_tlora import _no_gc

    tlora = pytest.importorskip("lycoris.modules.tlora")
    _no_gc(monkeypatch)
    plan = _plan(tmp_path, "flux", FLUX, FLUX_FILE.replace("OWN", "use_data_init = false"), {"algo": network})
    a = plan.adapter
    assert a.fused and a.kind == {"locon": "lora"}.get(network, network)
    assert {(b.kind, b.data_init) for b in a.blocks} == {("tlora", False)}
    transformer = build_pipeline("builtin:tiny-flux").transformer.float()
    _prepare(transformer, "unet", plan, torch.device("cpu"), a.denoiser_targets, 0)
    checked = 0
    for name, parts, swap in _flux_layers(transformer):
        if not all(isinstance(part, TloraLayer) for part in parts):
            continue  # the network's layers
        assert all(part.tlora_random for part in parts), name
        _, state = min((part.tlora_rng for part in parts), key=lambda built: built[0])
        rank, alpha = parts[0].r[ADAPTER_NAME], parts[0].lora_alpha[ADAPTER_NAME]
        kohya = _kohya_linear(parts, swap)
        torch.random.set_rng_state(state)
        theirs = tlora.TLoraModule(name, kohya, 1.0, lora_dim=rank, alpha=alpha, use_data_init=False)
        after = torch.random.get_rng_state()
        torch.random.set_rng_state(state)
        random_start(kohya.weight, rank)
        assert torch.equal(torch.random.get_rng_state(), after), name
        want = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
        for key, value in _ours(parts, swap).items():
            assert torch.equal(value.detach(), want[key].detach().reshape(value.shape)), (name, key)
        data = tlora.TLoraModule(name, _kohya_linear(parts, swap), 1.0, lora_dim=rank, alpha=alpha)
        assert not torch.allclose(parts[0].lora_tlora_lambda[ADAPTER_NAME], data.lambda_layer), name
        for part in parts[1:]:
            assert part.lora_tlora_q[ADAPTER_NAME] is parts[0].lora_tlora_q[ADAPTER_NAME]
        checked += len(parts) > 1
    assert checked == 2  # the image stream's q/k/v and the single block's linear1
