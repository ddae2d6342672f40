"""train.t5 on SD3 (kohya lora_sd3's train_t5xxl=True): a tiny-sd3 run puts LoRA on its third text encoder,
T5-XXL (attention q/k/v/o and gated-MLP wi_0/wi_1/wo Linears), trains it in its own optimizer group at
optimizer.text_encoder_3_lr (kohya's text_encoder_lr[2]), resumes bit-exact, and exports it as kohya's
`lora_te3_*` keys, whose names this test computes from kohya's rule (prefix + module path, `.` as `_`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

BASE = "builtin:tiny-sd3"
EXTRA = """
[adapter]
kind = "lora"
rank = 2
alpha = 1.0

[train]
text_encoder = true
t5 = true

[checkpoints]
exports = ["kohya_lora"]
"""
# kohya's lora_sd3 TEXT_ENCODER_TARGET_REPLACE_MODULE classes for T5
T5_CLASSES = ("T5Attention", "T5DenseGatedActDense")
RATES = ["optimizer.lr=1e-3", "optimizer.text_encoder_lr=3e-4", "optimizer.text_encoder_2_lr=5e-4"]


def _kohya_t5_names() -> set[str]:
    """kohya's create_modules rule on the base T5EncoderModel: every Linear inside a T5Attention or
    T5DenseGatedActDense module, named `lora_te3` + `.` + module path + `.` + child path, dots to `_`."""
    t5 = build_pipeline(BASE).text_encoder_3
    names = set()
    for name, module in t5.named_modules():
        if module.__class__.__name__ in T5_CLASSES:
            for child_name, child in module.named_modules():
                if child.__class__.__name__ == "Linear":
                    names.add(("lora_te3." + (name + "." if name else "") + child_name).replace(".", "_"))
    return names


def _t5_lora(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "text_encoder_3" / "adapter_model.safetensors"))


def test_plan_trains_t5_at_its_own_rate(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, [*RATES, "optimizer.text_encoder_3_lr=7e-4", "model.t5_max_length=8"])
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert trainable["text_encoder_3"] == "lora" and trainable["text_encoder_2"] == "lora"
    assert plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    o = plan.optimizer
    assert (o.text_encoder_lr, o.text_encoder_2_lr, o.text_encoder_3_lr) == (3e-4, 5e-4, 7e-4)
    assert not plan.cache.text_embeddings
    from tests.runtime.runspec import summary_text

    assert "(T5-XXL: 0.0007)" in summary_text(plan)


def test_t5_rate_defaults_to_the_second_encoders(tmp_path):
    """kohya's [a, b] -> [a, b, b]: without its own rate T5 trains in CLIP-G's group."""
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, RATES)
    assert plan.optimizer.text_encoder_3_lr is None
    groups = _groups(plan)
    assert set(groups) == {"denoiser", "text_encoder", "text_encoder_2"}
    assert groups["text_encoder_2"][1] == 5e-4


def _groups(plan) -> dict[str, tuple[set[int], float]]:
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.optim import param_groups
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime("sd3").load(plan)
    unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
    _groups.comps = comps
    return {
        g["name"]: ({id(p) for p in g["params"]}, g["lr"])
        for g in param_groups(unet_params, text_params, plan.optimizer)
    }


def test_t5_lora_is_its_own_optimizer_group_at_text_encoder_3_lr(tmp_path):
    """kohya's prepare_optimizer_params_with_multiple_te_lrs: T5's LoRA (lora_te3) at text_encoder_lr[2]."""
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, [*RATES, "optimizer.text_encoder_3_lr=7e-4"])
    groups = _groups(plan)
    t5 = _groups.comps.text_encoders[2]
    t5_lora = {id(p) for n, p in t5.named_parameters() if "lora_" in n}
    assert t5_lora and groups["text_encoder_3"] == (t5_lora, 7e-4)
    assert groups["text_encoder"][1] == 3e-4 and groups["text_encoder_2"][1] == 5e-4
    assert not t5_lora & (groups["text_encoder"][0] | groups["text_encoder_2"][0])
    trained = {n for n, p in t5.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)  # the base T5 stays frozen


def test_t5_lora_trains_resumes_bit_exact_and_exports_kohya_names(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=4, extra=EXTRA)
    overrides = [*RATES, "optimizer.text_encoder_3_lr=2e-3", "model.t5_max_length=8"]
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    plan = compile_spec(spec, [*overrides, "output.dir=parts"])
    assert execute(plan, stop_after=2).status == "interrupted"
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4

    ours, theirs = _t5_lora(Path(whole.final)), _t5_lora(Path(resumed.final))
    assert ours and ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ups = [v for k, v in ours.items() if "lora_B" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # every T5 LoRA moved from its zero start

    (kohya,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(kohya))
    t5_keys = {k.rsplit(".", 2)[0] for k in tensors if k.startswith("lora_te3_")}
    assert t5_keys == _kohya_t5_names()
    for prefix in ("lora_te1_", "lora_te2_", "lora_unet_"):
        assert any(k.startswith(prefix) for k in tensors)
    for name in t5_keys:  # kohya's tensors per module
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= tensors.keys()
        assert float(tensors[f"{name}.alpha"]) == 1.0
        assert tensors[f"{name}.lora_down.weight"].shape[0] == 2


def test_t5_lora_moves_at_its_rate(tmp_path):
    """One SGD step: T5's LoRA up matrices (zero at the start) move by exactly its rate x their gradient, so
    doubling text_encoder_3_lr alone doubles T5's step."""
    spec = write_spec(tmp_path, base=BASE, steps=1, extra=EXTRA)
    base = [*RATES, "model.t5_max_length=8", "optimizer.kind=sgd", "optimizer.momentum=0"]
    base += ["optimizer.max_grad_norm=0", "optimizer.weight_decay=0"]
    runs = {}
    for lr in (1e-3, 2e-3):
        run = execute(compile_spec(spec, [*base, f"optimizer.text_encoder_3_lr={lr}", f"output.dir=r{lr}"]))
        runs[lr] = _t5_lora(Path(run.final))
    ups = [k for k in runs[1e-3] if "lora_B" in k]
    assert ups
    for k in ups:
        torch.testing.assert_close(runs[2e-3][k].float(), 2 * runs[1e-3][k].float(), rtol=1e-4, atol=1e-8)
        assert runs[1e-3][k].abs().sum() > 0


def test_a_kohya_file_with_lora_te3_initialises_sd3_t5s_lora(tmp_path):
    """adapter.init_weights (kohya's --network_weights): SD3 T5's LoRA from the file's lora_te3_* modules."""
    overrides = ["model.t5_max_length=8", "output.dir=first"]
    first = execute(compile_spec(write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA), overrides))
    (kohya,) = Path(first.final).glob("*.kohya.safetensors")
    extra = EXTRA.replace('kind = "lora"', f'kind = "lora"\ninit_weights = "{kohya}"')
    plan = compile_spec(write_spec(tmp_path / "second", base=BASE, steps=1, extra=extra))
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.flow_init import load_flow_init_weights
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime("sd3").load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    load_flow_init_weights(plan, comps.unet, comps.text_encoders)
    t5 = dict(comps.text_encoders[2].named_parameters())
    file = load_file(str(kohya))
    names = _kohya_t5_names()
    assert names
    for name in names:
        path = name.removeprefix("lora_te3_")
        (up,) = [p for n, p in t5.items() if n.replace(".", "_").endswith(f"{path}_lora_B_default_weight")]
        assert torch.equal(up.detach(), file[f"{name}.lora_up.weight"].to(up.dtype))
        assert up.abs().sum() > 0  # B (up) starts at zero: only the file moves it
