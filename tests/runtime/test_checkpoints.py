"""Output folder, atomic checkpoints, RNG state and weight writers, on the built-in tiny models (CPU)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import CLIPTextModel

from dbspec.runtime.adapters import inject_lora
from dbspec.runtime.outdir import recover
from dbspec.runtime.checkpoints import (
    OutputError,
    capture_rng_state,
    latest_checkpoint,
    load_state,
    prepare_output,
    restore_rng_state,
    save_checkpoint,
)
from dbspec.runtime.weights import save_full_weights, save_lora_weights
from dbspec.runtime.tiny import build_pipeline

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(autouse=True)
def _keep_global_rngs() -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def _plan(hash_: str) -> tuple[str, str]:
    return json.dumps({"plan_hash": hash_}) + "\n", hash_


def _weights(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(b"w")


def _save(out: Path, step: int, keep: int = 0) -> Path:
    return save_checkpoint(out, step, weights=_weights, state={"step": step}, keep=keep)


def _steps(out: Path) -> list[str]:
    return sorted(entry.name for entry in (out / "checkpoints").iterdir() if entry.name != "latest")


# --- checkpoints --------------------------------------------------------------------------------------------
def test_checkpoint_holds_weights_and_state_and_latest_names_it(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    folder = _save(tmp_path, 30)
    assert folder == tmp_path / "checkpoints" / "step-000030"
    assert (folder / "weights.bin").read_bytes() == b"w"
    assert load_state(folder) == {"step": 30}
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000030\n"
    assert latest_checkpoint(tmp_path) == folder


def test_crash_inside_weights_leaves_no_folder_and_latest_unchanged(tmp_path: Path) -> None:
    _save(tmp_path, 10)

    def crash(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 20, weights=crash, state={"step": 20}, keep=0)
    assert _steps(tmp_path) == ["step-000010"]  # no step-000020, no temp folder
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000010"


def test_resaving_a_step_replaces_it_and_leftovers_of_dead_saves_go(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    (tmp_path / "checkpoints" / "latest").write_text("step-000010\n")  # died before moving the pointer
    for leftover in (".tmp-step-000030-999999999", ".trash-step-000005-4242"):  # a dead save, a dead prune
        (tmp_path / "checkpoints" / leftover).mkdir()
    (tmp_path / "checkpoints" / ".latest.x1y2z3.tmp").write_text("step-0")  # a dead pointer update
    assert recover(tmp_path) == ["deleted 3 temporary file(s) or folder(s) left by a killed run"]
    folder = save_checkpoint(
        tmp_path, 20, weights=lambda f: (f / "new.bin").write_bytes(b"n"), state={}, keep=0
    )
    assert sorted(entry.name for entry in folder.iterdir()) == ["new.bin", "training_state.pt"]
    assert latest_checkpoint(tmp_path) == folder
    assert _steps(tmp_path) == ["step-000010", "step-000020"]  # no temp or trash folders left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step-000010",
        "step-000020",
    ]


def test_a_final_model_moved_aside_by_a_killed_run_is_put_back(tmp_path: Path) -> None:
    (
        tmp_path / ".final.old-4242"
    ).mkdir()  # killed between moving the old final aside and renaming the new one in
    (tmp_path / ".final.old-4242" / "weights.bin").write_bytes(b"finished")
    (tmp_path / ".final.tmp-4242").mkdir()  # the half-written replacement
    notes = recover(tmp_path)
    assert (tmp_path / "final" / "weights.bin").read_bytes() == b"finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and len(notes) == 2
    (tmp_path / ".final.old-4343").mkdir()  # killed after the new final was in place: the old one goes
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_state_that_weights_only_cannot_load_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['sampler'\]\['epoch'\] is a int64"):
        save_checkpoint(tmp_path, 5, weights=_weights, state={"sampler": {"epoch": np.int64(1)}}, keep=0)
    assert latest_checkpoint(tmp_path) is None


def test_keep_prunes_oldest_never_latest(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    assert _steps(tmp_path) == ["step-000020", "step-000030"]
    stray = _save(tmp_path, 50)  # e.g. written by a run that was later resumed from an earlier step
    (tmp_path / "checkpoints" / "latest").unlink()
    _save(tmp_path, 40, keep=1)
    assert _steps(tmp_path) == ["step-000040", stray.name]  # newest kept, latest kept
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000040"
    for step in (60, 70):
        _save(tmp_path, step, keep=0)
    assert len(_steps(tmp_path)) == 4  # keep=0 keeps all


def test_latest_falls_back_to_newest_complete_folder(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    latest = tmp_path / "checkpoints" / "latest"
    latest.write_text("../../etc\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000020"
    latest.unlink()  # a crash between the rename and the pointer update
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000020"


def test_rng_capture_restore_repeats_draws_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    folder = save_checkpoint(tmp_path, 1, weights=_weights, state={"rng": capture_rng_state()}, keep=0)

    def draws() -> tuple[float, list[float], list[float]]:
        return random.random(), np.random.normal(size=3).tolist(), torch.randn(3).tolist()

    first = draws()
    restore_rng_state(load_state(folder)["rng"])
    assert draws() == first


def test_real_optimizer_scheduler_and_scaler_state_round_trip(tmp_path: Path) -> None:
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "step": 1,
        "epoch": 0,
    }
    loaded = load_state(save_checkpoint(tmp_path, 1, weights=_weights, state=state, keep=0))
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["lr_scheduler"])
    assert loaded["scaler"] == state["scaler"] and loaded["step"] == 1


# --- output folder ------------------------------------------------------------------------------------------
def _claim(out: Path, plan: tuple[str, str], **options) -> None:
    """prepare_output, then release the folder's lock at once (as a run that ended would)."""
    options = {"overwrite": False, "resume": False, **options}
    prepare_output(out, *plan, **options).release()


def test_prepare_output_refuses_to_mix_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plan_a, plan_b = _plan("sha256:" + "a" * 64), _plan("sha256:" + "b" * 64)
    _claim(out, plan_a)
    assert (out / "plan.json").read_text() == plan_a[0]
    _claim(out, plan_a)  # nothing saved yet: fine
    _save(out, 10)
    with pytest.raises(OutputError, match="--resume"):
        _claim(out, plan_a)
    _claim(out, plan_a, resume=True)
    assert latest_checkpoint(out) is not None
    for resume in (False, True):
        with pytest.raises(OutputError, match="another plan.*--overwrite"):
            _claim(out, plan_b, resume=resume)
    assert (out / "plan.json").read_text() == plan_a[0]


def test_overwrite_moves_the_old_run_aside(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _claim(out, _plan("sha256:a"))
    _save(out, 10)
    _claim(out, _plan("sha256:b"), overwrite=True)
    (old,) = tmp_path.glob("run.old-*")
    assert json.loads((old / "plan.json").read_text())["plan_hash"] == "sha256:a"
    assert latest_checkpoint(old) == old / "checkpoints" / "step-000010"
    assert json.loads((out / "plan.json").read_text())["plan_hash"] == "sha256:b"
    assert latest_checkpoint(out) is None


# --- weights ------------------------------------------------------------------------------------------------
def test_full_weights_reload_in_save_dtype_and_leave_live_model_alone(tmp_path: Path) -> None:
    pipe = build_pipeline("builtin:tiny-sd1")
    unet, text_encoder = pipe.unet.train(), pipe.text_encoder
    save_full_weights(tmp_path, unet, {"text_encoder": text_encoder}, "fp16")
    assert unet.dtype == torch.float32 and unet.training
    (weights_file,) = (tmp_path / "unet").glob("*.safetensors")
    assert {tensor.dtype for tensor in load_file(weights_file).values()} == {torch.float16}
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet", torch_dtype=torch.float16)
    for key, value in unet.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value.half()), key
    reloaded_text = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    ids = pipe.tokenizer(["a photo of ohwx dog"], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = text_encoder.half()(ids).last_hidden_state
        assert torch.equal(reloaded_text(ids).last_hidden_state, expected)
    assert list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))


def _add_lora(module: torch.nn.Module, targets: list[str], seed: int) -> None:
    # rank 4 with alpha 8: loading must restore the scale from the saved metadata, not assume alpha = rank.
    inject_lora(module, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:  # lora_B starts at zero: nudge so the adapter changes the output
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def _unet_output(unet: torch.nn.Module, sdxl: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(1, 64, generator=generator), "time_ids": torch.tensor([[64.0] * 6])}
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), context, added_cond_kwargs=added if sdxl else None).sample


def _text_output(pipe, encoder: torch.nn.Module) -> torch.Tensor:  # noqa: ANN001 - any pipeline
    ids = pipe.tokenizer(["a photo of ohwx dog"], return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state


@pytest.mark.parametrize("name", ["builtin:tiny-sd1", "builtin:tiny-sdxl"])
def test_lora_file_loads_into_a_fresh_pipeline_with_the_same_outputs(name: str, tmp_path: Path) -> None:
    sdxl = name.endswith("sdxl")
    trained = build_pipeline(name)
    encoders = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    _add_lora(trained.unet, UNET_TARGETS, seed=1)
    for index, encoder in enumerate(encoders):
        _add_lora(getattr(trained, encoder), TEXT_TARGETS, seed=2 + index)
    path = save_lora_weights(
        tmp_path,
        trained.unet,
        trained.text_encoder,
        "fp32",
        family="sdxl" if sdxl else "sd1",
        text_encoder_2=trained.text_encoder_2 if sdxl else None,
    )
    assert path.is_file()

    fresh = build_pipeline(name)
    base_output = _unet_output(fresh.unet, sdxl)
    fresh.load_lora_weights(tmp_path)
    expected = _unet_output(trained.unet, sdxl)
    assert not torch.allclose(expected, base_output, atol=1e-4)  # the adapter matters
    torch.testing.assert_close(_unet_output(fresh.unet, sdxl), expected, atol=1e-5, rtol=1e-5)
    for encoder in encoders:
        torch.testing.assert_close(
            _text_output(fresh, getattr(fresh, encoder)),
            _text_output(trained, getattr(trained, encoder)),
            atol=1e-5,
            rtol=1e-5,
        )


def test_lora_from_a_peft_model_wrapper_and_in_half_precision(tmp_path: Path) -> None:
    trained = build_pipeline("builtin:tiny-sd1")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS, init_lora_weights="gaussian")
    wrapped = get_peft_model(trained.unet, config)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    save_lora_weights(tmp_path / "fp32", wrapped, None, "fp32", family="sd1")
    save_lora_weights(tmp_path / "fp16", wrapped, None, "fp16", family="sd1")
    fresh = build_pipeline("builtin:tiny-sd1")
    fresh.load_lora_weights(tmp_path / "fp32")
    torch.testing.assert_close(
        _unet_output(fresh.unet, False), _unet_output(wrapped.get_base_model(), False), atol=1e-5, rtol=1e-5
    )
    half = load_file(tmp_path / "fp16" / "pytorch_lora_weights.safetensors")
    assert half and all(tensor.dtype == torch.float16 for tensor in half.values())
    with pytest.raises(ValueError, match="only sdxl"):
        save_lora_weights(
            tmp_path / "x", wrapped, None, "fp32", family="sd1", text_encoder_2=trained.text_encoder
        )
