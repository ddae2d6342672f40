"""A T-LoRA network's preset-file entry with `use_data_init = false` (lycoris-lora 4.1.3's TLoraModule then
starts from the SVD of a random torch.normal matrix, not its weight's): its block's `data_init = false` on
SD 1.x/2.x and SDXL and on Flux / SD3 / Chroma's fused Linears (was DBS403, a spec's DBS622 there)
(tests/runtime/test_lycoris_tlora_random.py checks the start against TLoraModule's)."""

from __future__ import annotations

import io

from convert_kit import GPU, errors, out_path, plan_of, plan_spec, write
from rich.console import Console

from dbspec.plan.summary import render_summary
from test_convert_kohya_tlora import _FILE, _lycoris
from test_convert_lycoris_flow_tlora import _flux

_RANDOM = _FILE + '[module_algo_map.FeedForward]\nuse_data_init = false\nsig_type = "last"\n'


def test_tlora_entry_s_random_start_is_its_block_s(tmp_path):
    """use_data_init = false (TLoraModule's truth test: 0 too) to the entry's block's data_init, beside its
    sig_type; the network's other layers keep their weight's SVD; the plan's summary says so; a block of
    another kind with a random start: DBS622."""
    write(tmp_path / "p.toml", _RANDOM)
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert [(b.kind, b.rank, b.alpha, b.sig_type, b.data_init) for b in a.blocks] == [
        ("adapter", 8, 4.0, "last", False)
    ]
    assert "ff" in a.blocks[0].pattern and not a.text_encoder_blocks
    text = io.StringIO()
    render_summary(plan_of(outcome, tmp_path), Console(file=text, width=400))
    assert "SVD of a random matrix" in text.getvalue()
    (tmp_path / "z").mkdir()
    write(tmp_path / "z" / "p.toml", _FILE + "[module_algo_map.FeedForward]\nuse_data_init = 0\n")
    zero = plan_of(_lycoris(tmp_path / "z", '"algo=tlora", "preset=p.toml"'), tmp_path / "z").adapter
    assert [b.data_init for b in zero.blocks] == [False]
    bad = 'adapter.blocks=[{pattern = "ff", kind = "lora", rank = 4, alpha = 1.0, data_init = false}]'
    planned = plan_spec(out_path(tmp_path), GPU, overrides=[bad])
    assert planned.plan is None and "DBS622" in {d.code for d in planned.diagnostics}


def test_flux_tlora_random_start_is_its_fused_block_s(tmp_path):
    """On Flux (was DBS403) the entry's block's data_init = false over whole fused Linears: one TLoraModule
    per fused Linear, its random matrix drawn over the stacked rows
    (tests/runtime/test_lycoris_tlora_random.py); the same block in a spec plans alike."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock"]\ntext_encoder_target_module = []\n'
        "[module_algo_map.DoubleStreamBlock]\nuse_data_init = false\n"
    )
    outcome = _flux(tmp_path, "--network_args algo=tlora preset=p.toml")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.fused and {b.data_init for b in a.blocks} == {False}
    spec = 'adapter.blocks=[{pattern = "attn", rank = 8, alpha = 4.0, data_init = false}]'
    planned = plan_spec(out_path(tmp_path), GPU, overrides=[spec])
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.fused and not planned.plan.adapter.blocks[0].data_init
