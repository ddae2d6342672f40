"""A Diag-OFT / BOFT network's own negative `constraint` (network_args; was DBS403): lycoris-lora 4.1.3's
DiagOFTModule / ButterflyOFTModule scale their blocks only `if constraint > 0`, so it constrains nothing, as 0
(convert/kohya/lycoris_maps.py applied_constraint, the rule a preset entry's own negative constraint follows:
tests/runtime/test_lycoris_entry_signs.py checks those layers against lycoris-lora's network). SD 1.x and
Flux's fused Linears alike."""

from __future__ import annotations

from convert_kit import codes, errors, plan_of
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert
from test_convert_lycoris_flux import _flux

import pytest


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_sd_network_negative_constraint_is_none(tmp_path, algo):
    outcome = _convert(tmp_path, "sd", f'"algo={algo}" "constraint=-0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert (a.kind, a.oft_constraint) == (algo, 0.0)


@pytest.mark.parametrize(
    ("algo", "args"),
    [("diag-oft", "--network_dim 4"), ("boft", "--network_dim 32 --network_args preset=attn-only")],
)
def test_flux_network_negative_constraint_is_none(tmp_path, algo, args):
    given = (
        f"{args} algo={algo} constraint=-0.1"
        if "network_args" in args
        else f"{args} --network_args algo={algo} constraint=-0.1"
    )
    outcome = _flux(tmp_path, given)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_constraint) == (algo, 0.0)
    positive = _flux(tmp_path / "p", given.replace("-0.1", "0.1"))
    assert plan_of(positive, tmp_path / "p").adapter.oft_constraint == 0.1
