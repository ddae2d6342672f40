"""kohya's max-norm regularisation (`adapter.max_norm`, kohya `--scale_weight_norms`; runtime/max_norm.py):
equal to kohya's own `apply_max_norm_regularization` on fixed tensors (tests/runtime/kohya_reference, made by
running kohya's code), to the formula restated here in float64, found on real peft layers (a fused layer's
tied parts as one module), and a tiny run that logs it, keeps every update's norm at the limit and resumes
bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file

from dbspec.plan.model import FusedPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.fused import tie_fused_projections
from dbspec.runtime.max_norm import NormModule, apply_max_norm, norm_modules
from tests.runtime.runspec import compile_spec, summary_text, write_spec

FILE = Path(__file__).parent / "kohya_reference" / "kohya_max_norm.safetensors"
REFERENCE = load_file(str(FILE))
LIMIT = 1.0  # the reference's limit (its metadata says so)
CASES = {"linear": 3, "conv": 3, "fused": 1, "bf16": 2}


def _modules(case: str) -> list[NormModule]:
    """The reference's kohya modules as dbspec's; the fused one's up split into three parts (q, k, v)."""
    modules = []
    for i in range(CASES[case]):
        p = f"{case}.{i}"
        down = torch.nn.Parameter(REFERENCE[f"{p}.down"].clone())
        up = REFERENCE[f"{p}.up"].clone()
        ups = up.chunk(3) if case == "fused" else (up,)
        modules.append(
            NormModule(
                name=p,
                ups=tuple(torch.nn.Parameter(u.clone()) for u in ups),
                down=down,
                alpha=float(REFERENCE[f"{p}.alpha"]),
                rank=down.shape[0],
            )
        )
    return modules


def _assert_weights(modules: list[NormModule], case: str, suffix: str) -> None:
    for i, module in enumerate(modules):
        up = torch.cat([u.detach() for u in module.ups])
        # float32 to the last bits: the reference was made on another CPU, whose BLAS rounds up @ down
        # differently in the last place (kohya's own function does too across machines)
        for got, key in ((module.down.detach(), "down"), (up, "up")):
            torch.testing.assert_close(got, REFERENCE[f"{case}.{i}.{key}_{suffix}"], rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_kohyas_apply_max_norm_regularization(case):
    modules = _modules(case)
    _assert_result(apply_max_norm(modules, LIMIT), REFERENCE[f"{case}.result"])
    _assert_weights(modules, case, "after")
    # kohya calls it again after every micro-batch: on the scaled weights (bf16 rounding scales one again)
    _assert_result(apply_max_norm(modules, LIMIT), REFERENCE[f"{case}.result_again"])
    _assert_weights(modules, case, "again")


def _assert_result(got: tuple[int, float, float], row: torch.Tensor) -> None:
    """The count exactly; the mean and largest norm to float32's last bits (see _assert_weights)."""
    scaled, mean, largest = row.tolist()
    assert got[0] == int(scaled)
    assert got[1:] == pytest.approx((mean, largest), rel=2e-7, abs=0)


def _update(up: np.ndarray, down: np.ndarray, alpha: float) -> np.ndarray:
    """alpha / rank x up @ down in float64: a k x k convolution's down kernel mapped through the 1x1 up."""
    rank = down.shape[0]
    if down.ndim == 4:
        return alpha / rank * np.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    return alpha / rank * up @ down


@pytest.mark.parametrize("case", ["linear", "conv", "fused"])
def test_equals_the_formula_in_float64(case):
    """kohya's rule restated: an update whose norm n exceeds the limit has up and down each multiplied by
    sqrt(limit / n); others are left alone; the mean and largest norm are those after scaling."""
    modules = _modules(case)
    expected, norms = [], []
    for module in modules:
        up = torch.cat([u.detach() for u in module.ups]).double().numpy()
        down = module.down.detach().double().numpy()
        norm = np.linalg.norm(_update(up, down, module.alpha))
        root = np.sqrt(LIMIT / norm) if norm > LIMIT else 1.0
        expected.append((up * root, down * root, norm > LIMIT))
        norms.append(min(norm, LIMIT))
    scaled, mean, largest = apply_max_norm(modules, LIMIT)
    assert scaled == sum(e[2] for e in expected) and scaled >= 1
    np.testing.assert_allclose([mean, largest], [np.mean(norms), np.max(norms)], rtol=1e-6)
    for module, (up, down, _) in zip(modules, expected):
        np.testing.assert_allclose(torch.cat([u.detach() for u in module.ups]).numpy(), up, rtol=2e-6)
        np.testing.assert_allclose(module.down.detach().numpy(), down, rtol=2e-6)
        after = np.linalg.norm(_update(up, down, module.alpha))
        assert after <= LIMIT * (1 + 1e-6)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(6, 6) for _ in range(3))
        self.proj = torch.nn.Linear(6, 4)
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([_Block(), _Block()])


def test_norm_modules_on_peft_layers_join_a_fused_layers_parts():
    torch.manual_seed(0)
    model = _Model()
    config = LoraConfig(
        r=2,
        lora_alpha=1.0,
        target_modules=["to_q", "to_k", "to_v", "proj", "conv"],
        rank_pattern={"conv": 3},
        alpha_pattern={"conv": 3.0},
        init_lora_weights="gaussian",
    )
    inject_adapter_in_model(config, model)
    fused = (FusedPlan(name="qkv", blocks="transformer_blocks", parts=("to_q", "to_k", "to_v")),)
    plain = norm_modules([model])
    assert len(plain) == 2 * 5  # before tying: one module per layer
    tie_fused_projections(model, fused)
    modules = norm_modules([model], fused)
    assert [m.name for m in modules] == [
        "transformer_blocks.0.to_q",
        "transformer_blocks.0.proj",
        "transformer_blocks.0.conv",
        "transformer_blocks.1.to_q",
        "transformer_blocks.1.proj",
        "transformer_blocks.1.conv",
    ]
    block = model.transformer_blocks[0]
    qkv = modules[0]
    assert [id(u) for u in qkv.ups] == [
        id(getattr(block, p).lora_B["default"].weight) for p in ("to_q", "to_k", "to_v")
    ]
    assert (qkv.rank, qkv.alpha, modules[2].rank, modules[2].alpha) == (2, 1.0, 3, 3.0)
    for module in modules:  # lora_B starts at zero: make every update large
        for up in module.ups:
            torch.nn.init.normal_(up, std=5.0)
    down = qkv.down.detach().clone()
    assert apply_max_norm(modules, 0.5)[0] == 6
    # the shared down was scaled once, not once per part
    ratio = (qkv.down.detach() / down).flatten()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and 0 < ratio[0] < 1


MAX_NORM = """
[adapter]
kind = "lora"
rank = 4
alpha = 4.0
max_norm = 0.02

[train]
text_encoder = true

[logging]
every = 1
"""


def _update_norms(weights: dict, scale: float) -> list[float]:
    """Every layer's scale x up @ down in dbspec's diffusers-format file (text encoder and UNet layers)."""
    norms = []
    for key, down in weights.items():
        if not key.endswith("down.weight"):
            continue
        up = weights[key.replace("down.weight", "up.weight")]
        if down.dim() == 4 and down.shape[2:] != (1, 1):
            update = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        else:
            update = up.flatten(1) @ down.flatten(1)
        norms.append(float((update * scale).norm()))
    return norms


def test_a_run_with_max_norm_logs_it_keeps_the_limit_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=MAX_NORM)
    spec.write_text(spec.read_text().replace("[schedule]\n", "[schedule]\naccumulation = 2\n"))
    plan = compile_spec(spec, ["optimizer.lr=5e-2"])
    assert plan.adapter.max_norm == 0.02 and plan.schedule.accumulation == 2
    assert "0.02: after each optimizer step (and micro-batch)" in summary_text(plan)
    whole = execute(compile_spec(spec, ["optimizer.lr=5e-2", "output.dir=whole"]))
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 4 and all("max_norm/keys_scaled" in r for r in rows)
    assert rows[-1]["max_norm/keys_scaled"] > 0
    assert rows[-1]["max_norm/max_key_norm"] <= 0.02 * (1 + 1e-5)
    final = Path(whole.final)
    ours = load_file(str(final / "pytorch_lora_weights.safetensors"))
    norms = _update_norms(ours, 4.0 / 4)
    assert len(norms) == 44 and max(norms) <= 0.02 * (1 + 1e-5)
    parts = compile_spec(spec, ["optimizer.lr=5e-2", "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    free = execute(compile_spec(spec, ["optimizer.lr=5e-2", "output.dir=free", "adapter.max_norm=0"]))
    other = load_file(str(Path(free.final) / "pytorch_lora_weights.safetensors"))
    assert max(_update_norms(other, 1.0)) > 0.02


def test_a_flux_run_scales_each_fused_layer_as_one_module(tmp_path):
    """builtin:tiny-flux with kohya's fused layers (lora_flux without split_qkv): each double block's q, k, v
    and each single block's q, k, v, mlp are one module (their rows in the original layer's order), and after
    training every module's update (the fused layers' stacked) is within the limit."""
    from tests.runtime.test_flux_fused import KOHYA

    spec = write_spec(
        tmp_path,
        base="builtin:tiny-flux",
        steps=2,
        extra=KOHYA.replace("fused_projections = true", "fused_projections = true\nmax_norm = 0.01"),
    )
    plan = compile_spec(spec, ["optimizer.lr=5e-2"])
    assert plan.adapter.max_norm == 0.01 and plan.adapter.fused
    result = execute(plan, keep_models=True)
    modules = norm_modules([result.components.unet], plan.adapter.fused)
    fused = {m.name: len(m.ups) for m in modules if len(m.ups) > 1}
    assert fused == {
        "transformer_blocks.0.attn.to_q": 3,
        "transformer_blocks.0.attn.add_q_proj": 3,
        "single_transformer_blocks.0.attn.to_q": 4,
    }, fused
    single = next(m for m in modules if m.name.startswith("single_transformer_blocks.0.") and len(m.ups) == 4)
    block = result.components.unet.single_transformer_blocks[0]
    order = [block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp]
    assert [id(u) for u in single.ups] == [id(layer.lora_B["default"].weight) for layer in order]
    from dbspec.runtime.max_norm import update_of

    assert max(float(update_of(m).norm()) for m in modules) <= 0.01 * (1 + 1e-5)
