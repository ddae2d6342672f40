"""`adapter.init_weights` (kohya --network_weights): a tiny LoRA run's kohya export starts a second run, whose
adapters hold the file's tensors at step 0; the second run resumes bit-exact (the checkpoint wins)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.exports import kohya_lora_state
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from dbspec.runtime.setup import setup
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.shared import copy_of_run

FIRST = """
[adapter]
kind = "lora"
rank = 2
alpha = 1.0

[train]
text_encoder = true

[checkpoints]
exports = ["kohya_lora"]
"""


def _first_export(tmp_path: Path) -> Path:
    """The kohya export of a 2-step LoRA run in `tmp_path / "first"` (the run made once per test process and
    copied: test_dylora_weights.py and test_sd_dim_from_weights.py start from it too)."""

    def run(folder: Path) -> str:
        result = execute(compile_spec(write_spec(folder, steps=2, extra=FIRST), ["optimizer.lr=1e-2"]))
        return str(Path(result.final).relative_to(folder))

    folder, final = copy_of_run(tmp_path, tmp_path / "first", "init-weights-first", run)
    (export,) = (folder / final).glob("*.kohya.safetensors")
    return export


def _second_spec(tmp_path: Path, export: Path, steps: int = 4) -> Path:
    extra = FIRST.replace('exports = ["kohya_lora"]', "")
    extra = extra.replace("alpha = 1.0", f'alpha = 1.0\ninit_weights = "{export}"')
    return write_spec(tmp_path / "second", steps=steps, extra=extra)


def _starts_with(plan, saved: dict) -> None:
    """At step 0 (set up, nothing trained) the adapters hold exactly `saved`'s tensors in kohya's layout."""
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    held, _ = kohya_lora_state(
        unet=run.comps.unet, text_encoders=run.comps.text_encoders, family=plan.model.family, dtype="fp32"
    )
    assert held.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(held[key], value.float()), key


def test_a_second_run_starts_from_the_kohya_export_and_resumes_bit_exact(tmp_path):
    export = _first_export(tmp_path)
    saved = load_file(str(export))
    plan = compile_spec(_second_spec(tmp_path, export), ["optimizer.lr=1e-2"])
    assert plan.adapter.init_weights == str(export)
    assert plan.adapter.init_layers == len({k.split(".")[0] for k in saved})

    # Step 0: the adapters hold exactly the file's tensors (up/down and the alpha they imply).
    _starts_with(plan, saved)

    whole = execute(compile_spec(_second_spec(tmp_path, export), ["optimizer.lr=1e-2", "output.dir=whole"]))
    parts_plan = compile_spec(_second_spec(tmp_path, export), ["optimizer.lr=1e-2", "output.dir=parts"])
    assert execute(parts_plan, stop_after=2).status == "interrupted"
    # The file changes before the resume: the checkpoint's weights win, the file is not read again.
    save_file({k: torch.zeros_like(v) for k, v in saved.items()}, str(export))
    resumed = execute(parts_plan, resume=True)
    assert resumed.status == "finished" and resumed.steps == 4
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_torch_save_file_starts_the_run_as_its_safetensors_twin(tmp_path):
    """The export's tensors in a torch.save `.pt` file (kohya's save_model_as pt; the alphas 0-d, one
    matrix a view at an offset into a larger storage): the plan reads it without torch, the run loads it
    with torch.load(weights_only=True), and at step 0 the adapters hold the same tensors as from the
    .safetensors file; a file weights_only refuses fails naming it."""
    export = _first_export(tmp_path)
    saved = load_file(str(export))
    key = sorted(k for k in saved if k.endswith(".lora_up.weight"))[0]
    state = dict(saved)
    padded = torch.cat([torch.zeros(1, *saved[key].shape[1:], dtype=saved[key].dtype), saved[key]])
    state[key] = padded[1:]  # storage_offset > 0
    twin = tmp_path / "twin.pt"
    torch.save(state, twin)
    plan = compile_spec(_second_spec(tmp_path, twin), ["optimizer.lr=1e-2"])
    assert plan.adapter.init_weights == str(twin)
    assert plan.adapter.init_layers == len({k.split(".")[0] for k in saved})
    _starts_with(plan, saved)

    torch.save({**state, "args": argparse.Namespace(rank=2)}, twin)  # a global weights_only refuses
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"twin\.pt: torch\.load\(weights_only=True\) refuses it \(Unsupported global"
    ):
        load_init_weights(plan, comps.unet, comps.text_encoders)


def test_a_file_missing_a_layer_of_the_run_fails_naming_the_tensor(tmp_path):
    export = _first_export(tmp_path)
    saved = load_file(str(export))
    dropped = sorted(k for k in saved if k.startswith("lora_unet_") and k.endswith(".lora_up.weight"))[0]
    trimmed = tmp_path / "trimmed.safetensors"
    base = dropped.split(".")[0]
    save_file({k: v for k, v in saved.items() if not k.startswith(base + ".")}, str(trimmed))
    plan = compile_spec(_second_spec(tmp_path, trimmed))
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    with pytest.raises(ValueError, match=f"{base}.lora_down.weight"):
        load_init_weights(plan, comps.unet, comps.text_encoders)


def test_idle_text_encoders_hold_the_files_modules_out_of_the_optimizer(tmp_path):
    """kohya --network_weights with text_encoder_lr 0 (train.text_encoder_idle = "kohya"; convert/kohya/
    idle_text.py): the untrained CLIP holds the file's modules at step 0, none of its weights is the
    optimizer's, all of them take gradients for the clip and are in the checkpoint's weights."""
    from dbspec.runtime.weights import trainable_state

    export = _first_export(tmp_path)
    saved = load_file(str(export))
    assert any(k.startswith("lora_te_") for k in saved)
    spec = _second_spec(tmp_path, export)
    idle = spec.read_text().replace(
        "text_encoder = true", 'text_encoder = false\ntext_encoder_idle = "kohya"'
    )
    spec.write_text(idle)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    state, _ = kohya_lora_state(
        unet=run.comps.unet, text_encoders=run.comps.text_encoders, family=plan.model.family, dtype="fp32"
    )
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[key], value.float()) for key, value in saved.items())
    held = [p for p in run.comps.text_encoders[0].parameters() if p.requires_grad]
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert (
        held and not stepped & {id(p) for p in held} and {id(p) for p in held} <= {id(p) for p in run.params}
    )
    assert sorted(run.idle) == sorted(
        f"text_encoder.{k}" for k, p in run.comps.text_encoders[0].named_parameters() if p.requires_grad
    )
    kept = trainable_state(run.comps, plan)  # what a checkpoint holds: the idle encoder's modules too
    assert sum(k.startswith("text_encoder.") for k in kept) == len(held)


def test_a_file_saved_at_another_alpha_trains_at_the_adapters_and_exports_it(tmp_path):
    """adapter.init_alpha = "ignore" (kohya --network_weights saved at another alpha than --network_alpha):
    kohya's LoRAModule keeps the scale it built from network_alpha (alpha / dim) and load_weights only puts
    the file's alpha in its buffer. Step 0's layers compute base + up @ down x * alpha / rank with the file's
    tensors at the adapter's alpha (1 / 2, not the file's 4 / 2), and the export carries that alpha (kohya's
    save_weights would write the file's 4 from the buffer). kohya's max-norm reads that buffer: each module's
    norm is taken at the file's 4 / 2 (plan.adapter.max_norm_alphas; was DBS601)."""
    export = _first_export(tmp_path)
    saved = {k: (torch.tensor(4.0) if k.endswith(".alpha") else v) for k, v in load_file(str(export)).items()}
    other = tmp_path / "alpha4.safetensors"
    save_file(saved, str(other))
    extra = FIRST.replace(
        "alpha = 1.0", f'alpha = 1.0\ninit_weights = "{other}"\ninit_alpha = "ignore"\nmax_norm = 0.05'
    )
    plan = compile_spec(write_spec(tmp_path / "second", steps=1, extra=extra), ["optimizer.lr=1e-2"])
    assert (plan.adapter.alpha, plan.adapter.init_alpha) == (1.0, "ignore")
    assert plan.adapter.max_norm_alphas == {k[: -len(".alpha")]: 4.0 for k in saved if k.endswith(".alpha")}

    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    layers = {
        "lora_unet_" + n.replace(".", "_"): m
        for n, m in run.comps.unet.named_modules()
        if hasattr(m, "lora_A")
    }
    checked = 0
    for key, layer in sorted(layers.items()):
        if "default" not in layer.lora_A or not isinstance(layer.base_layer, torch.nn.Linear):
            continue
        down, up = saved[f"{key}.lora_down.weight"].float(), saved[f"{key}.lora_up.weight"].float()
        assert up.abs().sum() > 0  # a trained file: the scale shows in the output
        x = torch.randn(2, 3, down.shape[1], generator=torch.Generator().manual_seed(checked))
        base = torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), base + x @ down.T @ up.T * (1.0 / 2), rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 4
    # what the kohya_lora export writes (checkpoints.exports): the alpha the layers train at, not the file's 4
    state, _ = kohya_lora_state(
        unet=run.comps.unet, text_encoders=run.comps.text_encoders, family=plan.model.family, dtype="fp32"
    )
    alphas = {float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert alphas == {1.0} and state.keys() == saved.keys()
    _max_norm_at_the_files_alphas(run, saved, limit=0.05)


def _max_norm_at_the_files_alphas(run, saved: dict, limit: float) -> None:
    """kohya's apply_max_norm_regularization on the loaded network: every module's update taken at its alpha
    buffer (the file's 4) over the rank, those above `limit` scaled to it, up and down by the square root."""
    from dbspec.runtime.max_norm import apply_max_norm, update_of

    modules = run.norm_modules
    assert len(modules) == sum(k.endswith(".alpha") for k in saved)
    assert {(m.alpha, m.rank) for m in modules} == {(4.0, 2)}  # the layers train at 1.0
    with torch.no_grad():
        before = [float((4.0 / 2 * (m.ups[0].flatten(1) @ m.down.flatten(1))).norm()) for m in modules]
    scaled, _mean, largest = apply_max_norm(modules, limit)
    assert scaled == sum(n > limit for n in before) > 0
    after = [float(update_of(m).norm()) for m in modules]
    assert largest <= limit * (1 + 1e-5) and max(after) <= limit * (1 + 1e-5)
    # at the trained alpha (1 / 2) the scaled modules sit at a quarter of the limit: kohya's buffer decided
    for b, a in zip(before, after):
        assert a == pytest.approx(min(b, limit), rel=1e-4)
