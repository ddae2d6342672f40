"""kohya's dropouts on a fused Linear with split_qkv (networks.lora_flux / lora_sd3, LoRAModule with
split_dims): the separate parts' LoRAs draw together, once per fused layer (adapter.fused_dropout ->
plan.adapter.split_fused; runtime/fused_dropout.py's SplitDraw).

The differential test writes kohya's split forward out by hand (LoRAModule.forward in networks/lora_flux.py:
`torch.rand(1) < module_dropout` skips every part, torch's dropout on each part's down output in part order,
then one rank mask per part; each part with its own down and up) and checks the parts' outputs equal it
exactly from the same generator state, also when the parts run in another order (diffusers' single block
calls proj_mlp before q, k, v). Per-part draws use the generator differently and fail it. A tiny Flux run
with split_qkv's module and network dropout trains with gradient checkpointing and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_tensors

from dbspec.plan.model import FusedPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.fused_dropout import add_split_dropout
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime.runspec import compile_spec, summary_text, write_spec
from tests.runtime.test_flux_fused import _TARGETS, _double_block_lora

PARTS = ("attn.to_q", "attn.to_k", "attn.to_v")


def _split_block(rank_dropout: float, module_dropout: float, down_dropout: float):
    block = _double_block_lora()
    wrapper = torch.nn.Module()
    wrapper.blocks = torch.nn.ModuleList([block])
    group = FusedPlan(name="img_attn_qkv", blocks="blocks", parts=PARTS)
    assert add_split_dropout(wrapper, (group,), rank_dropout, module_dropout, 1.0, down_dropout) == 1
    assert add_lora_dropout(wrapper, rank_dropout, module_dropout, 1.0, down_dropout) == 0  # left alone
    wrapper.train()
    return block


def _kohya_split(x, weight, bias, downs, ups, scale, rank_dropout, module_dropout, down_dropout):
    """kohya's LoRAModule.forward on a fused Linear with split_dims (training), written out (its rank-dropout
    branch as meant: one mask per part; kohya's own code fails there)."""
    out = x @ weight.T + bias
    if module_dropout and torch.rand(1) < module_dropout:
        return out
    lxs = [x @ d.T for d in downs]
    if down_dropout:
        lxs = [torch.nn.functional.dropout(lx, p=down_dropout) for lx in lxs]
    if rank_dropout:
        masks = [
            torch.rand((lx.size(0), d.shape[0]), device=lx.device) > rank_dropout for lx, d in zip(lxs, downs)
        ]
        lxs = [lx * m.unsqueeze(1) for lx, m in zip(lxs, masks)]
        scale = scale * (1.0 / (1.0 - rank_dropout))
    return out + torch.cat([lx @ u.T for lx, u in zip(lxs, ups)], dim=-1) * scale


@pytest.mark.parametrize(
    ("rank_dropout", "module_dropout", "down_dropout", "order"),
    [(0.0, 0.5, 0.0, (0, 1, 2)), (0.0, 0.4, 0.3, (2, 0, 1)), (0.3, 0.4, 0.2, (1, 2, 0))],
)
def test_the_split_parts_share_kohyas_draws(rank_dropout, module_dropout, down_dropout, order):
    block = _split_block(rank_dropout, module_dropout, down_dropout)
    parts = [block.get_submodule(p) for p in PARTS]
    assert parts[0].lora_A["default"].weight is not parts[1].lora_A["default"].weight  # separate LoRAs
    weight = torch.cat([p.base_layer.weight for p in parts]).detach()
    bias = torch.cat([p.base_layer.bias for p in parts]).detach()
    downs = [p.lora_A["default"].weight.detach() for p in parts]
    ups = [p.lora_B["default"].weight.detach() for p in parts]
    x = torch.randn(3, 5, weight.shape[1], generator=torch.Generator().manual_seed(7))
    skipped = 0
    for seed in range(10):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs = {i: parts[i](x) for i in order}
        ours = torch.cat([outs[i] for i in range(3)], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        theirs = _kohya_split(
            x, weight, bias, downs, ups, 2.0 / 4, rank_dropout, module_dropout, down_dropout
        )
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert torch.equal(
            after, torch.get_rng_state()
        )  # the generator used exactly as kohya's module uses it
        skipped += bool(torch.equal(ours, x @ weight.T + bias))
    assert 0 < skipped < 10  # the seeds include a skipped and an applied layer: the parts skip together


def test_checkpoint_recomputation_draws_the_same_masks():
    block = _split_block(0.3, 0.2, 0.3)
    parts = [block.get_submodule(p) for p in PARTS]
    x = torch.randn(2, 5, parts[0].in_features, generator=torch.Generator().manual_seed(3))

    def fused(inp):
        return torch.cat([p(inp) for p in parts], dim=-1)

    grads = []
    for checkpointed in (False, True):
        inp = x.clone().requires_grad_(True)
        torch.manual_seed(11)
        out = (
            torch.utils.checkpoint.checkpoint(fused, inp, use_reentrant=False) if checkpointed else fused(inp)
        )
        out.square().sum().backward()
        grads.append(inp.grad)
    assert torch.equal(grads[0], grads[1])


SPLIT = (
    '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nmodule_dropout = 0.3\ndown_dropout = 0.2\n'
    f"fused_dropout = true\ndenoiser_targets = [{_TARGETS}]\n\n"
    '[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\nalpha = 1\n'
    "\n[precision]\ngradient_checkpointing = true\n\n[checkpoints]\nevery = 2\n"
)


def test_a_flux_run_with_split_draws_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=4, extra=SPLIT)
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert [f.name for f in parts.adapter.split_fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert parts.adapter.fused == ()
    assert "down, module dropout drawn once per layer, in this part order" in summary_text(parts)
    first = execute(parts, stop_after=2)
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_tensors(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_tensors(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the shared draw changes what trains: per-part draws (fused_dropout off) end elsewhere
    other = execute(
        compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=own", "adapter.fused_dropout=false"])
    )
    assert other.losses != whole.losses
