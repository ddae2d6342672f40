"""A Diag-OFT or BOFT network's T-LoRA entries (issue 12; was DBS403, "several algorithms"): lycoris-lora
4.1.3's network `algo` only names the algorithm of the layers no map entry sets, every module getting the same
root kwargs, so algo=diag-oft with T-LoRA entries builds what algo=tlora builds with the Diag-OFT layers as
entries; the converter writes that network (oft_entries.oft_network_host, as for LoCon / LoHa / LoKr entries):
a T-LoRA adapter (the entries' own sig_type on their blocks) whose Diag-OFT / BOFT layers are blocks of that
kind, the network's constraint and rescaled their alpha and `rescaled`. Checked against lycoris-lora's
create_network(algo="diag-oft" / "boft") from the same file on tiny SD 1.x with module_dropout and a binding
constraint or rescaled: every module's class and OFT bound, our export loading into it (TLoraModule's frozen
start its own SVD of the same base weights), eval and training-mode outputs, the generator state after each
forward and every trained tensor's gradient; on Flux's fused Linears alike (one kohya module per stacked
Linear against the plan's parts). No tiny run."""

from __future__ import annotations

import pytest
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state

from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_tlora import _no_gc
from tests.runtime.test_lycoris_tlora_mixed_opts import FILE

pytest.importorskip("lycoris.kohya")

# id: (network algo, the entries' sig_type, network_args besides module_dropout): FILE's network algorithm on
# the transformers' attention, T-LoRA entries on their feed-forwards
CASES = {
    "diag_oft_constraint_sig_last": ("diag-oft", "last", {"constraint": "0.0001"}),
    "boft_rescaled_sig_middle": ("boft", "middle", {"rescaled": "True"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_oft_network_tlora_entries_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, sig, extra = CASES[case]
    _no_gc(monkeypatch)
    args = {"module_dropout": "0.3", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(
        tmp_path, "oft_tlora", algo, given, text=FILE.format(algo="tlora", extra=f'sig_type = "{sig}"')
    )
    a = plan.adapter
    assert (a.kind, a.rank, a.module_dropout) == ("tlora", 4, 0.3)
    constraint = float(extra.get("constraint", 0.0))
    rescaled = "on" if "rescaled" in extra else "adapter"
    oft_blocks = {(b.kind, b.rank, b.alpha, b.rescaled) for b in a.blocks if b.kind == algo}
    assert oft_blocks == {(algo, 4, constraint, rescaled)}
    entries = [b for b in a.blocks if b.kind == "adapter"]
    assert entries and all(b.sig_type == sig for b in entries)
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **args)
    oft = {"boft": "ButterflyOFTModule", "diag-oft": "DiagOFTModule"}[algo]
    assert {type(m).__name__ for m in made.unet_loras} == {oft, "TLoraModule"}
    assert {m.sig_type for m in made.unet_loras if type(m).__name__ == "TLoraModule"} == {sig}
    oft_made = [m for m in made.unet_loras if type(m).__name__ == oft]
    assert all(m.rescaled == ("rescaled" in extra) for m in oft_made)
    assert all(float(m.constraint) == pytest.approx(constraint * m.dim) for m in oft_made)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, ("lambda_layer", "q_layer", "oft_blocks"))


def test_flux_diag_oft_network_tlora_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: a Diag-OFT network's T-LoRA entries with the network's binding constraint and
    rescaled (its Diag-OFT blocks' alpha and `rescaled`): each kohya layer's lycoris-lora module (built by
    create_network(algo="diag-oft") on kohya's stacked Linears, our export loaded) against the plan's parts:
    training outputs, input gradients and generator state (module_dropout), and every trained tensor's
    gradient."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.test_lycoris_flow_rank_dropout_layers import FLUX, _network, _plan, _prepared
    from tests.runtime.test_lycoris_flow_tlora_mixed_opts import FLUX_FILE, _layers_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _grads_as_lycoris
    from tests.runtime.test_lycoris_mixed_flow_full import _kohya_layers, _kohya_tree

    _no_gc(monkeypatch)
    args = {"algo": "diag-oft", "constraint": "0.0001", "rescaled": "True", "module_dropout": "0.2"}
    # the network's Diag-OFT on the double blocks' attention and the single blocks' Linears but the image
    # q/k/v (fused) and the single blocks' linear1 (fused), T-LoRA entries starting from the last triplets
    plan = _plan(tmp_path, "flux", FLUX, FLUX_FILE.replace("OWN", 'sig_type = "last"'), args)
    a = plan.adapter
    assert a.fused and (a.kind, a.module_dropout) == ("tlora", 0.2)
    assert {(b.kind, b.alpha, b.rescaled) for b in a.blocks if b.kind != "adapter"} == {
        ("diag-oft", 1e-4, "on")
    }
    assert {b.sig_type for b in a.blocks if b.kind == "adapter"} >= {"last"}
    ours = _prepared(
        build_pipeline("builtin:tiny-flux").transformer.float(), "unet", plan, a.denoiser_targets
    )
    tensors = lycoris_state(unet=ours, text_encoders=[], family="flux", dtype="fp32")
    layers = _kohya_layers(ours, flux_model(1, 1), diffusers_parts)
    drops = {k: v for k, v in args.items() if k != "algo"}
    made = _network(
        monkeypatch, "diag-oft", tmp_path / "p.toml", [nn.Module()] * 3, _kohya_tree(layers), drops
    )
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    modules = {m.lora_name: m for m in made.unet_loras}
    assert type(modules["lora_unet_double_blocks_0_img_attn_qkv"]).__name__ == "TLoraModule"
    assert modules["lora_unet_double_blocks_0_img_attn_qkv"].sig_type == "last"
    oft = [m for m in modules.values() if type(m).__name__ == "DiagOFTModule"]
    assert oft and all(m.rescaled and float(m.constraint) == pytest.approx(1e-4 * m.dim) for m in oft)
    compared = _layers_as_lycoris(made, ours, layers, 0.0, moves=False)  # a module draw: two outputs
    fused = {
        type(modules["lora_unet_" + p.replace(".", "_")]).__name__ for p, (_, f) in compared.items() if f
    }
    assert "TLoraModule" in fused
    assert _grads_as_lycoris(ours, [], modules, "flux") >= 2 * len(modules)
