"""LyCORIS preset files of several algorithms with weight decomposition on Flux / SD3 / Chroma's fused Linears
(issue 12; was DBS403, a spec's DBS578 / DBS583): the network's dora_wd is the adapter's `dora` (LyCORIS
hands weight_decompose to every module; LoConModule, LohaModule and LokrModule read it, each on its whole
fused Linear), an entry's own weight_decompose its block's `dora`; the other kinds never decompose
(runtime/mixed_kinds.py kind_adapter); on a GLoRA or DyLoRA network (no `dora` of the adapter's) the LoCon /
LoHa / LoKr blocks' own. tests/runtime/test_lycoris_mixed_flow.py, test_lycoris_mixed_flow_glora.py and
test_lycoris_mixed_flow_dylora.py check the decomposed modules against lycoris-lora 4.1.3's create_network on
tiny Flux runs."""

from __future__ import annotations

import re

import pytest
from convert_kit import codes, component_file, errors, fate, images, kohya, messages, plan_of
from test_convert_lycoris_flow_preset_file import MIXED, SD3_X_ATTENTION_MIXED, _flux, _sd3

# MIXED (LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1, the network's kind
# elsewhere) with a full entry on the double blocks' image out projection
MIXED_FULL = MIXED + '[name_algo_map."double_blocks.*.img_attn.proj"]\nalgo = "full"\n'


def _first(a, path: str):
    return next((b for b in a.blocks if re.search(b.pattern, path)), None)


def test_flux_dora_wd_beside_other_algorithms_is_the_adapters_dora(tmp_path):
    """A LoCon network's dora_wd with LoKr, LoHa and full entries: the adapter's `dora` in LyCORIS's form per
    output row (every LoCon, LoKr and LoHa fused Linear decomposed whole), the blocks without a `dora` of
    their own; with wd_on_output=False per input column (each fused layer's parts sharing one (1, in)
    magnitude, runtime/lycoris_dora.py tie_fused_doras)."""
    outcome = _flux(tmp_path / "rows", MIXED_FULL, '"algo=locon" "dora_wd=True"')
    assert not {"DBS402", "DBS403", "DBS578", "DBS583"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args dora_wd") == "mapped"
    a = plan_of(outcome, tmp_path / "rows").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lora", True, "lycoris", "output")
    assert a.fused and sorted((b.kind, b.dora, b.dora_axis) for b in a.blocks) == [
        ("full", "adapter", "adapter"),
        ("loha", "adapter", "adapter"),
        ("lokr", "adapter", "adapter"),
    ]
    assert _first(a, "transformer_blocks.3.attn.to_v").kind == "lokr"
    assert _first(a, "single_transformer_blocks.5.proj_mlp").kind == "loha"
    assert _first(a, "transformer_blocks.3.attn.to_out.0").kind == "full"
    outcome = _flux(tmp_path / "columns", MIXED_FULL, '"algo=locon" "dora_wd=True" "wd_on_output=False"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args wd_on_output") == "mapped"
    a = plan_of(outcome, tmp_path / "columns").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lora", True, "lycoris", "input")


def test_flux_entries_own_weight_decompose_beside_other_algorithms(tmp_path):
    """Entries' own weight_decompose beside other algorithms: a LoKr entry's true on a LoCon network is its
    block's `dora = "on"` (the LoKr fused q/k/v alone decomposed); a LoHa entry's false on a dora_wd LoKr
    network its block's `dora = "off"` (every other LoKr, LoHa and LoCon layer decomposed). An entry's own
    wd_on_out false on a fused Linear (was DBS403, a spec's DBS583) is its block's `dora_axis = "input"`: the
    fused layer's parts share one (1, in) magnitude (runtime/lycoris_dora.py tie_fused_doras;
    tests/runtime/test_lycoris_flux_block_columns.py against lycoris-lora 4.1.3's LokrModule)."""
    own = MIXED.replace("dim = 8\n", "dim = 8\nweight_decompose = true\n")
    outcome = _flux(tmp_path / "on", own, '"algo=locon"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "on").adapter
    assert (a.kind, a.dora, a.dora_form) == ("lora", False, "lycoris")
    assert [(b.kind, b.rank, b.dora) for b in a.blocks] == [("lokr", 8, "on"), ("loha", 2, "adapter")]
    off = MIXED.replace('algo = "lokr"\ndim = 8', 'algo = "locon"\ndim = 8').replace(
        "alpha = 1\n", "alpha = 1\nweight_decompose = false\n"
    )
    outcome = _flux(tmp_path / "off", off, '"algo=lokr" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "off").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lokr", True, "lycoris", "output")
    assert [(b.kind, b.dora) for b in a.blocks] == [("lora", "adapter"), ("loha", "off")]
    axis = own.replace("weight_decompose = true\n", "weight_decompose = true\nwd_on_out = false\n")
    outcome = _flux(tmp_path / "axis", axis, '"algo=locon"')
    assert not {"DBS402", "DBS403", "DBS583"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "axis").adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lora", False, "lycoris", "output")
    assert [(b.kind, b.dora, b.dora_axis) for b in a.blocks] == [
        ("lokr", "on", "input"),
        ("loha", "adapter", "adapter"),
    ]


@pytest.mark.parametrize("algo", ["glora", "dylora"])
def test_flux_glora_and_dylora_networks_dora_wd_is_their_entries_blocks_dora(tmp_path, algo):
    """A GLoRA or DyLoRA network's dora_wd beside LoKr / LoHa entries on Flux's fused Linears (was DBS403
    "DBS578": the adapter has no `dora`): create_single_module hands weight_decompose to every module,
    LokrModule and LohaModule decompose each fused Linear whole, GLoRAModule and DyLoraModule never read it;
    so the LoKr / LoHa blocks' own `dora` per output row, the adapter's own layers undecomposed (dora_wd read:
    no DBS405); an entry's weight_decompose false keeps its block off. tests/runtime/
    test_lycoris_mixed_flow_glora.py and test_lycoris_mixed_flow_dylora.py check the decomposed modules
    against lycoris-lora 4.1.3's create_network on a tiny Flux run."""
    extra = ' "block_size=2"' if algo == "dylora" else ""
    outcome = _flux(tmp_path / "wd", MIXED, f'"algo={algo}" "dora_wd=True"{extra}')
    assert not {"DBS402", "DBS403", "DBS405"} & codes(outcome), errors(outcome)
    assert "network_args dora_wd" not in outcome.conversion.reports
    a = plan_of(outcome, tmp_path / "wd").adapter
    assert (a.kind, a.dora, a.dora_form) == (algo, False, "lycoris") and a.fused
    assert [(b.kind, b.dora, b.dora_axis) for b in a.blocks] == [
        ("lokr", "on", "adapter"),
        ("loha", "on", "adapter"),
    ]
    assert all(re.search(a.blocks[0].pattern, f"transformer_blocks.3.attn.to_{p}") for p in "qkv")
    assert _first(a, "transformer_blocks.3.attn.to_out.0") is None  # the adapter's kind: never decomposed
    off = MIXED.replace("alpha = 1\n", "alpha = 1\nweight_decompose = false\n")
    outcome = _flux(tmp_path / "off", off, f'"algo={algo}" "dora_wd=True"{extra}')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "off").adapter
    assert [(b.kind, b.dora) for b in a.blocks] == [("lokr", "on"), ("loha", "adapter")]
    # wd_on_output=False (was DBS403, a spec's DBS583): LokrModule / LohaModule per input column of each
    # fused Linear, the LoKr / LoHa blocks' own `dora_axis`, their parts sharing one (1, in) magnitude
    outcome = _flux(tmp_path / "cols", MIXED, f'"algo={algo}" "dora_wd=True" "wd_on_output=False"{extra}')
    assert not {"DBS402", "DBS403", "DBS405"} & codes(outcome), errors(outcome)
    assert "network_args wd_on_output" not in outcome.conversion.reports
    a = plan_of(outcome, tmp_path / "cols").adapter
    assert (a.kind, a.dora, a.dora_form) == (algo, False, "lycoris") and a.fused
    assert [(b.kind, b.dora, b.dora_axis) for b in a.blocks] == [
        ("lokr", "on", "input"),
        ("loha", "on", "input"),
    ]


def test_flux_glora_network_entries_own_weight_decompose(tmp_path):
    """An entry's own weight_decompose on a GLoRA network (was DBS403 "SD 1.x/2.x and SDXL only"): its LoKr
    block's `dora = "on"`, the LoHa one's none; without any LoCon / LoHa / LoKr entry dora_wd reaches no
    module that reads it (inert: GLoRAModule never reads it)."""
    own = MIXED.replace("dim = 8\n", "dim = 8\nweight_decompose = true\n")
    outcome = _flux(tmp_path / "own", own, '"algo=glora"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "own").adapter
    assert (a.kind, a.dora, a.dora_form) == ("glora", False, "lycoris")
    assert [(b.kind, b.dora) for b in a.blocks] == [("lokr", "on"), ("loha", "adapter")]
    alone = MIXED.replace('algo = "lokr"\n', "").replace('algo = "loha"\n', "")
    outcome = _flux(tmp_path / "alone", alone, '"algo=glora" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args dora_wd") == "inert"
    a = plan_of(outcome, tmp_path / "alone").adapter
    assert a.dora_form == "peft" and all(b.dora == "adapter" for b in a.blocks)


def test_flux_dora_wd_with_module_dropout_beside_other_algorithms(tmp_path):
    """A GLoRA network's dora_wd with module_dropout (was DBS403 / a spec's DBS583): its decomposed LoKr /
    LoHa blocks' one draw per fused module skips the whole decomposed update, as LokrModule / LohaModule do
    (tests/runtime/test_lycoris_mixed_flow_dropout.py against lycoris-lora 4.1.3). A LoCon network's
    dora_wd with it beside LoKr / LoHa entries, and a GLoRA network's decomposed LoCon entry (was DBS403, a
    spec's DBS267 / DBS583): LoConModule's one draw per fused Linear shared by the decomposed parts
    (fused_lycoris_dropout.py add_fused_locon_dora_dropout; same test file); a GLoRA network's
    wd_on_output=False with it too (was DBS403, a spec's DBS583: its blocks' own `dora_axis` "input", one draw
    per fused layer, tests/runtime/test_lycoris_flux_block_columns.py). The network's rank_dropout beside
    other kinds with dora_wd per output row too (was DBS403, a spec's DBS578; beside LoKr entries DBS402);
    per input column too (was DBS403, a spec's DBS578; tests/runtime/
    test_lycoris_flow_rank_dropout_layers.py)."""
    outcome = _flux(tmp_path / "glora", MIXED, '"algo=glora" "dora_wd=True" "module_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "glora").adapter
    assert a.module_dropout == 0.1 and [(b.kind, b.dora) for b in a.blocks] == [
        ("lokr", "on"),
        ("loha", "on"),
    ]
    locon = MIXED.replace('algo = "lokr"', 'algo = "locon"')
    outcome = _flux(tmp_path / "locon", MIXED, '"algo=locon" "dora_wd=True" "module_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "locon").adapter
    assert (a.kind, a.dora, a.dora_form, a.module_dropout) == ("lora", True, "lycoris", 0.1) and a.fused
    assert [(b.kind, b.dora) for b in a.blocks] == [("lokr", "adapter"), ("loha", "adapter")]
    outcome = _flux(tmp_path / "entry", locon, '"algo=glora" "dora_wd=True" "module_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "entry").adapter
    assert (a.kind, a.dora, a.module_dropout) == ("glora", False, 0.1)
    assert [(b.kind, b.dora) for b in a.blocks] == [("lora", "on"), ("loha", "on")]
    drop = '"algo=locon" "dora_wd=True" "rank_dropout=0.1"'
    outcome = _flux(tmp_path / "rank", MIXED, drop, allow=True)  # the LoKr entries: kohya stops (DBS402)
    assert "LokrModules draw the network's rank-dropout mask" in messages(outcome, "DBS402"), errors(outcome)
    loha = MIXED.replace('algo = "lokr"', 'algo = "loha"')  # per output row: converts (was DBS403)
    outcome = _flux(tmp_path / "rank_loha", loha, drop)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "rank_loha").adapter
    assert (a.dora, a.rank_dropout, a.rank_dropout_form) == (True, 0.1, "lycoris") and a.fused
    outcome = _flux(tmp_path / "rank_cols", loha, drop + ' "wd_on_output=False"')  # per column (was DBS403)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "rank_cols").adapter
    assert (a.dora, a.dora_axis, a.rank_dropout, a.rank_dropout_form) == (True, "input", 0.1, "lycoris")
    cols = '"dora_wd=True" "wd_on_output=False" "module_dropout=0.1"'
    outcome = _flux(tmp_path / "cols", MIXED, f'"algo=glora" {cols}')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "cols").adapter
    assert a.module_dropout == 0.1 and [(b.kind, b.dora, b.dora_axis) for b in a.blocks] == [
        ("lokr", "on", "input"),
        ("loha", "on", "input"),
    ]


def test_sd3_dora_wd_beside_a_loha_entry(tmp_path):
    """SD3: a LoKr network's dora_wd with a LoHa entry on the x blocks' fused q/k/v: the adapter's `dora`,
    the LoHa block decomposed with it (LohaModule reads weight_decompose); an entry's own false its block's
    `dora = "off"`; on a DyLoRA network the LoHa block's own `dora`."""
    outcome = _sd3(tmp_path / "net", SD3_X_ATTENTION_MIXED, '"algo=lokr" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "net").adapter
    assert a.fused and (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lokr", True, "lycoris", "output")
    assert [(b.kind, b.rank, b.dora) for b in a.blocks] == [("loha", 2, "adapter")]
    off = SD3_X_ATTENTION_MIXED + "weight_decompose = false\n"
    outcome = _sd3(tmp_path / "off", off, '"algo=lokr" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "off").adapter
    assert a.dora and [(b.kind, b.dora) for b in a.blocks] == [("loha", "off")]
    # a DyLoRA network's (was DBS403): the LoHa block's own `dora`, the DyLoRA layers' none
    outcome = _sd3(tmp_path / "dylora", SD3_X_ATTENTION_MIXED, '"algo=dylora" "block_size=2" "dora_wd=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "dylora").adapter
    assert a.fused and (a.kind, a.dora, a.dora_form) == ("dylora", False, "lycoris")
    assert [(b.kind, b.rank, b.dora) for b in a.blocks] == [("loha", 2, "on")]
    # ... per input column (was DBS403, a spec's DBS583): the LoHa block's own axis, its fused q/k/v sharing
    # one (1, in) magnitude
    cols = '"algo=dylora" "block_size=2" "dora_wd=True" "wd_on_output=False"'
    outcome = _sd3(tmp_path / "cols", SD3_X_ATTENTION_MIXED, cols)
    assert not {"DBS402", "DBS403", "DBS405"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "cols").adapter
    assert [(b.kind, b.rank, b.dora, b.dora_axis) for b in a.blocks] == [("loha", 2, "on", "input")]


@pytest.mark.parametrize("algo", ["loha", "glora"])
def test_chroma_dora_wd_beside_a_lokr_entry(tmp_path, algo):
    """Chroma (Flux's fused Linears): a LoHa network's dora_wd with a LoKr entry on the double blocks' image
    q/k/v: the adapter's `dora` per output row, the LoKr block covering every part of each fused q/k/v; on a
    GLoRA network (was DBS403) the LoKr and LoHa blocks' own `dora`, GLoRA's layers none."""
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    (tmp_path / "preset.toml").write_text(MIXED, encoding="utf-8")
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" "dora_wd=True" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--guidance_scale 0.0",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    lokr = a.blocks[0]
    assert all(re.search(lokr.pattern, f"transformer_blocks.0.attn.to_{p}") for p in "qkv")
    assert plan.model.family == "chroma" and a.fused and a.dora_form == "lycoris"
    if algo == "glora":
        assert not a.dora and [(b.kind, b.rank, b.dora) for b in a.blocks] == [
            ("lokr", 8, "on"),
            ("loha", 2, "on"),
        ]
        return
    assert (a.kind, a.dora, a.dora_axis) == ("loha", True, "output")
    assert (lokr.kind, lokr.rank, lokr.dora) == ("lokr", 8, "adapter")
