"""LoRA rank and module dropout (kohya networks.lora LoRAModule.forward) on peft LoRA layers: equal to kohya's
formula on fixed tensors with the same seed, off outside training, and a tiny run resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime.runspec import compile_spec, write_spec


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)


def _adapted(rank_dropout: float, module_dropout: float) -> Net:
    torch.manual_seed(0)
    net = Net()
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=2.0, target_modules=["proj", "conv"], init_lora_weights="gaussian"), net
    )
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a non-zero update, so the mask shows
    add_lora_dropout(net, rank_dropout, module_dropout)
    return net.train()


def kohya_forward(org, down, up, x, alpha, rank, rank_dropout, module_dropout):
    """networks/lora.py LoRAModule.forward while training (multiplier 1, no neuron dropout), restated."""
    org_forwarded = org(x)
    if module_dropout and torch.rand(1) < module_dropout:
        return org_forwarded
    lx = down(x)
    scale = alpha / rank
    if rank_dropout:
        mask = torch.rand((lx.size(0), rank), device=lx.device) > rank_dropout
        if len(lx.size()) == 3:
            mask = mask.unsqueeze(1)
        elif len(lx.size()) == 4:
            mask = mask.unsqueeze(-1).unsqueeze(-1)
        lx = lx * mask
        scale = scale * (1.0 / (1.0 - rank_dropout))
    lx = up(lx)
    return org_forwarded + lx * scale


@pytest.mark.parametrize(("rank_dropout", "module_dropout"), [(0.5, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_rank_and_module_dropout_equal_kohyas_formula(rank_dropout, module_dropout):
    net = _adapted(rank_dropout, module_dropout)
    inputs = {"proj": torch.randn(3, 7, 6), "conv": torch.randn(2, 3, 5, 5)}
    for name, x in inputs.items():
        layer = getattr(net, name)
        for seed in range(6):  # several draws: some skip the module, some keep it
            torch.manual_seed(seed)
            ours = layer(x)
            torch.manual_seed(seed)
            theirs = kohya_forward(
                layer.base_layer,
                layer.lora_A["default"],
                layer.lora_B["default"],
                x,
                2.0,
                4,
                rank_dropout,
                module_dropout,
            )
            assert torch.allclose(ours, theirs, atol=1e-6), (name, seed)
    # evaluation: peft's own forward, no draws
    net.eval()
    state = torch.get_rng_state()
    plain = net.proj.base_layer(inputs["proj"]) + net.proj.lora_B["default"](
        net.proj.lora_A["default"](inputs["proj"])
    ) * (2.0 / 4)
    assert torch.allclose(net.proj(inputs["proj"]), plain, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_run_with_lora_dropouts_resumes_bit_exact(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\nrank_dropout = 0.25\nmodule_dropout = 0.2\n'
        "[train]\ntext_encoder = true\n"
    )
    spec = write_spec(tmp_path, steps=4, extra=extra)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert (plan.adapter.rank_dropout, plan.adapter.module_dropout) == (0.25, 0.2)
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # and the dropouts change training: the same run without them ends elsewhere
    plain = execute(
        compile_spec(
            spec,
            [
                "optimizer.lr=1e-2",
                "output.dir=plain",
                "adapter.rank_dropout=0.0",
                "adapter.module_dropout=0.0",
            ],
        )
    )
    other = load_file(str(Path(plain.final) / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(ours[k], other[k]) for k in ours)


def test_multiplier_scales_the_update_in_training_and_evaluation():
    """kohya LoRAModule: org_forwarded + lora_up(lora_down(x)) * multiplier * alpha / dim."""
    torch.manual_seed(0)
    net = Net()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2.0, target_modules=["proj", "conv"]), net)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    add_lora_dropout(net, 0.0, 0.0, multiplier=0.25)
    x = torch.randn(3, 6)
    a, b, w, bias = (
        net.proj.lora_A["default"].weight,
        net.proj.lora_B["default"].weight,
        net.proj.base_layer.weight,
        net.proj.base_layer.bias,
    )
    by_hand = x @ w.T + bias + (x @ a.T @ b.T) * 0.25 * (2.0 / 4)
    for mode in (net.train, net.eval):
        mode()
        assert torch.allclose(net.proj(x), by_hand, atol=1e-6)
    assert net.proj.scaling["default"] == 2.0 / 4  # alpha / rank untouched: exports keep alpha


def test_a_run_with_a_multiplier_exports_the_unchanged_alpha(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2.0\nmultiplier = 0.5\n'
        '[checkpoints]\nexports = ["kohya_lora"]\n'
    )
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=extra), ["optimizer.lr=1e-2"])
    assert plan.adapter.multiplier == 0.5
    result = execute(plan)
    (export,) = Path(result.final).glob("*.kohya.safetensors")
    alphas = {k: v for k, v in load_file(str(export)).items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 2.0 for v in alphas.values())
