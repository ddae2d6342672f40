"""Preset-file entries of another algorithm with module options of their own (issue 12; was DBS403): a LoKr
entry's own `factor`, `decompose_both`, `full_matrix`, `unbalanced_factorization`
and `rs_lora`, and a LoCon / LoHa / LoKr entry's own `use_scalar` (lycoris-lora 4.1.3's create_single_module
hands an entry's keys to its module over the network's) are its block's `factor`, switches,
`rank_stabilized` and `scalar`, on a full / IA^3 network (spec ScaleBlock) as on a LoCon / LoHa one
(AdapterBlock) and a DyLoRA / GLoRA one (DyloraBlock, GloraBlock); a Diag-OFT / BOFT entry's own `constraint`
and `rescaled` on a full / IA^3 network are its block's alpha and `rescaled`.
tests/runtime/test_lycoris_whole_main_own_opts.py and test_lycoris_own_opts_networks.py build the same kind
of file with lycoris-lora 4.1.3 and compare every layer."""

from __future__ import annotations

import pytest
from convert_kit import expressible, plan_of
from test_convert_kohya_whole_main_mixed import MIXED, _convert

# the MLPs' LoKr at its own factor 4, decompose_both, unbalanced split, use_scalar; CLIP's LoKr MLPs in full
# (full_matrix) with rs_lora; the ResNets' LoCon with its own use_scalar
OWN = (
    MIXED.replace(
        '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\n',
        '[module_algo_map.FeedForward]\nalgo = "lokr"\ndim = 2\nfactor = 4\ndecompose_both = true\n'
        "unbalanced_factorization = true\nuse_scalar = true\n",
    )
    .replace(
        '[module_algo_map.CLIPMLP]\nalgo = "loha"\ndim = 2\n',
        '[module_algo_map.CLIPMLP]\nalgo = "lokr"\ndim = 2\nfull_matrix = true\nrs_lora = true\n',
    )
    .replace("alpha = 2\n", "alpha = 2\nuse_scalar = true\n", 1)
)


def _fields(b) -> tuple:
    keys = (
        "factor",
        "decompose_both",
        "full_matrix",
        "unbalanced_factorization",
        "rank_stabilized",
        "scalar",
    )
    return (b.kind, b.rank, *(getattr(b, k) for k in keys))


@pytest.mark.parametrize("algo", ["full", "ia3", "locon", "loha", "dylora", "glora"])
def test_entries_own_options_are_their_blocks(tmp_path, algo):
    outcome = expressible(_convert(tmp_path, algo, preset=OWN))
    a = plan_of(outcome, tmp_path).adapter
    resnets = "adapter" if algo == "locon" else "lora"  # the LoCon network's own kind
    assert {_fields(b) for b in a.blocks if b.kind != "adapter" or algo == "locon"} >= {
        ("lokr", 2, 4, "on", "adapter", "on", "adapter", "on"),  # the MLPs
        (resnets, 4, 0, "adapter", "adapter", "adapter", "adapter", "on"),  # the ResNets
    }
    # CLIP's full LoKr MLPs: decompose_both settled off by full_matrix (off already), rs_lora's sqrt(dim)
    assert [_fields(b) for b in a.text_encoder_blocks] == [
        ("lokr", 2, 0, "adapter", "on", "adapter", "on", "adapter")
    ]


@pytest.mark.parametrize("network", ["locon", "full", "dylora", "glora"])
def test_on_flux_they_are_the_fused_blocks(tmp_path, network):
    """On Flux / SD3 / Chroma's fused Linears alike (was DBS403, a spec's DBS578): each fused Linear one
    LokrModule at its entry's own factor (tests/runtime/test_lycoris_whole_main_own_opts.py checks Flux's
    against lycoris-lora 4.1.3)."""
    from test_convert_lycoris_flow_preset_file import MIXED as FLUX_MIXED
    from test_convert_lycoris_flow_preset_file import _flux

    preset = FLUX_MIXED.replace(
        'algo = "lokr"\ndim = 8\n', 'algo = "lokr"\ndim = 8\nfactor = 4\nuse_scalar = 1\n'
    )
    outcome = expressible(_flux(tmp_path, preset, f'"algo={network}"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.fused and [(b.factor, b.scalar) for b in a.blocks if b.kind == "lokr"] == [(4, "on")]


# the feed-forwards a Diag-OFT with its own constraint and rescaled, CLIP's MLPs a BOFT rescaled
OFT = MIXED.replace(
    '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 2\n',
    '[module_algo_map.FeedForward]\nalgo = "diag-oft"\ndim = 2\nconstraint = 0.001\nrescaled = true\n',
).replace(
    '[module_algo_map.CLIPMLP]\nalgo = "loha"\ndim = 2\n',
    '[module_algo_map.CLIPMLP]\nalgo = "boft"\ndim = 2\nrescaled = true\n',
)


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_oft_entries_own_rescaled_are_their_blocks(tmp_path, algo):
    """A Diag-OFT / BOFT entry's own `rescaled` on a full / IA^3 network (was DBS403): its block's
    `rescaled` (spec ScaleBlock), its own constraint the block's alpha (DiagOFTModule reads both raw)."""
    outcome = expressible(_convert(tmp_path, algo, preset=OFT))
    a = plan_of(outcome, tmp_path).adapter
    assert [(b.kind, b.rank, b.alpha, b.rescaled) for b in a.blocks if b.kind == "diag-oft"] == [
        ("diag-oft", 2, 0.001, "on")
    ]
    assert [(b.kind, b.rank, b.alpha, b.rescaled) for b in a.text_encoder_blocks] == [("boft", 2, 0.0, "on")]


# the ResNets' LoCon with its own use_tucker (their 3x3 convolutions in the Tucker form), the feed-forwards a
# Diag-OFT with its own constraint and rescaled, CLIP's MLPs a BOFT rescaled
TUCKER_OFT = OFT.replace("alpha = 2\n", "alpha = 2\nuse_tucker = true\n", 1)


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_entries_own_tucker_and_oft_rescaled_on_dylora_and_glora(tmp_path, algo):
    """A LoCon entry's own use_tucker and a Diag-OFT / BOFT entry's own rescaled on a DyLoRA / GLoRA network
    (was DBS403): its block's `tucker` (LoConModule's truth test, on the k x k convolutions) and `rescaled`
    (spec DyloraBlock / GloraBlock), the Diag-OFT's own constraint its alpha; the network's other layers
    keep the adapter's (tests/runtime/test_lycoris_own_opts_networks.py compares the layers with
    lycoris-lora 4.1.3's). CLIP's BOFT block's rescaled converted before too, and the plan dropped it."""
    a = plan_of(expressible(_convert(tmp_path, algo, preset=TUCKER_OFT)), tmp_path).adapter
    assert a.kind == algo
    assert [(b.kind, b.rank, b.alpha, b.conv_rank, b.tucker) for b in a.blocks if b.tucker != "adapter"] == [
        ("lora", 4, 2.0, 4, "on")
    ]
    assert [(b.kind, b.rank, b.alpha, b.rescaled) for b in a.blocks if b.rescaled != "adapter"] == [
        ("diag-oft", 2, 0.001, "on")
    ]
    assert [(b.kind, b.rank, b.alpha, b.rescaled) for b in a.text_encoder_blocks] == [("boft", 2, 0.0, "on")]
