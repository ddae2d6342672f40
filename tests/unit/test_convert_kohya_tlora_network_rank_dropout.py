"""A T-LoRA network's rank_dropout beside its preset file's LoCon / LoHa (full, Diag-OFT, ...) entries (was
DBS403, a spec's DBS578): LyCORIS hands it to every module, TLoraModule never reads it and the entries'
modules draw it, so it is the T-LoRA adapter's `rank_dropout`, which its blocks of those kinds draw
(tests/runtime/test_lycoris_tlora_network_rank_dropout.py checks it against lycoris-lora 4.1.3's network on
SD 1.x, test_lycoris_flow_tlora_rank_dropout.py on Flux's fused Linears)."""

from __future__ import annotations

from convert_kit import GPU, codes, errors, messages, out_path, plan_of, plan_spec, write
from test_convert_kohya_tlora import _FILE, _lycoris


def test_tlora_network_s_rank_dropout_is_its_locon_and_loha_entries(tmp_path):
    write(tmp_path / "p.toml", _FILE + '[module_algo_map.FeedForward]\nalgo = "locon"\n')
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "rank_dropout=0.1", "module_dropout=0.2"')
    assert not {"DBS402", "DBS403", "DBS405"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == ("tlora", 0.1, "lycoris", 0.2)
    assert [b.kind for b in a.blocks] == ["lora"]
    (tmp_path / "h").mkdir()
    write(tmp_path / "h" / "p.toml", _FILE + '[module_algo_map.FeedForward]\nalgo = "loha"\n')
    loha = plan_of(
        _lycoris(tmp_path / "h", '"algo=tlora", "preset=p.toml", "rank_dropout=0.1"'), tmp_path / "h"
    )
    assert (loha.adapter.rank_dropout, loha.adapter.rank_dropout_form) == (0.1, "kohya")  # LohaModule's own
    assert [b.kind for b in loha.adapter.blocks] == ["loha"]


def test_tlora_network_s_rank_dropout_elsewhere(tmp_path):
    """Without entries that read it: never read (DBS405), a spec's DBS624; beside LoKr entries kohya stops
    (DBS402: their LokrModules' CPU mask, LyCORIS issue #291); in bypass_mode beside full entries kohya stops
    (FullModule raises on bypass_mode; beside the other kinds it converts,
    test_convert_kohya_tlora_bypass_entries.py)."""
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=attn-mlp", "rank_dropout=0.1"')
    assert "DBS405" in codes(outcome) and "never reads" in messages(outcome, "DBS405")
    assert plan_of(outcome, tmp_path).adapter.rank_dropout == 0.0
    planned = plan_spec(out_path(tmp_path), GPU, overrides=["adapter.rank_dropout=0.1"])
    assert planned.plan is not None and "DBS624" in {d.code for d in planned.diagnostics}
    for sub, entry, args, code in (
        ("k", "lokr", '"rank_dropout=0.1"', "DBS402"),
        ("b", "full", '"rank_dropout=0.1", "bypass_mode=True"', "DBS402"),
    ):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "p.toml", _FILE + f'[module_algo_map.FeedForward]\nalgo = "{entry}"\n')
        outcome = _lycoris(tmp_path / sub, f'"algo=tlora", "preset=p.toml", {args}')
        assert code in codes(outcome), (sub, errors(outcome))


def test_flux_tlora_network_s_rank_dropout_is_its_entries(tmp_path):
    """On Flux's fused Linears too (lycoris_flux.py _entries_rank_dropout: was DBS403), each fused Linear one
    LyCORIS module's mask (tests/runtime/test_lycoris_flow_tlora_rank_dropout.py)."""
    from test_convert_lycoris_flow_tlora import _flux

    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n'
        '[name_algo_map."double_blocks.*.img_attn.qkv"]\nalgo = "locon"\n'
    )
    outcome = _flux(
        tmp_path, "--network_train_unet_only --network_args algo=tlora preset=p.toml rank_dropout=0.1"
    )
    assert not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, bool(a.fused)) == ("tlora", 0.1, "lycoris", True)
    assert [b.kind for b in a.blocks if b.kind != "adapter"] == ["lora"]
