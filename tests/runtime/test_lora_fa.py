"""LoRA-FA (`adapter.freeze_down`, kohya's networks.lora_fa; runtime/lora_fa.py): the downs drawn from
N(0, 2 / (in + rank)) and never stepped, the ups from zero; kohya's gradient handling (`frozen_down_grad =
"kohya"`: the downs' gradient computed, never cleared, counted in the clip norm) against the same loop written
here the way train_network.py runs it; tiny runs that keep the downs, train the ups and resume bit-exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.lora_fa import freeze_down
from tests.runtime.runspec import compile_spec, summary_text, write_spec


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Conv2d(64, 48, 3, padding=1))
    config = LoraConfig(r=4, lora_alpha=4.0, target_modules=["0", "1"], init_lora_weights="gaussian")
    inject_adapter_in_model(config, model)
    return model


@pytest.mark.parametrize("grads", [False, True])
def test_downs_are_drawn_as_kohyas_and_frozen(grads):
    model = _model()
    for layer in model:
        torch.nn.init.normal_(layer.lora_B["default"].weight)
    downs = freeze_down(model, seed=5, grads=grads)
    assert len(downs) == 2 and all(d.requires_grad == grads for d in downs)
    for layer, fan_in in zip(model, (300, 64)):  # kohya: in_features, or a convolution's in_channels
        down = layer.lora_A["default"].weight.detach()
        expected = math.sqrt(2.0 / (fan_in + 4))
        assert abs(float(down.std()) - expected) < 0.06 * expected
        assert abs(float(down.mean())) < 0.1 * expected
        assert (
            torch.count_nonzero(layer.lora_B["default"].weight) == 0
            and layer.lora_B["default"].weight.requires_grad
        )
    again = _model()
    freeze_down(again, seed=5, grads=grads)
    assert all(
        torch.equal(a.lora_A["default"].weight, b.lora_A["default"].weight) for a, b in zip(model, again)
    )


def _steps(grads_mode: str, clip: float, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A few AdamW steps of a LoRA-FA layer as train_network.py runs them: the optimizer holds the ups;
    kohya clips over every network parameter (get_trainable_params is parameters()) and zeroes the
    optimizer's only. Returns the up and down weights."""
    model = _model()[:1]
    downs = freeze_down(model, seed=1, grads=grads_mode == "kohya")
    layer = model[0]
    up = layer.lora_B["default"].weight
    optimizer = torch.optim.AdamW([up], lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(8, 300, generator=generator)
        (model(x) - x[:, :200]).square().mean().backward()
        if clip:
            params = [up, *(downs if grads_mode == "kohya" else [])]
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    return up.detach().clone(), layer.lora_A["default"].weight.detach().clone()


def test_kohyas_down_gradients_shrink_the_clipped_up_steps():
    start = _model()[:1]
    freeze_down(start, seed=1, grads=False)
    init_down = start[0].lora_A["default"].weight.detach()
    none_up, none_down = _steps("none", clip=0.01)
    kohya_up, kohya_down = _steps("kohya", clip=0.01)
    assert torch.equal(none_down, init_down) and torch.equal(kohya_down, init_down)  # never stepped
    assert not torch.equal(none_up, kohya_up)  # the downs' accumulated gradient counts in the clip norm
    # without clipping the downs' gradient changes nothing
    assert torch.equal(_steps("none", clip=0.0)[0], _steps("kohya", clip=0.0)[0])


def test_kohya_mode_steps_as_kohyas_lora_fa_network():
    """kohya's own lora_fa LoRAModule in train_network.py's order (tests/runtime/kohya_reference/
    kohya_lora_fa.safetensors): a peft LoRA layer with the same weights, its down frozen in kohya mode, the
    optimizer over the up only and dbspec's clip over the down and the up (in kohya's network order, as
    runtime/setup.py lists them) ends with kohya's weights and accumulated down gradient, to float32's last
    bits (1e-7)."""
    from dbspec.runtime.loop import clip_gradients

    ref = load_file(str(Path(__file__).parent / "kohya_reference" / "kohya_lora_fa.safetensors"))
    layer = torch.nn.Linear(12, 10)
    with torch.no_grad():
        layer.weight.copy_(ref["org.weight"])
        layer.bias.copy_(ref["org.bias"])
    model = torch.nn.Sequential(layer)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2.0, target_modules=["0"]), model)
    (down,) = freeze_down(model, seed=0, grads=True)
    up = model[0].lora_B["default"].weight
    with torch.no_grad():
        down.copy_(ref["down.init"])
    assert torch.equal(up.detach(), ref["up.init"])
    optimizer = torch.optim.AdamW([up], lr=1e-2)
    for step in range(5):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(ref[f"x.{step}"]), ref[f"target.{step}"]).backward()
        clip_gradients([down, up], "norm", 0.05)
        optimizer.step()
    # to float32's last bits: the reference was made on another CPU, whose BLAS rounds the matmuls
    # differently in the last place (kohya's own run does too across machines)
    for got, key in ((down.detach(), "down.final"), (up.detach(), "up.final"), (down.grad, "down.grad")):
        torch.testing.assert_close(got, ref[key], rtol=1e-6, atol=1e-7)


LORA_FA = """
[adapter]
kind = "lora"
rank = 4
freeze_down = true
frozen_down_grad = "{grads}"

[train]
text_encoder = true
"""


def _downs_ups(path: Path) -> tuple[dict, dict]:
    weights = load_file(str(path / "pytorch_lora_weights.safetensors"))
    return (
        {k: v for k, v in weights.items() if k.endswith("down.weight")},
        {k: v for k, v in weights.items() if k.endswith("up.weight")},
    )


def test_a_lora_fa_run_keeps_the_downs_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=LORA_FA.format(grads="kohya"))
    spec.write_text(spec.read_text().replace("[optimizer]\n", "[optimizer]\nmax_grad_norm = 0.01\n"))
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert (plan.adapter.freeze_down, plan.adapter.frozen_down_grad) == (True, "kohya")
    assert "down projections frozen at N(0, 2 / (in + rank))" in summary_text(plan)
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    one = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=one", "schedule.steps=1"]))
    downs, ups = _downs_ups(Path(whole.final))
    first_downs, first_ups = _downs_ups(Path(one.final))
    assert downs.keys() == first_downs.keys() and all(torch.equal(downs[k], first_downs[k]) for k in downs)
    assert any(not torch.equal(ups[k], first_ups[k]) for k in ups)  # the ups train
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    plain = execute(
        compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=plain", "adapter.frozen_down_grad=none"])
    )
    assert any(not torch.equal(ups[k], _downs_ups(Path(plain.final))[1][k]) for k in ups)


def _lora_weights(result) -> dict:
    return load_file(str(Path(result.final) / "pytorch_lora_weights.safetensors"))


def test_a_text_encoder_held_at_rate_zero_counts_in_the_clip_and_resumes_bit_exact(tmp_path):
    """kohya networks.lora_fa at text_encoder_lr 0 (issue 12): its text-encoder group stays in the optimizer
    at rate 0 (cleared every step) and train_network.py clips every network parameter, so the text encoder's
    gradients (its ups' and its frozen downs' accumulated ones) shrink the U-Net's clipped steps. dbspec's
    `optimizer.text_encoder_lr = 0`: the text encoder's ups never leave their zero init, the U-Net's modules
    end elsewhere than without the text encoder under an engaged clip (without a clip the two runs' U-Net
    weights are equal: checked once, left out for the suite's time), and an interrupted run resumes to the
    uninterrupted one's weights bit for bit."""
    spec = write_spec(tmp_path, steps=2, extra=LORA_FA.format(grads="kohya"))
    held = ["optimizer.lr=1e-2", "optimizer.text_encoder_lr=0", "optimizer.max_grad_norm=0.01"]
    plan = compile_spec(spec, [*held, "output.dir=whole"])
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 0
    assert "text encoder lr 0 (held: gradients computed and clipped, weights still)" in summary_text(plan)
    assert any("DBS229" in w and "text encoder" in w for w in plan.warnings)
    weights = _lora_weights(execute(plan))
    text = [k for k in weights if k.startswith("text_encoder.") and k.endswith("up.weight")]
    assert text and all(not weights[k].any() for k in text)  # the zero ups, held at rate 0
    unet = [k for k in weights if k.startswith("unet.") and k.endswith("up.weight")]
    assert unet and any(weights[k].any() for k in unet)  # the U-Net's ups train
    alone = ["optimizer.lr=1e-2", "train.text_encoder=false"]
    theirs = _lora_weights(execute(compile_spec(spec, [*alone, held[2], "output.dir=alone"])))
    assert any(not torch.equal(weights[k], theirs[k]) for k in unet)  # the text encoder's norm counted
    parts = compile_spec(spec, [*held, "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 2
    again = _lora_weights(resumed)
    assert again.keys() == weights.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
