"""kohya Flux / SD3 LoRA files as starting weights (adapter.init_weights, kohya --network_weights with
networks.lora_flux / lora_sd3; runtime/flow_init.py): a tiny run's kohya export (the original model's fused
layers: one shared down with fused_projections, the parts' downs stacked and ups block-diagonal without)
starts a second run whose adapters are the first's, exported again byte for byte, with the first's outputs;
a run started from it trains and resumes bit-exact; a file of the other fused layout or a wrong rank is
refused at plan time naming the file and the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.families import family_spec
from dbspec.frontend import plan_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import CPU, compile_spec, write_spec
from tests.runtime.shared import copy_of_run

BASES = {"flux": "builtin:tiny-flux", "sd3": "builtin:tiny-sd3"}


def _adapter(family: str, fused: bool, init: str = "") -> str:
    targets = ", ".join(f'"{t}"' for t in family_spec(family).kohya_lora_targets)
    text = (
        f'[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = {str(fused).lower()}\n'
        f"denoiser_targets = [{targets}]\n"
    )
    if init:
        text += f'init_weights = "{init}"\n'
    if family == "flux":  # kohya adapts no final layer (its Linear shares the single blocks' name proj_out)
        text += '\n[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\nalpha = 1\n'
    return text + "\n[train]\ntext_encoder = true\n"


def _export(tmp_path: Path, family: str, fused: bool):
    """(the kohya export of a 2-step run in `tmp_path / "first"`, the run's trained components): the run made
    once per test process for each (family, fused) and copied, the components deep-copied
    (test_init_partial.py and test_flow_dim_from_weights.py start from it too)."""

    def run(folder: Path):
        extra = _adapter(family, fused) + '\n[checkpoints]\nexports = ["kohya_lora"]\n'
        spec = write_spec(folder, base=BASES[family], steps=2, extra=extra)
        result = execute(compile_spec(spec, ["optimizer.lr=1e-2"]), keep_models=True)
        return str(Path(result.final).relative_to(folder)), result.components

    key = f"flow-init-{family}-{'fused' if fused else 'split'}"
    folder, (final, components) = copy_of_run(tmp_path, tmp_path / "first", key, run)
    (export,) = (folder / final).glob("*.kohya.safetensors")
    return export, components


def _second(tmp_path: Path, family: str, fused: bool, export: Path, steps: int = 2) -> Path:
    return write_spec(
        tmp_path / "second", base=BASES[family], steps=steps, extra=_adapter(family, fused, str(export))
    )


def _loaded(plan):
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    count = load_init_weights(plan, comps.unet, comps.text_encoders)
    return comps, count


def _trained(module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("family", "fused"), [("flux", True), ("flux", False), ("sd3", True), ("sd3", False)]
)
def test_export_starts_a_run_with_the_same_adapter(tmp_path, family, fused):
    export, first = _export(tmp_path, family, fused)
    saved = load_file(str(export))
    rows = saved[next(k for k in saved if "_attn_qkv.lora_down" in k)].shape[0]
    assert rows == (4 if fused else 12)  # one shared down, or the three parts' downs stacked (split_qkv)
    plan = compile_spec(_second(tmp_path, family, fused, export), ["optimizer.lr=1e-2"])
    assert plan.adapter.init_layers == len({k.split(".")[0] for k in saved})
    comps, count = _loaded(plan)
    assert count == plan.adapter.init_layers
    # the same adapter: every trained tensor (the shared downs once) equal to the first run's
    for ours, theirs in [(comps.unet, first.unet), *zip(comps.text_encoders, first.text_encoders)]:
        a, b = _trained(ours), _trained(theirs)
        assert a.keys() == b.keys() and (a or ours is not comps.unet)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    if fused:
        for block in comps.unet.transformer_blocks:  # still one down per fused layer
            assert block.attn.to_k.lora_A["default"].weight is block.attn.to_q.lora_A["default"].weight
    # and exported again, the same file
    exporter = family_runtime(family).exports
    again, _ = exporter.kohya_lora_state(denoiser=comps.unet, text_encoders=comps.text_encoders, dtype="fp32")
    assert again.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=1e-6, msg=key)
    if family == "flux":
        from tests.runtime.test_flux_kohya import _predict

        torch.testing.assert_close(_predict(comps.unet), _predict(first.unet), rtol=0, atol=1e-4)


def test_a_run_from_a_kohya_flux_file_trains_and_resumes_bit_exact(tmp_path):
    export, _ = _export(tmp_path, "flux", True)
    whole = execute(compile_spec(_second(tmp_path, "flux", True, export, steps=4), ["output.dir=whole"]))
    parts_plan = compile_spec(_second(tmp_path, "flux", True, export, steps=4), ["output.dir=parts"])
    first = execute(parts_plan, stop_after=2)
    assert first.status == "interrupted"
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(export)).items()}, str(export))
    resumed = execute(parts_plan, resume=True)  # the checkpoint's weights win over the (changed) file
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _refusal(tmp_path: Path, family: str, fused: bool, file: Path, rank: int = 4) -> str:
    spec = _second(tmp_path, family, fused, file)
    spec.write_text(spec.read_text().replace("rank = 4", f"rank = {rank}", 1))
    planned = plan_spec(spec, CPU, str(spec), [])
    assert planned.plan is None
    (d,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert d.path == "adapter.init_weights" and str(file) in d.message
    return d.message + " " + (d.help or "")


def test_a_split_qkv_file_into_shared_downs_is_refused_at_plan_time(tmp_path):
    export, _ = _export(tmp_path, "flux", False)
    message = _refusal(tmp_path, "flux", True, export)
    assert "_attn_qkv.lora_down.weight" in message and "split_qkv" in message
    assert "fused_projections = false" in message


def test_a_wrong_rank_is_refused_naming_the_tensor(tmp_path):
    export, _ = _export(tmp_path, "sd3", True)
    message = _refusal(tmp_path, "sd3", True, export, rank=8)
    assert ".lora_down.weight` has rank 4" in message and "adapter.rank is 8" in message, message


def test_a_shared_down_file_starts_separate_parts_with_the_same_update(tmp_path):
    """kohya's fused LoRA (one down) into per-part LoRAs (fused_projections false): each part takes the
    down and its up rows, so every layer's update is the file's."""
    export, first = _export(tmp_path, "flux", True)
    plan = compile_spec(_second(tmp_path, "flux", False, export))
    comps, _ = _loaded(plan)
    from tests.runtime.test_flux_kohya import _predict

    torch.testing.assert_close(_predict(comps.unet), _predict(first.unet), rtol=0, atol=1e-4)
    a = comps.unet.transformer_blocks[0].attn
    assert a.to_k.lora_A["default"].weight is not a.to_q.lora_A["default"].weight
    assert torch.equal(a.to_k.lora_A["default"].weight, a.to_q.lora_A["default"].weight)


def test_clip_names_without_text_model_load_alike(tmp_path):
    """kohya names CLIP's layers from the text encoder's module paths; transformers >= 5.6 drops
    CLIPTextModel's `text_model.` level (kohya run on it writes `lora_te1_encoder_layers_...`): both load."""
    export, first = _export(tmp_path, "flux", True)
    bare = tmp_path / "bare.safetensors"
    save_file(
        {k.replace("lora_te1_text_model_", "lora_te1_"): v for k, v in load_file(str(export)).items()},
        str(bare),
    )
    comps, _ = _loaded(compile_spec(_second(tmp_path, "flux", True, bare)))
    a, b = _trained(comps.text_encoders[0]), _trained(first.text_encoders[0])
    assert a.keys() == b.keys() and a and all(torch.equal(a[n], b[n]) for n in a)


def test_flux_final_layer_folded_and_swapped_loads_back(tmp_path):
    """dbspec's Flux export folds the final layer's scale into lora_up (alpha = rank) and swaps norm_out's
    (scale, shift) rows into the original (shift, scale): loading unfolds and swaps back."""
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\n'
        'denoiser_targets = ["to_q", "to_k", "to_v", "norm_out.linear", "proj_out"]\n'
    )
    spec = write_spec(
        tmp_path / "first",
        base=BASES["flux"],
        steps=2,
        extra=extra + '\n[checkpoints]\nexports = ["kohya_lora"]\n',
    )
    first = execute(compile_spec(spec, ["optimizer.lr=1e-2"]), keep_models=True)
    (export,) = Path(first.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert saved["lora_unet_final_layer_adaLN_modulation_1.alpha"].item() == 4.0  # folded
    second = write_spec(
        tmp_path / "second", base=BASES["flux"], steps=2, extra=extra + f'init_weights = "{export}"\n'
    )
    comps, _ = _loaded(compile_spec(second))
    a, b = _trained(comps.unet), _trained(first.components.unet)
    assert a.keys() == b.keys() and any("norm_out" in n for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_a_kohya_flux_file_of_other_alphas_loads_as_it_is_with_init_alpha_ignore(tmp_path):
    """adapter.init_alpha = "ignore" (kohya lora_flux's LoRAModule keeps network_alpha's scale; load_weights
    only overwrites its alpha buffer): a split_qkv file whose alphas are all 5 is refused without it (DBS356,
    its help naming the option) and with it loads every tensor as it is, no scale read or unfolded, so the
    adapters equal the run that wrote the file (alpha 2)."""
    export, first = _export(tmp_path, "flux", False)
    other = tmp_path / "alpha5.safetensors"
    save_file(
        {k: torch.tensor(5.0) if k.endswith(".alpha") else v for k, v in load_file(str(export)).items()},
        str(other),
    )
    assert "init_alpha" in _refusal(tmp_path, "flux", False, other)
    spec = _second(tmp_path, "flux", False, other)
    spec.write_text(spec.read_text().replace("init_weights =", 'init_alpha = "ignore"\ninit_weights ='))
    comps, count = _loaded(compile_spec(spec, ["optimizer.lr=1e-2"]))
    assert count
    for ours, theirs in [(comps.unet, first.unet), *zip(comps.text_encoders, first.text_encoders)]:
        a, b = _trained(ours), _trained(theirs)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_kohyas_max_norm_of_a_flux_file_of_other_alphas_takes_each_modules_own(tmp_path):
    """kohya lora_flux's apply_max_norm_regularization reads each module's alpha buffer, which load_weights
    set from the file (was DBS403 / DBS601): a fused file whose modules hold alphas 5 and 3 (the double
    blocks' fused q/k/v 3) gives each norm module, a fused layer's parts as one and CLIP's layers too, the
    file's alpha of its kohya module; the layers still train at the adapter's 2."""
    from dbspec.runtime.max_norm import norm_modules
    from dbspec.runtime.max_norm_alphas import with_file_alphas

    export, _first = _export(tmp_path, "flux", True)
    state = load_file(str(export))
    own = {k: torch.tensor(3.0 if "_img_attn_qkv" in k else 5.0) for k in state if k.endswith(".alpha")}
    other = tmp_path / "alphas.safetensors"
    save_file({**state, **own}, str(other))
    spec = _second(tmp_path, "flux", True, other)
    text = spec.read_text().replace("init_weights =", 'init_alpha = "ignore"\nmax_norm = 0.5\ninit_weights =')
    spec.write_text(text)
    plan = compile_spec(spec, ["optimizer.lr=1e-2"])
    assert plan.adapter.max_norm_alphas == {k[: -len(".alpha")]: float(v) for k, v in own.items()}
    comps, _count = _loaded(plan)
    plain = norm_modules([*comps.text_encoders, comps.unet], plan.adapter.fused)
    modules = with_file_alphas(plain, plan, comps.unet, comps.text_encoders)
    assert {m.alpha for m in plain} == {2.0}
    got = {m.name: (m.alpha, len(m.ups)) for m in modules}
    assert len(modules) == len(own) and got["transformer_blocks.0.attn.to_q"] == (3.0, 3)
    assert got["transformer_blocks.0.attn.add_q_proj"] == (5.0, 3)  # txt_attn_qkv
    assert got["single_transformer_blocks.0.attn.to_q"] == (5.0, 4)  # linear1
    assert {m.alpha for m in modules} == {3.0, 5.0}
