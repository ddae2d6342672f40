"""A GLoRA network's bypass_mode beside its preset file's Diag-OFT / BOFT entries (issue 12; was DBS403, a
spec's DBS578 on a glora adapter with `bypass` and blocks of those kinds): LyCORIS hands the network's
bypass_mode to every module, so DiagOFTModule / ButterflyOFTModule rotate the layer's output (their blocks'
settled `bypass`, runtime/mixed_kinds.py kind_adapter) while GLoRAModule runs its own bypass forward; the
network's rank_dropout is GLoRA's pairs' masks alone (the OFTs' bypass forwards never read it) and its
dropout GLoRA's and ButterflyOFTModule's to ignore (DiagOFTModule's raises: the converter refuses it,
DBS402). Checked against lycoris-lora 4.1.3's create_network(algo="glora") from the same file on tiny SD 1.x
with module_dropout: every module's class and bypass_mode, our export loading into it, eval and training-mode
outputs, the generator state after each forward and every trained tensor's gradient; on tiny Flux's stacked
Linears too (test_lycoris_flow_mixed_rs_lora_boft's _alike). No tiny run: both kinds train and resume in
bypass_mode in their own tests."""

from __future__ import annotations

import pytest

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_tlora_mixed_opts import FILE

pytest.importorskip("lycoris.kohya")

# id: (the FILE entries' algo on the transformers' feed-forwards, network_args besides bypass_mode and
# module_dropout)
CASES = {
    "diag_oft_rank_dropout": ("diag-oft", {"rank_dropout": "0.3"}),
    "boft_dropout_rank_dropout": ("boft", {"dropout": "0.2", "rank_dropout": "0.3"}),
}
CLASSES = {"diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_glora_network_bypass_beside_oft_entries_is_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    entry, extra = CASES[case]
    args = {"bypass_mode": "True", "module_dropout": "0.3", **extra}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    path, plan = _converted_plan(
        tmp_path, "glora_oft", "glora", given, text=FILE.format(algo=entry, extra="")
    )
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout, a.rank_dropout) == ("glora", True, 0.3, 0.3)
    assert {(b.kind, b.bypass) for b in a.blocks} == {(entry, True)}
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, "glora", path, **args)
    assert {(type(m).__name__, bool(m.bypass_mode)) for m in made.unet_loras} == {
        ("GLoRAModule", True),
        (CLASSES[entry], True),
    }
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys), result
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    grads_as_lycoris(ours, made, ("a1.weight", "b2.weight", "oft_blocks"))


def test_flux_glora_network_bypass_beside_diag_oft_entries_is_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: Diag-OFT entries on the double blocks' q/k/v (and CLIP-L's attention) beside
    the GLoRA network's other layers, in the network's bypass_mode with its module_dropout and rank_dropout:
    each kohya module against the plan's parts (outputs, generator state, gradients)."""
    from tests.runtime.test_lycoris_flow_mixed_rs_lora_boft import BOFT_FILE, _alike, _classes

    text = BOFT_FILE.replace('algo = "locon"', 'algo = "diag-oft"').replace(
        'algo = "loha"', 'algo = "diag-oft"'
    )
    args = {"bypass_mode": "True", "module_dropout": "0.5", "rank_dropout": "0.3"}
    a, made, _ = _alike(tmp_path, monkeypatch, "glora", text, args)
    assert (a.kind, a.bypass) == ("glora", True)
    assert {(b.kind, b.bypass) for b in a.blocks} == {("diag-oft", True)}
    classes = _classes(made)
    assert classes["lora_unet_double_blocks_0_img_attn_qkv"] == "DiagOFTModule"
    assert classes["lora_unet_double_blocks_0_img_attn_proj"] == "GLoRAModule"
    assert all(m.bypass_mode for m in made.values())
