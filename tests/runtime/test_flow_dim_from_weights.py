"""kohya --dim_from_weights with a Flux `split_qkv` file (networks/lora_flux.py create_network_from_weights:
each module of the file at its own rank and alpha, split_qkv off, so a split file's fused layers load unsplit,
one down of three or four times the rank). The converter's blocks (dbspec/convert/kohya/file_ranks.py) over a
tiny run's split export start a run whose fused layers share one down holding the file's stacked downs and
whose other layers are the file's, whose other modules have no LoRA; it trains and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.kohya.file_ranks import flow_blocks
from dbspec.families import family_spec
from tests.runtime.runspec import compile_spec, write_spec, assert_lora_resumes_bit_exact
from tests.runtime.test_flow_init import _export, _loaded


def _from_weights_spec(tmp_path: Path, export: Path, steps: int) -> Path:
    blocks, extra = flow_blocks(read_lora_file(export), "flux")
    targets = ", ".join(f'"{t}"' for t in (*family_spec("flux").kohya_lora_targets, *extra))
    text = (
        f'[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\ninit_partial = true\n'
        f'init_weights = "{export}"\ndenoiser_targets = [{targets}]\n'
        '\n[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\nalpha = 1\n'
    )
    for block in blocks:
        text += f"\n[[adapter.blocks]]\npattern = '{block['pattern']}'\nrank = {block['rank']}\n"
        text += f"alpha = {block['alpha']}\n"
    text += "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    return write_spec(tmp_path / "second", base="builtin:tiny-flux", steps=steps, extra=text)


def test_a_split_file_starts_unsplit_fused_layers_at_its_rank(tmp_path):
    export, _ = _export(tmp_path, "flux", False)  # the parts' downs stacked: kohya's split_qkv file
    saved = load_file(str(export))
    key = next(k for k in saved if k.endswith("_img_attn_qkv.lora_down.weight"))
    assert saved[key].shape[0] == 12  # 3 parts x rank 4
    plan = compile_spec(_from_weights_spec(tmp_path, export, 2), ["optimizer.lr=1e-2"])
    qkv = next(b for b in plan.adapter.blocks if "to_q" in b.pattern and b.rank)
    assert qkv.rank == 12 and {f.name for f in plan.adapter.fused} >= {"img_attn_qkv", "linear1"}
    comps, count = _loaded(plan)
    assert count == len({k.split(".")[0] for k in saved if k.startswith("lora_unet_")}) + sum(
        1 for k in saved if k.startswith("lora_te") and k.endswith(".lora_down.weight")
    )
    block = comps.unet.transformer_blocks[0]
    down = block.attn.to_q.lora_A["default"].weight
    assert down is block.attn.to_k.lora_A["default"].weight  # one shared down, as kohya's unsplit module
    torch.testing.assert_close(down.detach(), saved[key].float(), rtol=0, atol=0)
    up = torch.cat([block.attn.get_submodule(p).lora_B["default"].weight for p in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(
        up.detach(), saved[key.replace("lora_down", "lora_up")].float(), rtol=0, atol=0
    )


def test_a_run_from_a_split_file_trains_and_resumes_bit_exact(tmp_path):
    export, _ = _export(tmp_path, "flux", False)
    spec = _from_weights_spec(tmp_path, export, 4)
    assert_lora_resumes_bit_exact(spec)
