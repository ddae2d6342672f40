"""`dbspec run`: tiny real models trained through the real loop, asserting real effects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import RunError, execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, make_plan, write_spec


def _unet_file(folder: Path) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_full_finetune_trains_and_writes_every_output(tmp_path):
    plan = make_plan(
        tmp_path,
        steps=4,
        with_class=True,
        extra="""
[checkpoints]
every = 2
keep = 1

[validation]
prompts = ["a photo of ohwx toy on a beach"]
every = 2
steps = 2
""",
    )
    result = execute(plan)
    out = Path(result.output)
    assert result.status == "finished" and result.steps == 4
    assert (out / "final" / "model_index.json").exists()
    base = build_pipeline("builtin:tiny-sd1").unet.state_dict()
    trained = _unet_file(out / "final")
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000004"]  # keep = 1
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"
    for step in (2, 4):
        assert (out / "samples" / f"step-{step:06d}" / "grid.png").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1 and all(m["loss"] > 0 for m in metrics)
    assert any(m["prior"] > 0 for m in metrics)  # class images reach the prior term
    assert list((out / "logs").iterdir())  # TensorBoard events
    assert plan.logging.report is False and not (out / "report.html").exists()  # runspec's NO_REPORT


def test_lora_leaves_base_bit_identical_and_loads_in_diffusers(tmp_path):
    plan = make_plan(tmp_path, steps=3, extra='[adapter]\nkind = "lora"\nrank = 4\n')
    result = execute(plan, keep_models=True)
    unet = result.components.unet
    base = build_pipeline("builtin:tiny-sd1").unet.state_dict()
    lora_keys = [k for k in unet.state_dict() if "lora_" in k]
    assert lora_keys
    for name, tensor in unet.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name

    pipe = build_pipeline("builtin:tiny-sd1")
    pipe.load_lora_weights(result.final)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        ours = unet(sample, t, text).sample
        theirs = pipe.unet(sample, t, text).sample
        plain = build_pipeline("builtin:tiny-sd1").unet(sample, t, text).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, ours)


def test_text_encoder_freezes_at_its_stop_step(tmp_path):
    plan = make_plan(
        tmp_path,
        steps=4,
        extra="""
[train]
text_encoder = true
text_encoder_stop_step = 2

[checkpoints]
every = 1
keep = 0
""",
    )
    execute(plan)
    out = Path(plan.checkpoints.dir)
    states = {
        s: torch.load(out / "checkpoints" / f"step-{s:06d}" / "training_state.pt", weights_only=True)
        for s in (1, 2, 3, 4)
    }
    te = {
        s: {k: v for k, v in st["trainable"].items() if k.startswith("text_encoder.")}
        for s, st in states.items()
    }
    assert te[2] and any(not torch.equal(te[1][k], te[2][k]) for k in te[2])  # trains until step 2
    assert all(torch.equal(te[2][k], te[4][k]) for k in te[2])  # frozen after
    unet = {s: st["trainable"]["unet.conv_in.weight"] for s, st in states.items()}
    assert not torch.equal(unet[2], unet[4])  # the UNet goes on training


class _EncoderCalls:
    """Counts forward calls of the VAE encoder (a global module hook: observes, changes nothing)."""

    def __enter__(self):
        from diffusers.models.autoencoders.vae import Encoder

        self.calls = 0

        def hook(module, args, output):
            if isinstance(module, Encoder):
                self.calls += 1

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def test_second_run_hits_the_cache_and_never_encodes(tmp_path):
    spec = write_spec(tmp_path, steps=2)
    with _EncoderCalls() as first:
        execute(compile_spec(spec))
    assert first.calls > 0
    plan = compile_spec(spec, ["output.dir=out2"])
    assert plan.cache.latent_misses == 0 and plan.cache.latent_hits > 0
    with _EncoderCalls() as second:
        execute(plan)
    assert second.calls == 0


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    spec = write_spec(tmp_path, steps=1)
    execute(compile_spec(spec))
    entries = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    entries[0].write_bytes(b"not a tensor file")
    entries[1].write_bytes(entries[1].read_bytes()[:40])  # truncated
    with _EncoderCalls() as calls:
        execute(compile_spec(spec, ["output.dir=out2"]))
    assert calls.calls >= 1
    for entry in entries[:2]:
        assert load_file(str(entry))["mean"].ndim == 3


RESUME_SPEC = """
[loss]
noise_offset = 0.05

[ema]
enabled = true
decay = 0.9

[checkpoints]
every = 0
"""
RESUME_SET = ['schedule.lr_schedule="cosine"', "schedule.warmup_steps=2"]


def test_interrupted_then_resumed_run_is_bit_identical(tmp_path):
    spec = write_spec(tmp_path, steps=6, with_class=True, dataset_extra="flip = true", extra=RESUME_SPEC)
    whole = execute(compile_spec(spec, [*RESUME_SET, "output.dir=whole"]))
    plan = compile_spec(spec, [*RESUME_SET, "output.dir=parts"])
    first = execute(plan, stop_after=3)
    assert first.status == "interrupted" and first.steps == 3 and first.last_checkpoint
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 6
    assert first.losses + second.losses == whole.losses
    for sub in ("", "ema"):
        a, b = _unet_file(Path(whole.final) / sub), _unet_file(Path(second.final) / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema, live = _unet_file(Path(whole.final) / "ema"), _unet_file(Path(whole.final))
    assert any(not torch.equal(ema[k], live[k]) for k in live)


def test_non_finite_loss_stops_and_names_the_batch(tmp_path):
    plan = make_plan(tmp_path, steps=6, extra="[checkpoints]\nevery = 1\nkeep = 0\n")
    plan = compile_spec(tmp_path / "spec.toml", ["optimizer.lr=1e30", "optimizer.max_grad_norm=0"])
    with pytest.raises(RunError) as info:
        execute(plan)
    err = info.value
    assert "loss became" in err.message and "data/toy" in err.message
    assert err.where.endswith("spec.toml") is False and "--set" in err.where  # lr came from --set
    out = Path(plan.checkpoints.dir)
    assert not (out / "final").exists()
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert (out / "checkpoints" / latest / "training_state.pt").exists()


def test_output_of_another_plan_is_refused(tmp_path):
    spec = write_spec(tmp_path, steps=1)
    execute(compile_spec(spec))
    with pytest.raises(RunError) as info:
        execute(compile_spec(spec, ["optimizer.lr=5e-4"]))
    assert "overwrite" in info.value.message
    moved = execute(compile_spec(spec, ["optimizer.lr=5e-4"]), overwrite=True)
    assert moved.status == "finished"
    assert list(tmp_path.glob("out.old-*"))


def test_resume_refuses_a_checkpoint_saved_by_another_run(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    execute(compile_spec(spec, ["output.dir=a"]), stop_after=2)
    plan_b = compile_spec(spec, ["output.dir=b", "optimizer.lr=5e-4"])
    execute(plan_b, stop_after=1)
    # run.json vouches for folder b; the newest checkpoint in it was copied in from run a.
    b = tmp_path / "b" / "checkpoints"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", b / "step-000002")
    (b / "latest").write_text("step-000002\n")
    with pytest.raises(RunError) as info:
        execute(plan_b, resume=True)
    message = info.value.message
    assert f"checkpoint {b / 'step-000002'} was saved by another run" in message
    assert "optimizer.lr: 0.001 -> 0.0005" in message and "--overwrite" in message, message
    assert info.value.where.startswith("<--set>")  # where output.dir came from
    assert not (tmp_path / "b" / "final").exists()


def test_an_image_broken_after_planning_stops_the_run_naming_it_and_its_spec_line(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=8), ["cache.latents=false"])  # > one epoch: every image
    victim = Path(plan.datasets[0].images[0].path)
    victim.write_bytes(victim.read_bytes()[:50])  # truncated after `dbspec plan` looked at it
    with pytest.raises(RunError) as info:
        execute(plan)
    assert victim.name in info.value.message
    assert info.value.where.endswith("spec.toml:8:1")  # line 8: path = "data/toy"
    assert "--resume" in info.value.hint


def test_a_picture_replaced_after_planning_is_never_trained_on_from_the_latent_cache(tmp_path):
    spec = write_spec(tmp_path, steps=2)
    first, second = (compile_spec(spec, [f'output.dir="{name}"']) for name in ("first", "second"))
    assert execute(first).status == "finished"  # fills the latent cache with the planned pictures' latents
    victim, other = (Path(img.path) for img in second.datasets[0].images[:2])
    victim.write_bytes(other.read_bytes())  # a cache hit would never open the file again
    with pytest.raises(RunError) as info:
        execute(second)
    assert (
        victim.name in info.value.message and "content changed after the plan was made" in info.value.message
    )
    assert "dbspec plan" in info.value.message
