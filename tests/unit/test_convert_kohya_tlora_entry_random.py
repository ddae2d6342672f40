"""A T-LoRA entry's own `use_data_init = false` in a LoCon or LoHa network's preset file (was DBS403): its
tlora block's `data_init = false` on SD 1.x/2.x and SDXL (tests/runtime/test_lycoris_tlora_entry_random.py
checks the start against TLoraModule's); on a DyLoRA network it stays DBS403, and a spec's such block there is
DBS622 (a LoKr network's and Flux / SD3 / Chroma's fused Linears beside LoCon convert since:
tests/runtime/test_lycoris_tlora_entry_starts.py; this file's refusals then moved to a GLoRA network, and
with GLoRA's fused Linears lifted, to a DyLoRA one on Flux)."""

from __future__ import annotations

import pytest
from convert_kit import GPU, errors, out_path, plan_of, plan_spec, write
from test_convert_kohya_tlora import _FILE, _lycoris
from test_convert_lycoris_flux import _flux

_ENTRY = '[module_algo_map.FeedForward]\nalgo = "tlora"\nuse_data_init = false\n'


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tlora_entry_random_start_is_its_block_s(tmp_path, algo):
    """The entry's tlora block takes data_init = false (TLoraModule's truth test: 0 too) at the entry's
    dim and alpha; the network's other layers keep their kind; a spec's block of another kind with a random
    start, or a tlora block of a lokr adapter: DBS622."""
    write(tmp_path / "p.toml", _FILE + _ENTRY)
    outcome = _lycoris(tmp_path, f'"algo={algo}", "preset=p.toml"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == ("lora" if algo == "locon" else "loha")
    assert [(b.kind, b.rank, b.alpha, b.data_init) for b in a.blocks] == [("tlora", 8, 4.0, False)]
    assert "ff" in a.blocks[0].pattern
    (tmp_path / "z").mkdir()
    write(tmp_path / "z" / "p.toml", _FILE + _ENTRY.replace("false", "0"))
    zero = plan_of(_lycoris(tmp_path / "z", f'"algo={algo}", "preset=p.toml"'), tmp_path / "z").adapter
    assert [b.data_init for b in zero.blocks] == [False]
    other = 'adapter.blocks=[{pattern = "ff", kind = "loha", rank = 4, alpha = 1.0, data_init = false}]'
    planned = plan_spec(out_path(tmp_path), GPU, overrides=[other])
    assert planned.plan is None and "DBS622" in {d.code for d in planned.diagnostics}


def test_tlora_entry_random_start_on_glora_and_dylora_networks(tmp_path):
    """A GLoRA network's T-LoRA entry's use_data_init = false converts on SD (its tlora block's data_init,
    checked in tests/runtime/test_lycoris_tlora_entry_hosts.py) and on Flux (one TLoraModule per fused
    Linear, checked in tests/runtime/test_lycoris_tlora_entry_flux_hosts.py), a DyLoRA network's on Flux too
    (was DBS403, checked there as well); a lora spec's block of kind lora with data_init = false and
    fused_projections: DBS622."""
    write(tmp_path / "p.toml", _FILE + _ENTRY)
    outcome = _lycoris(tmp_path, '"algo=glora", "preset=p.toml"')
    assert [(b.kind, b.data_init) for b in plan_of(outcome, tmp_path).adapter.blocks] == [("tlora", False)]
    flux = tmp_path / "flux"
    flux.mkdir()
    entry = '[module_algo_map.DoubleStreamBlock]\nalgo = "tlora"\n'
    (flux / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock", "SingleStreamBlock"]\ntext_encoder_target_module = []\n'
        + entry
        + "use_data_init = false\n"
    )
    glora = plan_of(_flux(flux, "--network_args algo=glora preset=p.toml"), flux)
    assert {(b.kind, b.data_init) for b in glora.adapter.blocks} == {("tlora", False)}
    dylora = plan_of(_flux(flux, "--network_args algo=dylora preset=p.toml"), flux)
    assert dylora.adapter.kind == "dylora"
    assert {(b.kind, b.data_init) for b in dylora.adapter.blocks} == {("tlora", False)}
    (flux / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock", "SingleStreamBlock"]\ntext_encoder_target_module = []\n'
        + entry
    )
    fused = plan_of(_flux(flux, "--network_args algo=locon preset=p.toml"), flux)
    assert fused.adapter.fused and {b.kind for b in fused.adapter.blocks} == {"tlora"}
    index = next(i for i, b in enumerate(fused.adapter.blocks) if b.kind == "tlora")
    # a lora spec's tlora block with data_init = false and fused_projections plans (was DBS622), its block
    # of kind lora with it does not (no T-LoRA layers to start)
    planned = plan_spec(out_path(flux), GPU, overrides=[f"adapter.blocks[{index}].data_init=false"])
    assert planned.plan is not None and not planned.plan.adapter.blocks[index].data_init
    lora = [f"adapter.blocks[{index}].data_init=false", f'adapter.blocks[{index}].kind="lora"']
    planned = plan_spec(out_path(flux), GPU, overrides=lora)
    assert planned.plan is None and "DBS622" in {d.code for d in planned.diagnostics}
