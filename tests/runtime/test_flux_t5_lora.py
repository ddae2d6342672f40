"""train.t5 (kohya lora_flux's train_t5xxl=True): a tiny-flux run puts LoRA on T5-XXL's attention q/k/v/o and
gated-MLP wi_0/wi_1/wo Linears, trains it at its own rate (optimizer.text_encoder_2_lr, kohya's
text_encoder_lr[1]) with the text cache off, resumes bit-exact, and exports it as kohya's `lora_te3_*` keys,
whose names this test computes from kohya's rule (prefix + module path, `.` as `_`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

BASE = "builtin:tiny-flux"
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
# kohya's lora_flux TEXT_ENCODER_TARGET_REPLACE_MODULE classes for T5
T5_CLASSES = ("T5Attention", "T5DenseGatedActDense")


def _kohya_t5_names() -> set[str]:
    """kohya's create_modules rule on the base T5EncoderModel: every Linear inside a T5Attention or
    T5DenseGatedActDense module, named `lora_te3` + `.` + module path + `.` + child path, dots to `_`."""
    t5 = build_pipeline(BASE).text_encoder_2
    names = set()
    for name, module in t5.named_modules():
        if module.__class__.__name__ in T5_CLASSES:
            for child_name, child in module.named_modules():
                if child.__class__.__name__ == "Linear":
                    names.add(("lora_te3." + (name + "." if name else "") + child_name).replace(".", "_"))
    return names


def _t5_lora(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "text_encoder_2" / "adapter_model.safetensors"))


def test_plan_trains_t5_with_kohya_targets_and_no_text_cache(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, ["optimizer.text_encoder_2_lr=5e-4", "model.t5_max_length=8"])
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("lora", "lora")
    assert plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert plan.optimizer.text_encoder_2_lr == 5e-4
    assert not plan.cache.text_embeddings
    assert any("T5-XXL trains" in n for n in plan.cache.notes)


def test_t5_lora_trains_resumes_bit_exact_and_exports_kohya_names(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=4, extra=EXTRA)
    overrides = ["optimizer.lr=1e-3", "optimizer.text_encoder_2_lr=2e-3", "model.t5_max_length=8"]
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
    assert any(k.startswith("lora_te1_") for k in tensors) and any(
        k.startswith("lora_unet_") for k in tensors
    )
    for name in t5_keys:  # kohya's tensors per module
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= tensors.keys()
        assert float(tensors[f"{name}.alpha"]) == 1.0
        assert tensors[f"{name}.lora_down.weight"].shape[0] == 2


def test_summary_shows_t5_targets(tmp_path):
    from tests.runtime.runspec import summary_text

    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    text = summary_text(compile_spec(spec, ["optimizer.text_encoder_2_lr=5e-4"]))
    assert "T5-XXL targets" in text and "q, k, v, o, wi_0, wi_1, wo" in text
    assert "(T5-XXL: 0.0005)" in text


def test_t5_lora_is_its_own_optimizer_group_at_text_encoder_2_lr(tmp_path):
    """kohya's prepare_optimizer_params_with_multiple_te_lrs: T5's LoRA (lora_te3) at text_encoder_lr[1],
    CLIP-L's at text_encoder_lr[0]."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.optim import param_groups
    from dbspec.runtime.prepare import configure_models

    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, ["optimizer.text_encoder_lr=3e-4", "optimizer.text_encoder_2_lr=7e-4"])
    comps = family_runtime("flux").load(plan)
    unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
    groups = {g["name"]: g for g in param_groups(unet_params, text_params, plan.optimizer)}
    t5 = comps.text_encoders[1]
    t5_lora = {id(p) for n, p in t5.named_parameters() if "lora_" in n}
    assert t5_lora and {id(p) for p in groups["text_encoder_2"]["params"]} == t5_lora
    assert groups["text_encoder_2"]["lr"] == 7e-4 and groups["text_encoder"]["lr"] == 3e-4
    trained = {n for n, p in t5.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)  # the base T5 stays frozen


def test_t5_lora_trains_with_gradient_checkpointing(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    plan = compile_spec(spec, ["precision.gradient_checkpointing=true", "model.t5_max_length=8"])
    assert next(c for c in plan.precision.components if c.name == "text_encoder_2").gradient_checkpointing
    ups = [v for k, v in _t5_lora(Path(execute(plan).final)).items() if "lora_B" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups)


def test_a_kohya_file_with_lora_te3_initialises_t5s_lora(tmp_path):
    """adapter.init_weights (kohya's --network_weights) fills T5's LoRA from the file's lora_te3_* modules."""
    first = execute(compile_spec(write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA), ["output.dir=first"]))
    (kohya,) = Path(first.final).glob("*.kohya.safetensors")
    extra = EXTRA.replace('kind = "lora"', f'kind = "lora"\ninit_weights = "{kohya}"')
    plan = compile_spec(write_spec(tmp_path / "second", base=BASE, steps=1, extra=extra))
    assert plan.adapter.init_weights
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.flow_init import load_flow_init_weights
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime("flux").load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    load_flow_init_weights(plan, comps.unet, comps.text_encoders)
    t5 = dict(comps.text_encoders[1].named_parameters())
    file = load_file(str(kohya))
    for name in _kohya_t5_names():
        path = name.removeprefix("lora_te3_")
        for side, kohya_side in (("A", "down"), ("B", "up")):  # B (up) starts at zero: only the file moves it
            (p,) = [
                p for n, p in t5.items() if n.replace(".", "_").endswith(f"{path}_lora_{side}_default_weight")
            ]
            assert torch.equal(p.detach(), file[f"{name}.lora_{kohya_side}.weight"].to(p.dtype))
            assert p.abs().sum() > 0
