"""The run's options, each through the real loop on a tiny model: model sources, optimizers, precision,
class-image generation, masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dbspec.runtime.execute import RunError, execute
from dbspec.runtime.models import load_components
from dbspec.runtime.tiny import materialize
from tests.runtime.runspec import TEXT_ENCODER_LORA, compile_spec, make_plan, write_spec


def _fake_hub_cache(root: Path, repo: str) -> Path:
    """The Hugging Face cache layout: models--org--name/refs/main -> snapshots/<commit>/ (a
    diffusers folder)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    materialize("builtin:tiny-sd1", repo_dir / "snapshots" / commit)
    return repo_dir / "snapshots" / commit


def test_hub_id_loads_from_the_local_cache_and_trains_in_bf16_autocast_on_the_cpu(tmp_path, monkeypatch):
    """Two options on one tiny run: a hub id read from the local cache, and bf16 autocast on the CPU."""
    snapshot = _fake_hub_cache(tmp_path / "hub", "acme/tiny-sd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    # The tiny model's dimensions match no real family, so the spec states it (as a user
    # would for odd models).
    spec = write_spec(tmp_path, base="acme/tiny-sd", steps=1)
    plan = compile_spec(spec, ['model.family="sd1"', 'precision.mixed="bf16"'])
    assert plan.model.source == "hub" and plan.model.resolved and plan.model.path == str(snapshot)
    assert plan.model.family == "sd1" and plan.model.params["unet"] > 0
    assert plan.precision.mixed == "bf16"
    assert execute(plan).status == "finished"


def test_missing_hub_model_fails_with_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = compile_spec(write_spec(tmp_path, base="acme/not-here", steps=1), ['model.family="sd1"'])
    assert not plan.model.resolved
    with pytest.raises(RunError) as info:
        execute(plan)
    assert "huggingface-cli download acme/not-here" in info.value.message
    assert "spec.toml" in info.value.where


@pytest.mark.parametrize("kind", ["sgd", "adafactor", "prodigy", "lion"])
def test_other_optimizers_train(tmp_path, kind):
    spec = write_spec(tmp_path, steps=2)
    plan = compile_spec(spec, [f'optimizer.kind="{kind}"', 'schedule.lr_schedule="linear"'])
    result = execute(plan)
    assert result.status == "finished" and len(result.losses) == 2


def test_lora_with_text_encoder_and_gradient_checkpointing(tmp_path):
    plan = make_plan(
        tmp_path, steps=2, extra=TEXT_ENCODER_LORA + "\n[precision]\ngradient_checkpointing = true\n"
    )
    result = execute(plan)
    assert result.status == "finished"
    assert (Path(result.final) / "pytorch_lora_weights.safetensors").exists()
    assert (Path(result.final) / "plan.json").exists()


def test_missing_class_images_are_generated_then_trained_on(tmp_path):
    spec = write_spec(tmp_path, steps=2, with_class=True)
    text = spec.read_text().replace(
        'path = "data/class-toy"',
        'path = "generated"\ngenerate = 2\n'
        'generate_scheduler = "euler"\ngenerate_steps = 3\ngenerate_batch = 1',
    )
    spec.write_text(text)
    plan = compile_spec(spec, ["output.dir=parts"])
    gen = next(d.generate for d in plan.datasets if d.role == "class")
    assert gen is not None and gen.count == 2
    assert (gen.scheduler, gen.steps, gen.guidance, gen.batch_size) == ("euler", 3, 7.5, 1)
    first = execute(plan, stop_after=1)  # interrupted after the class images were made
    assert first.status == "interrupted"
    # `dbspec run SPEC --resume` plans the spec again: the images now exist, the run is the same one
    again = compile_spec(spec, ["output.dir=parts"])
    assert next(d.generate for d in again.datasets if d.role == "class").count == 0
    resumed = execute(again, resume=True)
    assert resumed.status == "finished"
    whole = execute(compile_spec(spec, ["output.dir=whole"]))  # uninterrupted, on the same class images
    assert first.losses + resumed.losses == whole.losses
    ours, theirs = (_final_weights(Path(result.final)) for result in (whole, resumed))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    folder = tmp_path / "generated"
    manifest = json.loads((folder / ".dbspec-generated.json").read_text())
    assert sorted(manifest["files"]) == sorted(f"class-{s}.png" for s in gen.seeds)
    assert (manifest["scheduler"], manifest["steps"], manifest["guidance"]) == (
        "euler",
        3,
        7.5,
    )  # the plan's sampler
    assert all(Image.open(folder / f).size == (64, 64) for f in manifest["files"])
    replanned = compile_spec(spec, ["output.dir=out2"])
    assert (
        next(d.generate for d in replanned.datasets if d.role == "class").count == 0
    )  # reused, not regenerated
    other = compile_spec(spec, ["output.dir=out3", 'datasets[1].prompt="a photo of a robot"'])
    assert next(d.generate for d in other.datasets if d.role == "class").count == 2  # prompt changed
    more_steps = compile_spec(spec, ["output.dir=out4", "datasets[1].generate_steps=4"])
    assert next(d.generate for d in more_steps.datasets if d.role == "class").count == 2  # sampler changed


def _final_weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return {
        f"{file.name}:{key}": value
        for file in sorted(final.rglob("*.safetensors"))
        for key, value in load_file(str(file)).items()
    }


def test_masked_dataset_trains(tmp_path):
    spec = write_spec(tmp_path, steps=2, dataset_extra='masks = "masks"')
    masks = tmp_path / "masks"
    masks.mkdir()
    for img in sorted((tmp_path / "data" / "toy").iterdir()):
        size = Image.open(img).size
        mask = Image.new("L", size, 0)
        mask.paste(255, (0, 0, size[0] // 2, size[1]))
        mask.save(masks / img.name)
    plan = compile_spec(spec)
    assert plan.loss.masked and all(i.mask for i in plan.datasets[0].images)
    assert execute(plan).status == "finished"


def test_int8_base_lora_run(tmp_path):
    from dbspec.runtime.quantize import is_quantized

    plan = make_plan(
        tmp_path,
        steps=3,
        extra="""
[adapter]
kind = "lora"
rank = 4

[precision]
quantize_denoiser = "int8"
""",
    )
    assert next(c for c in plan.precision.components if c.name == "unet").quantized == "int8"
    result = execute(plan, keep_models=True)
    assert is_quantized(result.components.unet)
    assert (Path(result.final) / "pytorch_lora_weights.safetensors").exists()


def test_exports_are_written_with_the_final_weights(tmp_path):
    import diffusers
    import torch
    from safetensors import safe_open

    full = make_plan(tmp_path / "full", steps=1, extra='[checkpoints]\nexports = ["single_file"]\n')
    result = execute(full)
    single = Path(result.final) / "dbspec.safetensors"
    with safe_open(str(single), "pt") as f:
        assert f.metadata()["dbspec.base_model"] == "builtin:tiny-sd1"
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(single), config=full.model.path)
    trained = diffusers.UNet2DConditionModel.from_pretrained(result.final, subfolder="unet")
    for (name, a), b in zip(trained.state_dict().items(), pipe.unet.state_dict().values()):
        assert torch.equal(a, b), name
    # a LoRA run's kohya_lora export, written with its final weights: test_kohya_outputs.py's
    # test_kohya_lora_pickle_is_the_bare_state_dict_of_the_safetensors_export


def test_replacement_vae_is_loaded_and_keys_the_latent_cache(tmp_path):
    """[model] vae: a separate VAE (e.g. SDXL's fp16-fixed one) encodes latents; the cache keys follow it."""
    from dbspec.runtime.tiny import build_pipeline

    vae_folder = tmp_path / "my-vae"
    vae = build_pipeline("builtin:tiny-sd1", seed=7).vae  # other weights than the base model's own VAE
    vae.save_pretrained(vae_folder / "vae")
    base_plan = make_plan(tmp_path, steps=1)
    plan = compile_spec(tmp_path / "spec.toml", [f'model.vae="{vae_folder}"', "output.dir=out2"])
    assert plan.model.vae == str(vae_folder) and plan.model.vae_identity.startswith("dir:")
    assert not set(base_plan.datasets[0].images[0].latent_keys) & set(plan.datasets[0].images[0].latent_keys)
    result = execute(plan, keep_models=True)
    import torch

    loaded = result.components.vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in vae.state_dict().items())


def test_single_file_base_trains_offline_with_local_configs(tmp_path):
    """A .safetensors checkpoint in the original SD layout (as A1111 uses), with `model.config` naming a local
    diffusers folder for its configs, as an offline user would."""
    from dbspec.runtime.exports import export_single_file
    from dbspec.runtime.tiny import build_pipeline

    configs = materialize("builtin:tiny-sd1", tmp_path / "configs")
    pipe = build_pipeline("builtin:tiny-sd1", seed=3)
    checkpoint = tmp_path / "model.safetensors"
    export_single_file(
        checkpoint,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=[pipe.text_encoder],
        family="sd1",
        dtype="fp32",
        metadata={},
    )
    spec = write_spec(tmp_path, base="model.safetensors", steps=1)
    plan = compile_spec(spec, ['model.family="sd1"', f'model.config="{configs}"'])
    assert plan.model.source == "single_file" and plan.model.config == str(configs)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    import torch

    loaded = result.components.vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in pipe.vae.state_dict().items())


class TrainingNote:
    """A non-tensor object inside a .ckpt, as old training scripts stored them."""

    def __init__(self, text: str):
        self.text = text


def _ckpt_base(tmp_path, extra_object=None) -> Path:
    import torch
    from safetensors.torch import load_file

    from dbspec.runtime.exports import export_single_file
    from dbspec.runtime.tiny import build_pipeline

    pipe = build_pipeline("builtin:tiny-sd1", seed=5)
    single = tmp_path / "tmp.safetensors"
    export_single_file(
        single,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=[pipe.text_encoder],
        family="sd1",
        dtype="fp32",
        metadata={},
    )
    payload = {"state_dict": load_file(str(single)), "global_step": 1000}
    if extra_object is not None:
        payload["note"] = extra_object
    torch.save(payload, tmp_path / "model.ckpt")
    single.unlink()
    return tmp_path / "model.ckpt"


def test_ckpt_base_loads_weights_only_and_refuses_objects_unless_allowed(tmp_path):
    configs = materialize("builtin:tiny-sd1", tmp_path / "configs")
    _ckpt_base(tmp_path)
    spec = write_spec(tmp_path, base="model.ckpt", steps=1)
    overrides = ['model.family="sd1"', 'model.prediction="epsilon"', f'model.config="{configs}"']
    planned = compile_spec(spec, overrides)
    assert planned.model.source == "ckpt" and any("DBS311" in w for w in planned.warnings)
    # tensors only: weights_only=True reads it (a run from a .ckpt base trains: `allowed` below)
    assert load_components(planned).unet is not None

    other = tmp_path / "other"
    other.mkdir()
    _ckpt_base(other, TrainingNote("made with an old script"))
    spec = write_spec(other, base="model.ckpt", steps=1)
    with pytest.raises(RunError) as info:
        execute(compile_spec(spec, overrides))
    assert "allow_pickle" in info.value.message
    allowed = compile_spec(spec, [*overrides, "model.allow_pickle=true", "output.dir=out2"])
    assert execute(allowed).status == "finished"
