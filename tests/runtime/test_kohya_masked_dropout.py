"""kohya's masked-loss averaging (`loss.mask_mean = "image"`) and networks.lora's `network_dropout`
(`adapter.down_dropout`): equal to kohya's own functions on fixed tensors (tests/runtime/kohya_reference,
made by running kohya's code), to the formulas restated here, and tiny runs resume bit-exact."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image
from rich.console import Console
from safetensors.torch import load_file

from dbspec.plan.summary import render_summary
from dbspec.runtime import losses
from dbspec.runtime.execute import execute
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime.runspec import compile_spec, write_spec

REFERENCE = load_file(str(Path(__file__).parent / "kohya_reference" / "kohya_masked_dropout.safetensors"))


# --- masked loss --------------------------------------------------------------------------------------------
def _image_mean_by_hand(loss: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    """kohya's formula restated in numpy: the pixel mask averaged over each latent cell (the sizes divide),
    the loss times it, the mean over C, H, W."""
    b, _, h, w = loss.shape
    fh, fw = pixel_mask.shape[-2] // h, pixel_mask.shape[-1] // w
    cells = pixel_mask.reshape(b, h, fh, w, fw).astype(np.float64).mean(axis=(2, 4))
    return (loss.astype(np.float64) * cells[:, None]).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("source", ["alpha", "cond"])
def test_image_mean_equals_kohyas_apply_masked_loss(source):
    loss = REFERENCE["mask.loss"]
    # the pixel mask in [0, 1]: the alpha channel, or a conditioning image's R channel mapped from [-1, 1]
    pixels = REFERENCE["mask.alpha"] if source == "alpha" else REFERENCE["mask.cond"][:, 0] / 2 + 0.5
    mask = losses.resize_mask(pixels[:, None], tuple(loss.shape[-2:]))
    ours = losses.per_sample_loss(loss, mask, "image")
    torch.testing.assert_close(ours, REFERENCE[f"mask.{source}_per_sample"], atol=1e-6, rtol=1e-6)
    by_hand = _image_mean_by_hand(loss.numpy(), pixels.numpy())
    np.testing.assert_allclose(ours.numpy(), by_hand, rtol=1e-5, atol=1e-6)
    if source == "cond":
        return
    # dbspec's default divides by the mask's area instead: a small mask (sample 1) no longer shrinks the loss
    area = losses.per_sample_loss(loss, mask, "mask")
    assert area[1] > ours[1] * 2
    torch.testing.assert_close(area[2], ours[2])  # an all-ones mask: both are the plain mean


def test_image_mean_gradient_is_the_mask_over_the_element_count():
    pred = torch.zeros(2, 4, 6, 6, requires_grad=True)
    mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    losses.per_sample_loss(
        losses.elementwise_loss(pred, torch.ones(2, 4, 6, 6), "l1", 1.0), mask, "image"
    ).sum().backward()
    torch.testing.assert_close(pred.grad, -mask.expand(2, 4, 6, 6) / (4 * 6 * 6))


def _masked_spec(tmp_path: Path) -> Path:
    extra = '[adapter]\nkind = "lora"\nrank = 4\n[loss]\nmask_mean = "image"\n'
    spec = write_spec(tmp_path, steps=4, dataset_extra='masks = "masks"', extra=extra)
    masks = tmp_path / "masks"
    masks.mkdir()
    for img in sorted((tmp_path / "data" / "toy").iterdir()):
        size = Image.open(img).size
        mask = Image.new("L", size, 0)
        mask.paste(255, (0, 0, size[0] // 3, size[1]))
        mask.save(masks / img.name)
    return spec


def test_a_masked_run_with_the_image_mean_resumes_bit_exact(tmp_path):
    spec = _masked_spec(tmp_path)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert plan.loss.masked and plan.loss.mask_mean == "image"
    assert "·mask (image mean)" in plan.loss.formula and "mask/area" not in plan.loss.formula
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the area mean trains the same samples on a loss about three times as large (a third of each image)
    area = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=area", 'loss.mask_mean="mask"']))
    assert all(a > w for a, w in zip(area.losses[:1], whole.losses[:1], strict=True))


def test_without_masks_the_option_settles_to_the_default(tmp_path):
    spec = write_spec(tmp_path, steps=2, extra='[loss]\nmask_mean = "image"\n')
    plan = compile_spec(spec)
    assert not plan.loss.masked and plan.loss.mask_mean == "mask" and "mask" not in plan.loss.formula


# --- network_dropout ----------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)


def _from_reference(case: int) -> tuple[torch.nn.Module, torch.Tensor, tuple[float, float, float]]:
    """peft's LoRA layer holding the weights of kohya's LoRAModule in reference case `case`, wrapped."""
    p = f"lora.{case}"
    x = REFERENCE[f"{p}.x"]
    name = "conv" if x.dim() == 4 else "proj"
    net = Net()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2.0, target_modules=[name]), net)
    layer = getattr(net, name)
    with torch.no_grad():
        layer.base_layer.weight.copy_(REFERENCE[f"{p}.org.weight"])
        layer.base_layer.bias.copy_(REFERENCE[f"{p}.org.bias"])
        layer.lora_A["default"].weight.copy_(REFERENCE[f"{p}.down"])
        layer.lora_B["default"].weight.copy_(REFERENCE[f"{p}.up"])
    down, rank, module = (float(v) for v in REFERENCE[f"{p}.options"])
    assert add_lora_dropout(net, rank, module, 1.0, down) == 1
    return layer.train(), x, (down, rank, module)


def kohya_forward(org, down, up, x, scale, dropout, rank_dropout, module_dropout):
    """networks/lora.py LoRAModule.forward while training (multiplier 1), restated."""
    base = org(x)
    if module_dropout and torch.rand(1) < module_dropout:
        return base
    lx = down(x)
    if dropout:
        lx = torch.nn.functional.dropout(lx, p=dropout)
    if rank_dropout:
        keep = torch.rand((lx.size(0), 4), device=lx.device) > rank_dropout  # rank 4
        keep = keep.unsqueeze(1) if lx.dim() == 3 else keep[..., None, None] if lx.dim() == 4 else keep
        lx = lx * keep
        scale = scale / (1.0 - rank_dropout)
    return base + up(lx) * scale


@pytest.mark.parametrize("case", range(4))
def test_down_dropout_equals_kohyas_lora_module(case):
    layer, x, (down, rank, module) = _from_reference(case)
    for seed in range(6):
        torch.manual_seed(seed)
        ours = layer(x)
        torch.testing.assert_close(ours, REFERENCE[f"lora.{case}.out.{seed}"], atol=1e-6, rtol=1e-6)
        torch.manual_seed(seed)
        restated = kohya_forward(
            layer.base_layer, layer.lora_A["default"], layer.lora_B["default"], x, 0.5, down, rank, module
        )
        torch.testing.assert_close(ours, restated, atol=1e-6, rtol=1e-6)
    # the dropout acts: some seeds' outputs differ from the undropped update
    layer.eval()
    state = torch.get_rng_state()
    plain = layer(x)
    assert torch.equal(torch.get_rng_state(), state)  # outside training: peft's forward, no draws
    assert any(not torch.allclose(REFERENCE[f"lora.{case}.out.{s}"], plain) for s in range(6))


def test_checkpoint_recomputation_draws_the_same_dropout():
    layer, x, _ = _from_reference(2)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    layer(x).square().sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False).square().sum().backward()
    assert torch.equal(x.grad, plain)


def test_a_run_with_down_dropout_resumes_bit_exact(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\ndown_dropout = 0.3\nrank_dropout = 0.2\n'
        "[train]\ntext_encoder = true\n[precision]\ngradient_checkpointing = true\n"
    )
    spec = write_spec(tmp_path, steps=4, extra=extra)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert (plan.adapter.down_dropout, plan.adapter.dropout) == (0.3, 0.0)
    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    assert "0.3 on the down projection's output (while training)" in console.file.getvalue()
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    plain = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=plain", "adapter.down_dropout=0.0"]))
    other = load_file(str(Path(plain.final) / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(ours[k], other[k]) for k in ours)  # the dropout changes training
