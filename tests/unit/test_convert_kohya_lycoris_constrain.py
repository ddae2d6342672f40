"""LyCORIS's deprecated network argument `constrain` (issue 12): lycoris-lora 4.1.3's create_network first
copies each deprecated name's value into its new one (lycoris/wrapper.py deprecated_arg_dict, `constrain` ->
`constraint`), then reads `float(kwargs.get("constraint", None) or 0)`: `constrain=0.1` is the constraint of a
Diag-OFT / BOFT network and of a network's Diag-OFT / BOFT entries (their blocks' alpha), on SD 1.x/2.x /
SDXL and Flux / SD3 / Chroma alike, and beside `constraint` it wins whatever their order (the replaced
`constraint` ignored, DBS405). Was: blocks at constraint 0 with `constrain` ignored (DBS405), or DBS403."""

from __future__ import annotations

import pytest
from convert_kit import codes, empty_hub_cache, errors, messages, plan_of  # noqa: F401
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd


def _adapter(tmp_path, family: str, args: str, preset: str | None = None, flags: str = ""):
    outcome = _convert(tmp_path, family, args, preset, flags)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    return outcome, plan_of(outcome, tmp_path, PLAN_BASE[family]).adapter


@pytest.mark.parametrize("family", ["sd", "flux", "sd3"])
@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_constrain_is_the_networks_constraint(tmp_path, family, algo):
    # BOFT's butterfly splits FLUX.1's fused widths from a block size of 42 (SD3's from 4)
    flags = "--network_dim=42" if (family, algo) == ("flux", "boft") else ""
    outcome, a = _adapter(tmp_path, family, f'"algo={algo}" "constrain=0.1"', flags=flags)
    assert (a.kind, a.oft_constraint) == (algo, 0.1)
    assert "DBS405" not in codes(outcome), messages(outcome, "DBS405")


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_negative_constrain_constrains_nothing_as_a_negative_constraint(tmp_path, family):
    _outcome, a = _adapter(tmp_path, family, '"algo=diag-oft" "constrain=-0.1"')
    assert (a.kind, a.oft_constraint) == ("diag-oft", 0.0)  # LyCORIS: `if constraint > 0`


@pytest.mark.parametrize("family", ["sd", "flux"])
@pytest.mark.parametrize(
    "args", ['"constraint=0.2" "constrain=0.1"', '"constrain=0.1" "constraint=0.2"'], ids=["after", "before"]
)
def test_constrain_replaces_a_given_constraint_in_either_order(tmp_path, family, args):
    outcome, a = _adapter(tmp_path, family, f'"algo=diag-oft" {args}')
    assert a.oft_constraint == 0.1
    ignored = [d for d in outcome.diagnostics if d.code == "DBS405"]
    assert [d.path for d in ignored] == ["network_args constraint"], messages(outcome, "DBS405")
    assert "copies the deprecated `constrain` (0.1) over it" in ignored[0].message


@pytest.mark.parametrize(
    ("family", "algo", "preset"),
    [("sd", "locon", _sd("diag-oft")), ("sd", "loha", _sd("boft")), ("flux", "glora", _flux("diag-oft"))],
)
def test_constrain_is_the_alpha_of_oft_entries_beside_another_algorithm(tmp_path, family, algo, preset):
    outcome, a = _adapter(tmp_path, family, f'"algo={algo}" "constrain=0.1"', preset)
    entry = preset.split('algo = "')[1].split('"')[0]
    assert [(b.kind, b.alpha) for b in a.blocks if b.kind == entry] == [(entry, 0.1)]
    assert "DBS405" not in codes(outcome), messages(outcome, "DBS405")
    assert outcome.conversion.reports["network_args constrain"].fate == "mapped"


def test_an_entrys_own_constraint_still_replaces_the_networks_constrain(tmp_path):
    _outcome, a = _adapter(
        tmp_path, "sd", '"algo=locon" "constrain=0.1"', _sd("diag-oft", "constraint = 0.3")
    )
    assert [(b.kind, b.alpha) for b in a.blocks] == [("diag-oft", 0.3)]


def test_constrain_without_oft_layers_is_ignored(tmp_path):
    outcome, _a = _adapter(tmp_path, "sd", '"algo=locon" "constrain=0.1"')
    said = [d for d in outcome.diagnostics if d.code == "DBS405"]
    assert [d.path for d in said] == ["network_args constrain"]
    assert "Diag-OFT / BOFT only" in said[0].message
