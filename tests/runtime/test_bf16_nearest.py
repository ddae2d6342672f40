"""precision.weights_rounding = "nearest" (kohya's full_bf16): the plan's optimizer steps the bf16 weights
itself, as torch's optimizer does on bf16 parameters (round-to-nearest), its state created as it creates it;
any optimizer runs (Prodigy, D-Adaptation), and runs resume bit-exact (fp32 Adafactor state over bf16 weights
too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.rounding import StochasticRoundingOptimizer
from dbspec.runtime.setup import setup
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.optim_kit import flat_tensors, newest_state, same_trained_state

NEAREST = '[precision]\nmixed = "bf16"\nweights = "bf16"\nweights_rounding = "nearest"\n'


def _hand_built(kind: str, params: list, plan) -> torch.optim.Optimizer:
    """The optimizer kohya builds, from the library directly, with the plan's hyper-parameters."""
    o = plan.optimizer
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    prodigyopt = pytest.importorskip("prodigyopt")
    return prodigyopt.Prodigy(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


@pytest.mark.parametrize(("kind", "lr"), [("adamw", "1e-3"), ("prodigy", "1.0")])
def test_a_nearest_step_equals_the_torch_optimizer_stepping_bf16_parameters(tmp_path, kind, lr):
    spec = write_spec(tmp_path, steps=4, extra=NEAREST)
    plan = compile_spec(spec, [f"optimizer.kind={kind}", f"optimizer.lr={lr}"])
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding
    assert {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"} == {"unet": "bf16"}
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    assert not isinstance(run.optimizer.optimizer, StochasticRoundingOptimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    assert all(
        group["lr"] == plan.optimizer.lr for group in run.optimizer.param_groups
    )  # constant, no warm-up
    start = [p.detach().clone() for p in params]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = _hand_built(kind, copies, plan)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator).to(torch.bfloat16) for p in params]
        for p, q, g in zip(params, copies, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        run.optimizer.step()
        reference.step()
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(params, copies, strict=True))  # bit-exact
    assert any(not torch.equal(p.detach(), s) for p, s in zip(params, start, strict=True))  # it stepped
    state = [v for p in params for v in run.optimizer.state[p].values()]
    shaped = [v for v in state if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
    assert shaped and all(v.dtype == torch.bfloat16 for v in shaped)  # created from the bf16 parameters


@pytest.mark.parametrize(
    ("overrides", "state_dtype"),
    [
        (["optimizer.kind=prodigy", "optimizer.lr=1.0"], torch.bfloat16),
        (["optimizer.kind=dadapt_adam", "optimizer.lr=1.0"], torch.bfloat16),
        (["optimizer.kind=adafactor"], torch.float32),  # transformers' Adafactor keeps fp32 state
    ],
)
def test_a_nearest_bf16_full_fine_tune_resumes_bit_exact(tmp_path, overrides, state_dtype):
    spec = write_spec(tmp_path, steps=4, extra=NEAREST + "\n[checkpoints]\nevery = 2\n")
    whole_plan = compile_spec(spec, [*overrides, "output.dir=whole"])
    whole = execute(whole_plan)
    assert whole.status == "finished" and whole.steps == 4
    state = newest_state(tmp_path / "whole")
    held = [t for t in flat_tensors(state["trainable"]).values() if t.is_floating_point()]
    assert held and all(t.dtype == torch.bfloat16 for t in held)
    per_param = [v for s in state["optimizer"]["state"].values() for v in s.values()]
    shaped = [v for v in per_param if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
    assert shaped and all(v.dtype == state_dtype for v in shaped)
    assert "stochastic_rounding_generator" not in state["optimizer"]

    parts = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True)
    assert second.status == "finished" and second.steps == 4
    assert first.losses + second.losses == whole.losses
    assert same_trained_state(tmp_path / "whole", tmp_path / "parts")


LORA = """
[adapter]
kind = "lora"
rank = 4

[train]
text_encoder = true

[checkpoints]
every = 2
"""


def _lora_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors by layer and role, whatever the adapter's name (peft: default, default_0, ...)."""
    found = {}
    for name, p in module.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            layer, rest = name.split(".lora_", 1)
            found[f"{layer}.lora_{rest.split('.', 1)[0]}"] = p.detach()
    return found


@pytest.mark.parametrize(
    ("rounding", "optimizer"),
    [("nearest", ["optimizer.kind=prodigy", "optimizer.lr=1.0"]), ("stochastic", ["optimizer.lr=1e-3"])],
)
def test_a_lora_run_with_bf16_adapters_resumes_bit_exact_and_its_export_loads(tmp_path, rounding, optimizer):
    """kohya's full_bf16 in train_network.py casts the LoRA network to bf16: precision.weights = "bf16" holds
    the adapters in bf16 (the frozen base is bf16 under bf16 mixed precision anyway)."""
    extra = f'[precision]\nmixed = "bf16"\nweights = "bf16"\nweights_rounding = "{rounding}"\n' + LORA
    spec = write_spec(tmp_path, steps=4, extra=extra)
    whole_plan = compile_spec(spec, ["output.dir=whole", *optimizer])
    assert whole_plan.precision.weights == "bf16"
    assert whole_plan.precision.stochastic_rounding == (rounding == "stochastic")
    assert {c.name: (c.trainable, c.dtype) for c in whole_plan.precision.components if c.name != "vae"} == {
        "unet": ("lora", "bf16"),
        "text_encoder": ("lora", "bf16"),
    }
    adapters = whole_plan.memory.weights  # the adapters count 2 bytes each now
    fp32_plan = compile_spec(spec, ["output.dir=x", "precision.weights=fp32", *optimizer])
    assert (
        fp32_plan.memory.weights > adapters and fp32_plan.memory.gradients == 2 * whole_plan.memory.gradients
    )
    whole = execute(whole_plan, keep_models=True)
    assert whole.status == "finished"
    state = newest_state(tmp_path / "whole")
    held = [t for t in flat_tensors(state["trainable"]).values() if t.is_floating_point()]
    assert held and all(t.dtype == torch.bfloat16 for t in held)
    trained = _lora_params(whole.components.unet)
    assert trained and all(t.dtype == torch.bfloat16 for t in trained.values())

    parts = compile_spec(spec, ["output.dir=parts", *optimizer])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = flat_tensors(state["trainable"]), flat_tensors(newest_state(tmp_path / "parts")["trainable"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    pipe = build_pipeline("builtin:tiny-sd1")
    pipe.load_lora_weights(whole.final)
    loaded = _lora_params(pipe.unet)
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k].float(), trained[k].float()) for k in trained)  # saved exactly


def test_a_loha_run_with_bf16_adapters_resumes_bit_exact_and_loads_in_lycoris(tmp_path, monkeypatch):
    """LyCORIS adapters (LoHa) held in bf16: the run resumes bit-exact, and the kohya-format export holds the
    bf16 factors exactly (saved in fp32) and loads in lycoris-lora's kohya loader."""
    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    network_class = lycoris_kohya.LycorisNetworkKohya
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network_class, attr, [])  # build modules from the file only (see test_lycoris.py)
    extra = (
        NEAREST
        + '\n[adapter]\nkind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n'
        + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    )
    spec = write_spec(tmp_path, steps=4, extra=extra)
    overrides = ["optimizer.kind=dadapt_adam", "optimizer.lr=1.0"]
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]), keep_models=True)
    trained = [p for p in whole.components.unet.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.bfloat16 for p in trained)
    parts = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    assert same_trained_state(tmp_path / "whole", tmp_path / "parts")

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    fresh = build_pipeline(parts.model.base)
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, torch.nn.Module(), fresh.unet, for_inference=True
    )
    assert network.unet_loras
    factors = {k: v for k, v in weights.items() if ".hada_" in k}
    assert factors and all(v.dtype == torch.float32 for v in factors.values())  # save_precision fp32
    assert all(torch.equal(v.to(torch.bfloat16).float(), v) for v in factors.values())  # bf16 values, exact
    assert len(network.unet_loras) == len({k.split(".", 1)[0] for k in factors})
    network.apply_to(torch.nn.Module(), fresh.unet, apply_text_encoder=False, apply_unet=True)
    missing, unexpected = network.load_state_dict(weights, strict=False)
    assert not unexpected
