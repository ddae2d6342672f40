"""[[adapter.blocks]] (kohya block_dims / block_alphas / conv_block_dims / block lr weights): a tiny SD1 LoRA
whose blocks have their own ranks, alphas and learning-rate scales trains, resumes bit-exact, and each module
carries its block's rank and scale (rank 0: no adapter, as kohya skips the module)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.setup import setup
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

BLOCKS = """
[adapter]
kind = "lora"
rank = 4
alpha = 4.0
conv_rank = 2
conv_alpha = 1.0

[[adapter.blocks]]
pattern = '^down_blocks\\.0\\.'
rank = 2
alpha = 1.0
conv_rank = 1
conv_alpha = 0.5
lr_scale = 0.5

[[adapter.blocks]]
pattern = '^up_blocks\\.1\\.attentions\\.1\\.'
rank = 0
alpha = 1.0

[[adapter.blocks]]
pattern = '^mid_block\\.'
rank = 8
alpha = 2.0
conv_rank = 0
"""


def _expected(path: str, conv: bool) -> tuple[int, float] | None:
    """The rank and alpha the blocks above give `path`, worked out by hand (first matching block wins)."""
    if path.startswith("down_blocks.0."):
        return (1, 0.5) if conv else (2, 1.0)
    if path.startswith("up_blocks.1.attentions.1."):
        return None  # rank 0 (and conv_rank 0, its default)
    if path.startswith("mid_block."):
        return None if conv else (8, 2.0)
    return (2, 1.0) if conv else (4, 4.0)


def test_blocks_set_ranks_alphas_and_lr_groups_and_the_run_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=BLOCKS)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert [b.pattern for b in plan.adapter.blocks] == [
        r"^down_blocks\.0\.",
        r"^up_blocks\.1\.attentions\.1\.",
        r"^mid_block\.",
    ]
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    unet = run.comps.unet
    adapted = {name: layer for name, layer in unet.named_modules() if isinstance(layer, LoraLayer)}
    for name, layer in adapted.items():
        base = layer.get_base_layer()
        conv = isinstance(base, torch.nn.Conv2d) and tuple(base.kernel_size) != (1, 1)
        expected = _expected(name, conv)
        assert expected is not None, f"{name} should carry no adapter"
        rank, alpha = expected
        assert layer.r["default"] == rank, name
        assert layer.scaling["default"] == alpha / rank, name
    # rank 0 blocks: no adapter at all there
    assert not any(re.match(r"up_blocks\.1\.attentions\.1\..*to_q$", n) for n in adapted)
    assert any(n.startswith("up_blocks.1.attentions.0.") for n in adapted)
    # lr groups: the down_blocks.0 adapters at lr x 0.5, the rest at lr
    lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    assert lrs == {"denoiser": 1e-2, "denoiser_x0.5": 5e-3}
    in_half = {id(p) for g in run.optimizer.param_groups if g["name"] == "denoiser_x0.5" for p in g["params"]}
    for name, p in unet.named_parameters():
        if p.requires_grad:
            assert (id(p) in in_half) == name.startswith("down_blocks.0."), name
    del run

    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # diffusers reloads the saved config (JSON) and gets every module's rank back
    pipe = build_pipeline(plan.model.base)
    pipe.load_lora_weights(whole.final)
    reloaded = {n: layer for n, layer in pipe.unet.named_modules() if isinstance(layer, LoraLayer)}
    assert {n: next(iter(layer.r.values())) for n, layer in reloaded.items()} == {
        n: layer.r["default"] for n, layer in adapted.items()
    }


def test_blocks_leaving_a_trained_text_encoder_nothing_stop_with_the_table_named(tmp_path):
    """Every text-encoder layer at rank 0 while the text encoder trains: a RunError naming the spec line of
    adapter.text_encoder_blocks, not peft's NoMatchingPeftModuleError."""
    import pytest

    from dbspec.runtime.execute import RunError

    extra = (
        '[adapter]\nkind = "lora"\nrank = 2\n[[adapter.text_encoder_blocks]]\npattern = "^"\nrank = 0\n'
        "alpha = 1.0\n[train]\ntext_encoder = true\n"
    )
    plan = compile_spec(write_spec(tmp_path, steps=1, extra=extra))
    with pytest.raises(RunError) as caught:
        execute(plan)
    assert (
        "adapter.text_encoder_blocks puts every adapted layer of text_encoder at rank 0"
        in caught.value.message
    )
    assert caught.value.where == plan.origins["adapter.text_encoder_blocks[0].pattern"].where != ""


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_kinds_take_block_ranks_and_lr_scales(tmp_path, kind):
    """LoHa and LoKr (LyCORIS preset files' per-layer dims): each module at its block's rank and alpha, a
    rank-0 block without an adapter, an lr_scale block's factors in their own optimizer group."""
    from peft.tuners.lycoris_utils import LycorisLayer

    spec = write_spec(tmp_path, steps=2, extra=BLOCKS.replace('kind = "lora"', f'kind = "{kind}"'))
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert plan.adapter.kind == kind and len(plan.adapter.blocks) == 3
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    unet = run.comps.unet
    adapted = {name: layer for name, layer in unet.named_modules() if isinstance(layer, LycorisLayer)}
    assert adapted
    for name, layer in adapted.items():
        base = layer.get_base_layer()
        conv = isinstance(base, torch.nn.Conv2d) and tuple(base.kernel_size) != (1, 1)
        expected = _expected(name, conv)
        assert expected is not None, f"{name} should carry no adapter"
        assert (layer.r["default"], layer.alpha["default"]) == expected, name
    lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    assert lrs == {"denoiser": 1e-2, "denoiser_x0.5": 5e-3}
    in_half = {id(p) for g in run.optimizer.param_groups if g["name"] == "denoiser_x0.5" for p in g["params"]}
    for name, p in unet.named_parameters():
        if p.requires_grad:
            assert (id(p) in in_half) == name.startswith("down_blocks.0."), name
