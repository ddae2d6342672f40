"""lycoris.kohya `algo=full` / `algo=ia3` networks on Flux, SD3 and Chroma whose preset file gives some
layers another algorithm (issue 12; was DBS403: "on SD 1.x/2.x and SDXL only"): each entry of another
algorithm is a block of that `kind` at its dim and alpha (spec ScaleBlock / TextEncoderBlock) over whole
fused Linears, the adapter with `fused_projections` (one module of each kind per fused Linear, as kohya's
network builds it); `--scale_weight_norms` scales the entries' LoCon / LoHa / LoKr / OFT modules; the
network's `dora_wd` decomposes the entries' LoCon / LoHa / LoKr modules; its rank_dropout, which the entries
draw too, and what the blocks do not carry stay DBS403. tests/runtime/test_lycoris_whole_main_mixed_flow.py
checks the plans against lycoris-lora 4.1.3's create_network on kohya's tiny Flux and MMDiT layers."""

from __future__ import annotations

import re

import pytest
from convert_kit import codes, errors, messages, plan_of
from test_convert_kohya_chroma import _chroma
from test_convert_lycoris_flow_preset_file import _flux, _sd3

FLUX = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 4
alpha = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 4
[name_algo_map.img_in]
algo = "glora"
dim = 4
alpha = 2
[name_algo_map.txt_in]
algo = "dylora"
dim = 4
alpha = 4
[module_algo_map.CLIPAttention]
algo = "loha"
dim = 2
alpha = 1
"""


def _refused(outcome) -> str:
    return messages(outcome, "DBS403")


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_flux_entries_of_other_algorithms_are_blocks_of_their_kind(tmp_path, algo):
    outcome = _flux(tmp_path, FLUX, f'"algo={algo}"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    got = [(b.kind, b.rank, b.alpha, b.unit) for b in a.blocks]
    assert sorted(got) == sorted(
        [("lokr", 4, 2.0, 0), ("loha", 2, 1.0, 0), ("lora", 2, 4.0, 0), ("glora", 4, 2.0, 0)]
        + [("dylora", 4, 4.0, 4)]  # DyLoraModule's block size: the network's default 4
    )
    lokr = next(b for b in a.blocks if b.kind == "lokr")
    for i in (0, 18):  # a fused Linear's parts in one block
        assert all(re.search(lokr.pattern, f"transformer_blocks.{i}.attn.to_{p}") for p in "qkv")
    assert not re.search(lokr.pattern, "transformer_blocks.0.attn.add_q_proj")
    assert [(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks] == [("loha", 2, 1.0)]
    assert a.max_norm == 0.0 and "IA3Module takes them" not in messages(outcome, "DBS405")


def test_sd3_and_chroma_entries_are_blocks_of_their_kind(tmp_path):
    sd3 = FLUX.replace("double_blocks.*_attn.*", "joint_blocks.*.attn.*").split("[name_algo_map")[0]
    sd3 = sd3.replace(', "single_blocks.*.linear*", "img_in", "txt_in"', "")
    sd3 += '[name_algo_map."joint_blocks.*.x_block.attn.qkv"]\nalgo = "lokr"\ndim = 4\n'
    outcome = _sd3(tmp_path / "sd3", sd3, '"algo=ia3"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "sd3").adapter
    assert (a.kind, [(b.kind, b.rank, b.alpha) for b in a.blocks]) == ("ia3", [("lokr", 4, 4.0)])
    assert a.fused and all(re.search(a.blocks[0].pattern, f"transformer_blocks.1.attn.to_{p}") for p in "qkv")
    chroma = FLUX.split("[module_algo_map")[0].replace('["CLIPAttention"]', "[]")
    (tmp_path / "chroma").mkdir()
    (tmp_path / "chroma" / "p.toml").write_text(chroma, encoding="utf-8")
    outcome = _chroma(
        tmp_path / "chroma", '--network_module lycoris.kohya --network_args "algo=full" "preset=p.toml"'
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "chroma").adapter
    assert a.kind == "full" and a.fused
    assert {b.kind for b in a.blocks} == {"lokr", "loha", "lora", "glora", "dylora"}


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_flux_max_norm_and_dora_wd_reach_the_entries(tmp_path, algo):
    """`--scale_weight_norms` is the adapter's max_norm (LyCORIS's form on the entries' layers alone; was
    DBS403); `dora_wd` decomposes the LoCon / LoHa / LoKr entries (their blocks' `dora`), read, not ignored
    (beside a max norm a decomposition stays DBS403, as on every network)."""
    outcome = _flux(tmp_path / "norm", FLUX, f'"algo={algo}" --scale_weight_norms 1.5')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "norm").adapter
    assert (a.max_norm, a.max_norm_form) == (1.5, "lycoris")
    outcome = _flux(tmp_path / "dora", FLUX, f'"algo={algo}" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "dora_wd" not in messages(outcome, "DBS405")
    a = plan_of(outcome, tmp_path / "dora").adapter
    assert a.dora_form == "lycoris"
    dora = {b.kind: b.dora for b in (*a.blocks, *a.text_encoder_blocks)}
    assert dora == {"lokr": "on", "loha": "on", "lora": "on", "glora": "adapter", "dylora": "adapter"}


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_rank_dropout_beside_lokr_entries_is_invalid(tmp_path, algo):
    """The network's rank_dropout, which the LoCon / LoHa / LoKr entries draw (FullModule too, IA3Module
    not): the LoKr entries' LokrModules draw its mask on the CPU, so kohya stops on a GPU: DBS402 with SD's
    message (was DBS403; issue 12). A LoKr entry's own factor
    converts: test_convert_kohya_mixed_own_opts.py."""
    outcome = _flux(tmp_path, FLUX, f'"algo={algo}" "rank_dropout=0.1"', allow=True)
    assert "LokrModules draw the network's rank-dropout mask on the CPU" in messages(outcome, "DBS402")
    assert "rank_dropout" not in _refused(outcome), errors(outcome)


def test_ia3_bypass_mode_with_dora_wd_is_invalid(tmp_path):
    """IA^3's bypass_mode converts beside the entries (the adapter's `bypass`); with dora_wd reaching its
    LoCon / LoHa / LoKr entries LyCORIS never applies their decomposition, yet saves dora_scale: DBS402."""
    outcome = _flux(tmp_path / "plain", FLUX, '"algo=ia3" "bypass_mode=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path / "plain").adapter.bypass
    outcome = _flux(tmp_path / "dora", FLUX, '"algo=ia3" "bypass_mode=True" "dora_wd=True"', allow=True)
    assert "never applies the weight decomposition" in messages(outcome, "DBS402")
