"""A T-LoRA network's preset-file entry with `use_data_init = false` (lycoris-lora 4.1.3's TLoraModule then
starts from the SVD of a random torch.normal matrix, not its weight's): its block's `data_init = false` on
SD 1.x/2.x and SDXL (was DBS403); on Flux / SD3 / Chroma's fused Linears still DBS403, a spec's DBS622
(tests/runtime/test_lycoris_tlora_random.py checks the start against TLoraModule's)."""

from __future__ import annotations

import io

from convert_kit import GPU, codes, errors, messages, out_path, plan_of, plan_spec, write
from rich.console import Console

from dbspec.plan.summary import render_summary
from test_convert_kohya_tlora import _FILE, _lycoris
from test_convert_lycoris_flow_tlora import _flux

_RANDOM = _FILE + '[module_algo_map.FeedForward]\nuse_data_init = false\nsig_type = "last"\n'


def test_tlora_entry_s_random_start_is_its_block_s(tmp_path):
    """use_data_init = false (TLoraModule's truth test: 0 too) to the entry's block's data_init, beside its
    sig_type; the network's other layers keep their weight's SVD; the plan's summary says so; a block of
    another kind or a fused T-LoRA with a random start: DBS622."""
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


def test_flux_tlora_random_start_is_refused(tmp_path):
    """On Flux one TLoraModule per fused Linear starts from one SVD of the stacked weight: a random start
    there stays DBS403 (a spec's DBS622)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock"]\ntext_encoder_target_module = []\n'
        "[module_algo_map.DoubleStreamBlock]\nuse_data_init = false\n"
    )
    outcome = _flux(tmp_path, "--network_args algo=tlora preset=p.toml")
    assert "DBS403" in codes(outcome) and "DBS622" in messages(outcome, "DBS403"), errors(outcome)
    plain = _flux(tmp_path, "--network_args algo=tlora")
    assert plan_of(plain, tmp_path).adapter.fused
    bad = 'adapter.blocks=[{pattern = "attn", rank = 8, alpha = 4.0, data_init = false}]'
    planned = plan_spec(out_path(tmp_path), GPU, overrides=[bad])
    assert planned.plan is None and "DBS622" in {d.code for d in planned.diagnostics}
