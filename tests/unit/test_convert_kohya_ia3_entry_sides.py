"""An IA^3 preset-file entry's own `train_on_input` (issue 12): IA3Module's truth test, so `true` on a LoCon,
LoHa or LoKr network is its block's `on_input` (tests/runtime/test_lycoris_ia3_entry_sides.py checks it
against lycoris-lora 4.1.3), `false` is the value create_network leaves every module (it never hands
train_on_input on): the output side, nothing to carry. On an IA^3 network's own entries it is their own
block's `on_input` (was DBS403 here; tests/runtime/test_lycoris_ia3_entry_sides_networks.py)."""

from __future__ import annotations

import pytest
from convert_kit import codes, empty_hub_cache, errors, plan_of  # noqa: F401
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd


@pytest.mark.parametrize(
    ("family", "algo", "value", "kind"),
    [
        ("sd", "loha", "true", "loha"),
        ("sd", "lokr", "true", "lokr"),
        ("flux", "lokr", "true", "lokr"),
        ("sd", "locon", "false", "lora"),
    ],
)
def test_ia3_entry_train_on_input_is_its_blocks_on_input(tmp_path, family, algo, value, kind):
    preset = (_sd if family == "sd" else _flux)("ia3", f"train_on_input = {value}")
    outcome = _convert(tmp_path, family, f'"algo={algo}"', preset)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, PLAN_BASE[family]).adapter
    assert a.kind == kind and [b.on_input for b in a.blocks if b.kind == "ia3"] == [value == "true"]


def test_ia3_network_entry_train_on_input_is_its_own_blocks_on_input(tmp_path):
    outcome = _convert(tmp_path, "sd", '"algo=ia3"', _sd("ia3", "train_on_input = true"))
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, PLAN_BASE["sd"]).adapter
    assert a.kind == "ia3" and [(b.kind, b.on_input) for b in a.blocks] == [("adapter", True)]
