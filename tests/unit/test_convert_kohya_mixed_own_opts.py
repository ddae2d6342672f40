"""Preset-file entries of another algorithm with module options of their own (issue 12; was DBS403): on SD
1.x/2.x and SDXL a LoKr entry's own `factor`, `decompose_both`, `full_matrix`, `unbalanced_factorization`
and `rs_lora`, and a LoCon / LoHa / LoKr entry's own `use_scalar` (lycoris-lora 4.1.3's create_single_module
hands an entry's keys to its module over the network's) are its block's `factor`, switches,
`rank_stabilized` and `scalar`, on a full / IA^3 network (spec ScaleBlock) as on a LoCon / LoHa one
(AdapterBlock). tests/runtime/test_lycoris_whole_main_own_opts.py builds the same kind of file with
lycoris-lora 4.1.3 and compares every layer."""

from __future__ import annotations

import pytest
from convert_kit import expressible, messages, plan_of
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


@pytest.mark.parametrize("algo", ["full", "ia3", "locon", "loha"])
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


@pytest.mark.parametrize("network", ["locon", "full"])
def test_on_flux_they_stay_refused(tmp_path, network):
    """On Flux / SD3 / Chroma's fused Linears a LoKr entry's own factor beside other kinds stays DBS403 (a
    spec's DBS578): not checked against LyCORIS there."""
    from test_convert_lycoris_flow_preset_file import MIXED as FLUX_MIXED
    from test_convert_lycoris_flow_preset_file import _flux

    preset = FLUX_MIXED.replace('algo = "lokr"\ndim = 8\n', 'algo = "lokr"\ndim = 8\nfactor = 4\n')
    outcome = _flux(tmp_path, preset, f'"algo={network}"', allow=True)
    assert "factor" in messages(outcome, "DBS403")
