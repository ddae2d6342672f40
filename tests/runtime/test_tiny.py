"""The built-in tiny models: fast, deterministic, real diffusers pipelines that save and
load like real ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTokenizer

from dbspec.builtin import (
    BUILTIN_MODELS,
    TOKENIZER_MERGES,
    VOCAB_SIZE,
    builtin_model,
    is_builtin,
    tokenizer_vocab,
)
from dbspec.families import family_spec
from dbspec.runtime.tiny import MARKER_FILE, build_pipeline, materialize

NAMES = sorted(BUILTIN_MODELS)
UNET_NAMES = [
    name for name in NAMES if "cross_attention_dim" in builtin_model(name).unet
]  # SD3: a transformer
PROMPT = "a photo of ohwx dog"


def _module(pipe: DiffusionPipeline, component: str) -> torch.nn.Module:
    """A component by its registry name ("unet" is the plan's name of the denoiser: SD3's transformer)."""
    return getattr(pipe, "transformer" if component == "unet" and not hasattr(pipe, "unet") else component)


def _state(pipe: DiffusionPipeline, component: str) -> dict[str, torch.Tensor]:
    return _module(pipe, component).state_dict()


def _assert_same_weights(left: DiffusionPipeline, right: DiffusionPipeline, components: list[str]) -> None:
    for component in components:
        left_state, right_state = _state(left, component), _state(right, component)
        assert left_state.keys() == right_state.keys(), component
        for key, tensor in left_state.items():
            assert torch.equal(tensor, right_state[key]), f"{component}.{key}"


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builtin")
    return {name: materialize(name, root / name.removeprefix("builtin:")) for name in NAMES}


def test_registry_names_and_unknown_name() -> None:
    assert is_builtin("builtin:tiny-sd1") and is_builtin("builtin:nope")
    assert not is_builtin("runwayml/stable-diffusion-v1-5")
    assert builtin_model("builtin:tiny-sdxl").identity == "builtin:tiny-sdxl@v1"
    with pytest.raises(
        KeyError,
        match="builtin:tiny-sd1, builtin:tiny-sd2, builtin:tiny-sdxl, builtin:tiny-sdxl-refiner, "
        "builtin:tiny-sd3",
    ):
        builtin_model("builtin:tiny-sd9")


def test_merges_only_use_symbols_that_exist_before_them() -> None:
    vocab = tokenizer_vocab()
    assert len(vocab) == VOCAB_SIZE
    known = set(list(vocab)[: 2 * 256])
    for left, right in TOKENIZER_MERGES:
        assert left in known and right in known and left + right not in known, (left, right)
        known.add(left + right)


def test_registry_module_does_not_import_torch() -> None:
    code = "import sys, dbspec.builtin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_build_is_fast_deterministic_and_leaves_rng_alone(name: str) -> None:
    model = builtin_model(name)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    timings, pipes = [], []
    for _ in range(2):
        started = time.perf_counter()
        pipes.append(build_pipeline(name, seed=7))
        timings.append(time.perf_counter() - started)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert min(timings) < 1.0, timings
    _assert_same_weights(pipes[0], pipes[1], list(model.params))
    other_seed = build_pipeline(name, seed=8)
    first = next(name for name, _ in _module(pipes[0], "unet").named_parameters())
    assert not torch.equal(_state(other_seed, "unet")[first], _state(pipes[0], "unet")[first])


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_registry(name: str) -> None:
    model = builtin_model(name)
    pipe = build_pipeline(name)
    counted = {
        component: sum(p.numel() for p in _module(pipe, component).parameters()) for component in model.params
    }
    assert counted == model.params
    if "sample_size" in model.unet:  # Flux's transformer has no fixed size
        assert _module(pipe, "unet").config.sample_size * model.latent_downsample == model.resolution
    assert pipe.vae_scale_factor == model.latent_downsample
    assert pipe.vae.config.scaling_factor == model.vae_scaling_factor
    assert pipe.scheduler.config.get("prediction_type", "flow_matching") == model.prediction


@pytest.mark.parametrize("name", NAMES)
def test_materialize_round_trips_through_from_pretrained(name: str, materialized: dict[str, Path]) -> None:
    model = builtin_model(name)
    folder = materialized[name]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == model.pipeline_class
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert {key: marker[key] for key in ("identity", "seed")} == {"identity": model.identity, "seed": 0}
    assert set(marker["files"]) == {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER_FILE
    }
    assert list(folder.parent.glob(f".{folder.name}.*")) == []  # no staging leftovers
    clips = family_spec(model.family).clip_text_encoders  # the refiner's: tokenizer_2; Chroma has none
    for clip in clips:
        assert (folder / clip.tokenizer / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))

    loaded = DiffusionPipeline.from_pretrained(folder)
    assert type(loaded).__name__ == model.pipeline_class
    _assert_same_weights(build_pipeline(name), loaded, list(model.params))
    assert loaded.scheduler.config.get("prediction_type", "flow_matching") == model.prediction
    if (folder / "unet").is_dir():
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        assert unet.config.cross_attention_dim == model.unet["cross_attention_dim"]

    mtime = (folder / MARKER_FILE).stat().st_mtime_ns
    assert materialize(name, folder) == folder
    assert (folder / MARKER_FILE).stat().st_mtime_ns == mtime  # reused, not rewritten


def test_materialize_replaces_other_seed_but_never_a_foreign_folder(tmp_path: Path) -> None:
    folder = materialize("builtin:tiny-sd1", tmp_path / "model", seed=1)
    materialize("builtin:tiny-sd1", folder, seed=2)
    assert json.loads((folder / MARKER_FILE).read_text())["seed"] == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        materialize("builtin:tiny-sd1", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_config", "no_manifest"])
def test_a_damaged_built_in_folder_is_rebuilt(tmp_path: Path, damage: str) -> None:
    folder = materialize("builtin:tiny-sd1", tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    intact = weights.read_bytes()
    if damage == "truncate_weights":
        weights.write_bytes(intact[: len(intact) // 2])
    elif damage == "delete_config":
        (folder / "vae" / "config.json").unlink()
    else:  # written by a dbspec before manifests
        marker = json.loads((folder / MARKER_FILE).read_text())
        del marker["files"]
        (folder / MARKER_FILE).write_text(json.dumps(marker))
    assert materialize("builtin:tiny-sd1", folder) == folder
    assert weights.read_bytes() == intact and (folder / "vae" / "config.json").is_file()
    assert "files" in json.loads((folder / MARKER_FILE).read_text())
    DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize("name", NAMES)
def test_two_step_inference_from_the_saved_folder(name: str, materialized: dict[str, Path]) -> None:
    pipe = DiffusionPipeline.from_pretrained(materialized[name])
    pipe.set_progress_bar_config(disable=True)
    size = builtin_model(name).resolution
    generator = torch.Generator().manual_seed(0)
    if family_spec(builtin_model(name).family).refines_images:  # img2img (the refiner) refines an image
        source = Image.new("RGB", (size, size), (120, 60, 200))
        images = pipe(PROMPT, image=source, strength=1.0, num_inference_steps=2, generator=generator).images
    else:
        images = pipe(PROMPT, num_inference_steps=2, height=size, width=size, generator=generator).images
    assert images[0].size == (size, size)


@pytest.mark.parametrize("name", NAMES)
def test_tokenizers_cover_any_prompt(name: str, materialized: dict[str, Path]) -> None:
    pipe = DiffusionPipeline.from_pretrained(materialized[name])
    clips = [
        e
        for e in family_spec(builtin_model(name).family).text_encoders
        if e.tokenizer_class == "CLIPTokenizer"
    ]
    pairs = [(getattr(pipe, e.tokenizer), getattr(pipe, e.component)) for e in clips]
    for tokenizer, text_encoder in pairs:
        assert len(tokenizer) == VOCAB_SIZE == text_encoder.config.vocab_size
        assert tokenizer.model_max_length == 77
        for prompt in (PROMPT, "Café au lait, 100% — ohwx 🐕!"):
            ids = tokenizer(prompt).input_ids
            assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
            assert tokenizer.unk_token_id not in ids[1:-1]
        merged = tokenizer.convert_ids_to_tokens(tokenizer(PROMPT).input_ids)
        assert "photo</w>" in merged and "dog</w>" in merged
        padded = tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
        assert len(padded) == 77 and padded[-1] == tokenizer.pad_token_id


def test_vocab_and_merges_files_alone_tokenize_identically(
    materialized: dict[str, Path], tmp_path: Path
) -> None:
    # Readers without tokenizer.json support (older transformers, other tools) use vocab.json + merges.txt.
    saved = materialized["builtin:tiny-sd1"] / "tokenizer"
    bpe_only = tmp_path / "tokenizer"
    shutil.copytree(saved, bpe_only, ignore=shutil.ignore_patterns("tokenizer.json"))
    prompt = "Café au lait, 100% — ohwx 🐕!"
    from_bpe_files = CLIPTokenizer.from_pretrained(bpe_only)(prompt).input_ids
    assert from_bpe_files == CLIPTokenizer.from_pretrained(saved)(prompt).input_ids


def test_sdxl_second_tokenizer_pads_with_bang() -> None:
    pipe = build_pipeline("builtin:tiny-sdxl")
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer_vocab()["!"] == pipe.tokenizer_2.pad_token_id


def _conditioning(pipe: DiffusionPipeline, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    with torch.no_grad():
        if not hasattr(pipe, "text_encoder_2"):
            return pipe.encode_prompt(PROMPT, "cpu", batch, False)[0], None
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=batch, do_classifier_free_guidance=False
        )
    config = pipe.unet.config  # SDXL: 6 time ids; the refiner: 5 (its aesthetic score instead of target size)
    count = (
        config.projection_class_embeddings_input_dim - pooled.shape[-1]
    ) // config.addition_time_embed_dim
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0][:count]]).repeat(batch, 1)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


@pytest.mark.parametrize("name", UNET_NAMES)
def test_one_unet_training_step_changes_weights(name: str) -> None:
    torch.manual_seed(0)
    pipe = build_pipeline(name)
    unet = pipe.unet.train()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.sample() * pipe.vae.config.scaling_factor
    assert latents.shape == (2, 4, 8, 8)
    embeds, added = _conditioning(pipe, batch=2)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (2,))
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    prediction = unet(noisy, timesteps, embeds, added_cond_kwargs=added).sample
    loss = torch.nn.functional.mse_loss(prediction, noise)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [key for key, value in unet.state_dict().items() if not torch.equal(value, before[key])]
    assert len(changed) == len(before)  # every UNet tensor gets a gradient and moves


def test_tiny_sd3_t5_tokenizer_is_local_and_covers_any_prompt(materialized: dict[str, Path]) -> None:
    """SD3's T5 tokenizer is built without sentencepiece or the hub, saved as tokenizer.json and read back
    by T5TokenizerFast; unknown characters map to <unk>, every prompt ends with </s>."""
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(materialized["builtin:tiny-sd3"], subfolder="tokenizer_3")
    ids = tokenizer(["a photo of sks dog", "émoji ✓ 東京"], padding="max_length", max_length=24).input_ids
    assert all(len(row) == 24 and 1 in row for row in ids)
    assert tokenizer.unk_token_id in ids[1] and tokenizer.pad_token_id == 0
