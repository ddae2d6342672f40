"""lycoris.kohya algo=dylora on kohya's Flux / SD3 (convert/kohya/lycoris_flow_dylora.py) with the switches
that act on whole fused modules (issue 12): `--scale_weight_norms` (LycorisNetworkKohya's
apply_max_norm_regularization calls each module's apply_max_norm; DyLoraModule keeps the base class's, which
returns (None, None): nothing scaled, so the limit is inert, unless a preset file's entries give layers a
LoCon / LoKr / LoHa / Diag-OFT module, whose own apply_max_norm scales); `module_dropout`
(one skip draw per fused module, its parts sharing it)."""

from __future__ import annotations

from convert_kit import codes, errors, fate, messages, plan_of
from test_convert_lycoris_flux import _flux
from test_convert_lycoris_sd3 import _sd3

# a realistic DyLoRA-on-Flux run: the network's unit 4, CLIP-L trained beside
DYLORA = "--network_args algo=dylora block_size=4 preset=full"


def test_scale_weight_norms_with_dylora_on_flux_is_inert(tmp_path):
    outcome = _flux(tmp_path, f"--scale_weight_norms 1.0 {DYLORA}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm) == ("dylora", 0.0) and a.fused


def test_scale_weight_norms_with_dylora_on_sd3_is_inert(tmp_path):
    outcome = _sd3(tmp_path, "--scale_weight_norms 2 --network_args algo=dylora block_size=8 preset=attn-mlp")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert plan_of(outcome, tmp_path).adapter.max_norm == 0.0


def test_scale_weight_norms_with_a_locon_entry_in_a_dylora_network_stays_refused(tmp_path):
    """A preset file's LoCon entry is a LoConModule, whose apply_max_norm scales: not inert, and dbspec has no
    max norm for some layers of a DyLoRA network."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n\n'
        '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "locon"\ndim = 4\n',
        encoding="utf-8",
    )
    outcome = _flux(tmp_path, "--scale_weight_norms 1 --network_args algo=dylora block_size=2 preset=p.toml")
    assert fate(outcome, "scale_weight_norms") == "unsupported"
    # the same file without --scale_weight_norms converts
    assert "DBS403" not in codes(_flux(tmp_path, "--network_args algo=dylora block_size=2 preset=p.toml"))


def test_module_dropout_with_dylora_on_flux_is_one_draw_per_fused_module(tmp_path):
    """module_dropout: DyLoraModule.forward's skip draw, one per fused Linear (its parts share it,
    runtime/dylora.py FusedSkip), each other layer its own; was DBS403."""
    outcome = _flux(tmp_path, "--network_args algo=dylora block_size=4 module_dropout=0.1 preset=full")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.dylora_unit) == ("dylora", 0.1, 4)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


def test_module_dropout_with_dylora_on_sd3_maps(tmp_path):
    outcome = _sd3(tmp_path, "--network_args algo=dylora block_size=8 module_dropout=0.25 preset=attn-mlp")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout) == ("dylora", 0.25) and a.fused


def test_module_dropout_with_other_entries_in_a_dylora_network_stays_refused(tmp_path):
    """A preset file's LoCon entry in a DyLoRA network: dbspec's run of several kinds draws no dropout
    (DBS578), as on the U-Net."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n\n'
        '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "locon"\ndim = 4\n',
        encoding="utf-8",
    )
    outcome = _flux(tmp_path, "--network_args algo=dylora block_size=2 module_dropout=0.1 preset=p.toml")
    assert "adapter.module_dropout with adapter.blocks[0].kind" in messages(outcome, "DBS403")
