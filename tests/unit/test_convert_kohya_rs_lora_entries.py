"""A DyLoRA / GLoRA / full / IA^3 / T-LoRA network's `rs_lora` beside its preset file's LoCon / LoHa / LoKr /
GLoRA entries, and those entries' own on a T-LoRA network (issue 12; were DBS403). lycoris-lora 4.1.3's
create_single_module hands the network's rs_lora to every module: LoConModule, LohaModule, LokrModule and
GLoRAModule scale by alpha / sqrt(dim) (their blocks' plain alpha x sqrt(dim)), LokrModule's layers with both
factors full by dim / sqrt(dim) (a block of kind lokr's `rank_stabilized`); DyLoraModule, TLoraModule,
FullModule and IA3Module never read it. The plans here; tests/runtime/test_lycoris_mixed_rs_lora.py,
test_lycoris_tlora_entry_switches.py and test_lycoris_flow_mixed_rs_lora_boft.py compare the layers with
lycoris-lora's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from convert_kit import expressible, fate, plan_of
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd

# a LoCon entry at dim 4 (the network's alpha 1: alpha x sqrt(4) = 2) on the feed-forwards, or on Flux the
# double blocks' image q/k/v
NETWORKS = ["dylora", "glora", "full", "ia3", "tlora"]


def _plan(tmp_path: Path, family: str, network: str, entry: str, extra: str = "", args: str = ""):
    preset = _sd(entry, extra) if family == "sd" else _flux(entry, extra)
    outcome = expressible(_convert(tmp_path, family, f'"algo={network}" {args}', preset))
    return outcome, plan_of(outcome, tmp_path, PLAN_BASE[family]).adapter


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("family", ["sd", "flux"])
def test_network_rs_lora_is_its_locon_entries_blocks_alpha(tmp_path, family, network):
    outcome, a = _plan(tmp_path, family, network, "locon", args='"rs_lora=True"')
    entries = [b for b in a.blocks if b.kind == "lora"]
    assert entries and {(b.rank, b.alpha) for b in entries} == {(4, 2.0)}
    if network == "glora":  # GLoRAModule reads it too: the adapter's own alpha x sqrt(4)
        assert a.alpha == pytest.approx(2.0)
    else:  # the network's own modules never read it (full / IA^3 have no alpha)
        assert fate(outcome, "network_args rs_lora") == "mapped"
        assert a.alpha == (0.0 if network in ("full", "ia3") else 1.0)


@pytest.mark.parametrize("network", NETWORKS)
def test_network_rs_lora_is_its_lokr_entries_blocks_rank_stabilized(tmp_path, network):
    _, a = _plan(tmp_path, "sd", network, "lokr", "dim = 8\nalpha = 2", '"rs_lora=True"')
    assert [(b.kind, b.rank, b.alpha, b.rank_stabilized) for b in a.blocks] == [
        ("lokr", 8, pytest.approx(2 * math.sqrt(8)), "on")
    ]


def test_glora_entries_take_a_dylora_networks_rs_lora(tmp_path):
    _, a = _plan(tmp_path, "sd", "dylora", "glora", "dim = 2", '"rs_lora=True"')
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("glora", 2, pytest.approx(math.sqrt(2)))]


@pytest.mark.parametrize(("entry", "kind"), [("locon", "lora"), ("loha", "loha"), ("lokr", "lokr")])
def test_tlora_networks_entries_own_rs_lora(tmp_path, entry, kind):
    _, a = _plan(tmp_path, "sd", "tlora", entry, "rs_lora = true")
    assert [(b.kind, b.alpha) for b in a.blocks] == [(kind, 2.0)]
    assert [b.rank_stabilized for b in a.blocks] == ["on" if kind == "lokr" else "adapter"]


def test_an_entrys_own_rs_lora_off_keeps_its_block_plain(tmp_path):
    _, a = _plan(tmp_path, "sd", "dylora", "lokr", "rs_lora = false", '"rs_lora=True"')
    assert [(b.kind, b.alpha, b.rank_stabilized) for b in a.blocks] == [("lokr", 1.0, "adapter")]


def test_a_glora_entrys_own_rs_lora_is_its_blocks_alpha(tmp_path):
    """GLoRAModule's `if self.rs_lora`: an entry's own is its block's alpha x sqrt(dim) (was DBS403)."""
    _, a = _plan(tmp_path, "sd", "locon", "glora", "dim = 4\nrs_lora = true")
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("glora", 4, 2.0)]


@pytest.mark.parametrize(
    ("entry", "option", "module"),
    [
        ("full", "use_tucker = true", "FullModule"),
        ("full", "use_scalar = true", "FullModule"),
        ("ia3", "use_scalar = true", "IA3Module"),
        ("ia3", "rank_dropout_scale = true", "IA3Module"),
        ("diag-oft", "use_tucker = true", "DiagOFTModule"),
        ("boft", "use_scalar = true", "ButterflyOFTModule"),
        ("dylora", "rs_lora = true", "DyLoraModule"),
        ("dylora", "weight_decompose = true", "DyLoraModule"),
        ("glora", "use_tucker = true", "GLoRAModule"),
        ("glora", "weight_decompose = true", "GLoRAModule"),
    ],
)
def test_an_entrys_own_option_its_class_never_uses_is_inert(tmp_path, entry, option, module):
    """lycoris-lora 4.1.3's module classes take these in their signature and never use them: the entry's
    value changes nothing (DBS405, was DBS403)."""
    from convert_kit import fate, messages

    extra = option + ("\ndim = 8" if "oft" in entry else "\ndim = 4" if entry == "dylora" else "")
    outcome, _ = _plan(tmp_path, "sd", "locon", entry, extra)
    key = option.split(" ")[0]
    assert fate(outcome, f"network_args preset module_algo_map.FeedForward.{key}") == "inert"
    assert f"{module} takes {key} and never uses it" in messages(outcome, "DBS405")


@pytest.mark.parametrize(
    ("network", "entry", "option"),
    [
        ("tlora", "full", "use_tucker = true"),  # never used (above), on a T-LoRA network too
        ("tlora", "locon", "rank_dropout_scale = true"),  # no rank dropout to rescale
        ("tlora", "glora", "bypass_mode = true"),  # nothing drops: its default forward's update
        ("locon", "tlora", "bypass_mode = true"),
        ("locon", "full", "rank_dropout_scale = true"),
        ("locon", "glora", "rank_dropout_scale = true"),
    ],
)
def test_an_entrys_own_option_that_changes_nothing_there_is_inert(tmp_path, network, entry, option):
    """Options the entry's class reads but that change nothing on its layers (was DBS403): DBS405."""
    from convert_kit import codes

    outcome, _ = _plan(tmp_path, "sd", network, entry, option)
    assert "DBS405" in codes(outcome)


def test_a_lokr_entrys_own_tucker_on_linear_layers_converts_on_a_tlora_network(tmp_path):
    """LokrModule builds its Tucker form on k x k convolutions alone: on a T-LoRA network's Linear entries
    its block takes none (was DBS403; its switch, not reported, as beside the other networks)."""
    _, a = _plan(tmp_path, "sd", "tlora", "lokr", "use_tucker = true")
    assert [b.kind for b in a.blocks] == ["lokr"]
