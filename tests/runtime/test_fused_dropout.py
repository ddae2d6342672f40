"""kohya's dropouts on a fused Linear drawn once for all its parts (adapter.fused_projections with
down_dropout / rank_dropout / module_dropout; runtime/fused_dropout.py).

The differential test builds kohya's LoRAModule forward on the fused q/k/v Linear by hand
(LoRAModule.forward in networks/lora_flux.py: `torch.rand(1) < module_dropout` skips the update, torch's
dropout on the down output, the mask `torch.rand((batch, rank)) > rank_dropout`, the scale over
1 - rank_dropout) from the same generator state and checks the tied parts' outputs equal it exactly: one draw
per fused layer (per-part draws give each part its own masks and use up the generator differently, and fail
it). A tiny Flux run with the dropouts trains with gradient checkpointing and resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.plan.model import FusedPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.fused import tie_fused_projections
from dbspec.runtime.fused_dropout import add_fused_dropout
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime.runspec import compile_spec, summary_text, write_spec
from tests.runtime.test_flux_fused import KOHYA, _double_block_lora

PARTS = ("attn.to_q", "attn.to_k", "attn.to_v")


def _tied_block(rank_dropout: float, module_dropout: float, down_dropout: float):
    block = _double_block_lora()
    wrapper = torch.nn.Module()
    wrapper.blocks = torch.nn.ModuleList([block])
    group = FusedPlan(name="img_attn_qkv", blocks="blocks", parts=PARTS)
    tie_fused_projections(wrapper, (group,))
    assert add_fused_dropout(wrapper, (group,), rank_dropout, module_dropout, 1.0, down_dropout) == 1
    assert add_lora_dropout(wrapper, rank_dropout, module_dropout, 1.0, down_dropout) == 0  # left alone
    wrapper.train()
    return block


def _kohya_fused(x, weight, bias, down, up, scale, rank_dropout, module_dropout, down_dropout):
    """kohya's LoRAModule.forward on the fused Linear (training), written out."""
    out = x @ weight.T + bias
    if module_dropout and torch.rand(1) < module_dropout:
        return out
    lx = x @ down.T
    if down_dropout:
        lx = torch.nn.functional.dropout(lx, p=down_dropout)
    if rank_dropout:
        mask = torch.rand((lx.size(0), down.shape[0]), device=lx.device) > rank_dropout
        lx = lx * mask.unsqueeze(1)
        scale = scale * (1.0 / (1.0 - rank_dropout))
    return out + (lx @ up.T) * scale


@pytest.mark.parametrize(
    ("rank_dropout", "module_dropout", "down_dropout"), [(0.5, 0.0, 0.0), (0.0, 0.0, 0.4), (0.3, 0.4, 0.2)]
)
def test_the_parts_share_kohyas_one_draw_per_fused_layer(rank_dropout, module_dropout, down_dropout):
    block = _tied_block(rank_dropout, module_dropout, down_dropout)
    parts = [block.get_submodule(p) for p in PARTS]
    weight = torch.cat([p.base_layer.weight for p in parts]).detach()
    bias = torch.cat([p.base_layer.bias for p in parts]).detach()
    down = parts[0].lora_A["default"].weight.detach()
    up = torch.cat([p.lora_B["default"].weight for p in parts]).detach()
    x = torch.randn(3, 5, weight.shape[1], generator=torch.Generator().manual_seed(7))
    skipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        theirs = _kohya_fused(x, weight, bias, down, up, 2.0 / 4, rank_dropout, module_dropout, down_dropout)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert torch.equal(
            after, torch.get_rng_state()
        )  # the generator used exactly as kohya's module uses it
        skipped += bool(torch.equal(ours, x @ weight.T + bias))
    assert (skipped > 0) == bool(module_dropout)  # the seeds include a skipped and an applied layer
    assert skipped < 8


def test_outside_training_no_draw():
    block = _tied_block(0.5, 0.5, 0.5)
    block.eval()
    x = torch.randn(2, 3, block.attn.to_q.in_features)
    state = torch.get_rng_state()
    block.attn.to_q(x)
    assert torch.equal(state, torch.get_rng_state())


def test_checkpoint_recomputation_draws_the_same_masks():
    block = _tied_block(0.3, 0.2, 0.3)
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


def test_a_flux_run_with_fused_dropouts_resumes_bit_exact(tmp_path):
    extra = (
        KOHYA.replace(
            "fused_projections = true",
            "fused_projections = true\nrank_dropout = 0.3\nmodule_dropout = 0.2\ndown_dropout = 0.2",
        )  # fmt: skip
        + "\n[precision]\ngradient_checkpointing = true\n\n[checkpoints]\nevery = 2\n"
    )
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=4, extra=extra)
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert (parts.adapter.rank_dropout, parts.adapter.module_dropout, parts.adapter.down_dropout) == (
        0.3,
        0.2,
        0.2,
    )
    assert "down, rank, module dropout drawn once per layer" in summary_text(parts)
    first = execute(parts, stop_after=2)
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    ("rank_dropout", "module_dropout", "form", "output"),
    [
        (0.5, 0.0, "lycoris", 0.0),
        (0.3, 0.4, "lycoris", 0.0),
        (0.5, 0.0, "lycoris_bypass", 0.0),
        (0.3, 0.4, "lycoris_bypass", 0.25),
        (0.0, 0.0, "lycoris_bypass", 0.5),
    ],
)
def test_lycoris_form_is_loconmodules_row_mask_over_the_fused_layer(
    rank_dropout, module_dropout, form, output
):
    """rank_dropout_form "lycoris" with fused_projections (lycoris.kohya LoCon on kohya's Flux): the tied
    parts equal lycoris-lora 4.1.3's LoConModule on the fused Linear in training mode, from the same
    generator state (one torch.rand(1) for the module dropout, one torch.rand(rows) over the fused rows);
    "lycoris_bypass" its bypass_mode forward (one torch.rand(rank) over the shared down's output), with
    output_dropout its `dropout`: torch's dropout over the whole fused update, each part its rows."""
    from lycoris.modules.locon import LoConModule

    block = _double_block_lora()
    wrapper = torch.nn.Module()
    wrapper.blocks = torch.nn.ModuleList([block])
    group = FusedPlan(name="img_attn_qkv", blocks="blocks", parts=PARTS)
    tie_fused_projections(wrapper, (group,))
    assert add_fused_dropout(wrapper, (group,), rank_dropout, module_dropout, 1.0, 0.0, form, output) == 1
    wrapper.train()
    parts = [block.get_submodule(p) for p in PARTS]
    fused = torch.nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.base_layer.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.base_layer.bias for p in parts]))
    theirs = LoConModule(
        "x",
        fused,
        1.0,
        4,
        2.0,
        dropout=output,
        rank_dropout=rank_dropout,
        module_dropout=module_dropout,
        bypass_mode=form == "lycoris_bypass",
    )
    theirs.load_state_dict(
        {
            "lora_down.weight": parts[0].lora_A["default"].weight.detach(),
            "lora_up.weight": torch.cat([p.lora_B["default"].weight for p in parts]).detach(),
            "alpha": torch.tensor(2.0),
        }
    )
    theirs.apply_to()
    theirs.train()
    x = torch.randn(3, 5, fused.in_features, generator=torch.Generator().manual_seed(7))
    kinds = set()
    for seed in range(8):
        torch.manual_seed(seed)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = fused(x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        assert torch.equal(after, torch.get_rng_state())  # the generator used as LyCORIS's module uses it
        kinds.add(bool(torch.equal(ours, x @ fused.weight.T + fused.bias)))
    assert False in kinds and (True in kinds or not module_dropout)  # all 4 ranks dropped: the base too
