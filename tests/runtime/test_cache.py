"""dbspec.runtime.cache: entries round-trip, damaged entries are rebuilt, writes are atomic,
only misses encode."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from dbspec.plan.model import DatasetPlan, ImagePlan
from dbspec.runtime.cache import CacheWriteError, TensorCache, ensure_latents, ensure_text, tensor_checksum
from dbspec.runtime.data import load_pixels
from tests.runtime.runspec import file_size_limit

KEY = "ab" + "0" * 38
OTHER = "cd" + "1" * 38


def entry(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "mean": torch.randn(4, 8, 8, generator=generator),
        "std": torch.rand(4, 8, 8, generator=generator),
    }


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_get_round_trip_with_layout_and_metadata(tmp_path):
    cache = TensorCache(tmp_path, "latents")
    stored = entry()
    path = cache.put(KEY, {"mean": stored["mean"].half(), "std": stored["std"]}, {"image": "dog.png"})
    assert path == cache.path(KEY) == tmp_path / "latents" / "ab" / f"{KEY}.safetensors"
    got = cache.get(KEY)
    assert got is not None and set(got) == {"mean", "std"}
    assert got["mean"].dtype == torch.float32 and torch.equal(got["mean"], stored["mean"].half().float())
    assert torch.equal(got["std"], stored["std"])
    with safetensors.safe_open(path, framework="pt") as handle:
        assert handle.metadata() == {
            "key": KEY,
            "format": "latent-v1",
            "image": "dog.png",
            "sha256": tensor_checksum(got),
        }
    assert cache.get(OTHER) is None


def test_a_row_of_a_batch_is_stored_without_the_rest(tmp_path):
    cache = TensorCache(tmp_path, "text")
    batch = torch.randn(8, 77, 16)
    cache.put(KEY, {"prompt_embeds": batch[3]})
    assert torch.equal(cache.get(KEY)["prompt_embeds"], batch[3])
    assert cache.path(KEY).stat().st_size < batch[3].numel() * 4 + 1024


def damage(cache: TensorCache, how: str) -> None:
    path = cache.path(KEY)
    if how == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "wrong_key":  # another entry's file under this name
        cache.put(OTHER, entry(1))
        cache.path(OTHER).replace(path)
    elif how == "wrong_format":
        safetensors.torch.save_file(entry(), str(path), metadata={"key": KEY, "format": "latent-v0"})
    elif how == "missing_tensor":
        safetensors.torch.save_file(
            {"mean": entry()["mean"]}, str(path), metadata={"key": KEY, "format": "latent-v1"}
        )
    elif how == "nan":
        bad = entry()
        bad["std"][0, 0, 0] = float("nan")
        safetensors.torch.save_file(bad, str(path), metadata={"key": KEY, "format": "latent-v1"})
    elif how == "bit_flip":  # still a valid safetensors file with finite values: only the checksum tells
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01  # a low mantissa bit of the last float
        path.write_bytes(bytes(data))
    elif how == "no_checksum":  # written by an older dbspec: not trusted, rebuilt once
        safetensors.torch.save_file(entry(), str(path), metadata={"key": KEY, "format": "latent-v1"})
    elif how == "inf":
        bad = entry()
        bad["mean"][1, 2, 3] = float("inf")
        safetensors.torch.save_file(bad, str(path), metadata={"key": KEY, "format": "latent-v1"})


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "truncated",
        "empty",
        "wrong_key",
        "wrong_format",
        "missing_tensor",
        "nan",
        "inf",
        "bit_flip",
        "no_checksum",
    ],
)
def test_damaged_entries_read_as_misses_and_are_deleted(tmp_path, caplog, how):
    cache = TensorCache(tmp_path, "latents")
    cache.put(KEY, entry())
    damage(cache, how)
    with caplog.at_level(logging.WARNING, logger="dbspec.runtime.cache"):
        assert cache.get(KEY) is None
    assert not cache.path(KEY).exists()
    assert str(cache.path(KEY)) in caplog.text
    cache.put(KEY, entry())  # rebuilt
    assert torch.equal(cache.get(KEY)["mean"], entry()["mean"])


def test_put_refuses_non_finite_and_incomplete_entries(tmp_path):
    cache = TensorCache(tmp_path, "latents")
    bad = entry()
    bad["mean"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.put(KEY, bad)
    with pytest.raises(ValueError, match="lacks tensors"):
        cache.put(KEY, {"mean": entry()["mean"]})
    with pytest.raises(ValueError, match="set by the cache"):
        cache.put(KEY, entry(), {"key": "other"})
    assert files_under(tmp_path) == []


def test_writes_leave_no_temp_files_even_when_the_rename_fails(tmp_path):
    cache = TensorCache(tmp_path, "latents")
    for k in range(5):
        cache.put(f"{k:02d}" + "f" * 38, entry(k))
    cache.put(KEY, entry())
    cache.put(KEY, entry(1))  # overwrite in place
    assert all(name.endswith(".safetensors") and "/." not in name for name in files_under(tmp_path))
    assert len(files_under(tmp_path)) == 6
    cache.path(OTHER).mkdir(
        parents=True
    )  # a folder in the way: os.replace fails after the temp file is written
    with pytest.raises(CacheWriteError, match=str(cache.path(OTHER).parent)):
        cache.put(OTHER, entry())
    assert len(files_under(tmp_path)) == 6


def test_required_tensors_are_configurable_for_sdxl_text(tmp_path):
    cache = TensorCache(tmp_path, "text", required=("prompt_embeds", "pooled_prompt_embeds"))
    cache.put(KEY, {"prompt_embeds": torch.zeros(77, 8), "pooled_prompt_embeds": torch.zeros(8)})
    assert cache.get(KEY) is not None
    sd1_cache = TensorCache(tmp_path, "text")
    sd1_cache.put(OTHER, {"prompt_embeds": torch.zeros(77, 8)})
    assert cache.get(OTHER) is None  # lacks the pooled embeddings SDXL needs


# ---- filling the cache ------------------------------------------------------------------------------------


def tiny_vae() -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        ).eval()


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def latent_datasets(tmp_path: Path) -> tuple[DatasetPlan, ...]:
    """Flipping instance set: 3 square + 1 wide image (8 keys); class set: 2 tall images (2 keys)."""

    def plan(name: str, size, bucket, keys: int, k: int) -> ImagePlan:
        path = write_image(tmp_path / name, size, k)
        latent_keys = tuple(f"{k:02d}{flip}" + "a" * 37 for flip in range(keys))
        return ImagePlan(
            path=str(path),
            rel=name,
            sha=f"{k}",
            size=size,
            orientation=1,
            caption="x",
            repeats=1,
            bucket=bucket,
            resized=size,
            crop=((size[0] - bucket[0]) // 2, (size[1] - bucket[1]) // 2),
            latent_keys=latent_keys,
        )

    instance = [plan(f"sq{k}.png", (36, 32), (32, 32), 2, k) for k in range(3)]
    instance.append(plan("wide.png", (48, 32), (48, 32), 2, 3))
    klass = [plan(f"tall{k}.png", (32, 48), (32, 48), 1, 4 + k) for k in range(2)]
    return (
        DatasetPlan(
            name="i",
            role="instance",
            path=str(tmp_path),
            resolution=32,
            crop="center",
            flip=True,
            mask_source="none",
            images=tuple(instance),
        ),
        DatasetPlan(
            name="c",
            role="class",
            path=str(tmp_path),
            resolution=32,
            crop="center",
            flip=False,
            mask_source="none",
            images=tuple(klass),
        ),
    )


def test_ensure_latents_encodes_only_misses(tmp_path):
    vae, calls = tiny_vae(), []

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(tuple(pixels.shape))
        dist = vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    datasets = latent_datasets(tmp_path)
    cache = TensorCache(tmp_path / "cache", "latents")
    progress = Progress(console=Console(file=io.StringIO()))
    with progress:
        counts = ensure_latents(cache, datasets, encode, batch_size=4, progress=progress)
    assert (counts.hits, counts.encoded) == (0, 10)
    assert sorted(calls) == sorted([(4, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 48), (2, 3, 48, 32)])
    assert progress.tasks[0].completed == 10 and progress.tasks[0].total == 10

    square = datasets[0].images[0]
    flipped = cache.get(square.latent_keys[1])
    assert flipped["mean"].shape == (4, 16, 16) and (flipped["std"] > 0).all()
    with torch.no_grad():
        direct = vae.encode(load_pixels(square, flip=True)[None]).latent_dist
    torch.testing.assert_close(flipped["mean"], direct.mean[0], atol=1e-5, rtol=1e-5)

    calls.clear()
    assert ensure_latents(cache, datasets, encode, batch_size=4) == type(counts)(hits=10, encoded=0)
    assert calls == []
    cache.path(square.latent_keys[0]).write_bytes(b"corrupt")
    assert ensure_latents(cache, datasets, encode, batch_size=4) == type(counts)(hits=9, encoded=1)
    assert calls == [(1, 3, 32, 32)]


def test_a_re_encoded_latent_is_bit_identical_to_the_first(tmp_path):
    # A kill during caching makes the resumed run encode the rest; an entry must not depend on
    # its batch companions.
    vae = tiny_vae()

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    datasets = latent_datasets(tmp_path)
    cache = TensorCache(tmp_path / "cache", "latents")
    with torch.no_grad():
        ensure_latents(cache, datasets, encode)
    keys = [key for d in datasets for img in d.images for key in img.latent_keys]
    first = {
        key: tensor_checksum(cache.get(key)) for key in keys
    }  # the tensors' bytes (header order may vary)
    for key in keys[1::2]:
        cache.path(key).unlink()
    with torch.no_grad():
        assert ensure_latents(cache, datasets, encode).encoded == len(keys[1::2])
    assert {key: tensor_checksum(cache.get(key)) for key in keys} == first


def test_ensure_text_encodes_each_distinct_caption_once(tmp_path):
    captions = ["a dog", "a cat", "a dog", "a bird", "a cat"]
    images = tuple(
        ImagePlan(
            path=f"/{k}.png",
            rel=f"{k}.png",
            sha=str(k),
            size=(8, 8),
            orientation=1,
            caption=c,
            repeats=1,
            bucket=(8, 8),
            resized=(8, 8),
            crop=(0, 0),
            text_key=f"{c[2:]:0<40}",
        )
        for k, c in enumerate(captions)
    )
    datasets = (
        DatasetPlan(
            name="d",
            role="instance",
            path="/",
            resolution=8,
            crop="center",
            flip=False,
            mask_source="none",
            images=images,
        ),
    )
    calls: list[list[str]] = []

    def encode(batch: list[str]) -> dict[str, torch.Tensor]:
        calls.append(batch)
        lengths = torch.tensor([float(len(c)) for c in batch])
        return {
            "prompt_embeds": lengths[:, None, None].expand(-1, 77, 8),
            "pooled_prompt_embeds": lengths[:, None],
        }

    cache = TensorCache(tmp_path, "text", required=("prompt_embeds", "pooled_prompt_embeds"))
    first = ensure_text(cache, datasets, encode, batch_size=2)
    assert (first.hits, first.encoded) == (0, 3)
    assert calls == [["a dog", "a cat"], ["a bird"]]
    stored = cache.get(images[3].text_key)
    assert stored["prompt_embeds"].shape == (77, 8) and stored["pooled_prompt_embeds"].tolist() == [6.0]
    calls.clear()
    second = ensure_text(cache, datasets, encode, batch_size=2)
    assert (second.hits, second.encoded) == (3, 0) and calls == []


def test_an_encoder_returning_the_wrong_batch_is_reported(tmp_path):
    datasets = latent_datasets(tmp_path)
    cache = TensorCache(tmp_path / "cache", "latents")
    with pytest.raises(ValueError, match="batch of"):
        ensure_latents(cache, datasets, lambda x: (x[:1], x[:1]), batch_size=4)


def test_a_full_disk_names_the_cache_folder_and_leaves_no_partial_entry(tmp_path):
    cache = TensorCache(tmp_path, "latents")
    cache.put(KEY, entry())
    with file_size_limit(1024), pytest.raises(CacheWriteError) as info:
        cache.put(OTHER, entry(1))
    assert str(cache.path(OTHER).parent) in str(info.value) and "free disk space" in str(info.value)
    assert files_under(tmp_path) == [str(cache.path(KEY).relative_to(tmp_path))]
    assert torch.equal(cache.get(KEY)["mean"], entry()["mean"])  # what was there is intact
