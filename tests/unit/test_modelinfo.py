"""Model facts from diffusers folders, single-file checkpoints and the HF cache, with
hand-written safetensors.

Fixture weights are sparse files: the header is real, the data is zeros that cost no disk, so realistic
shapes (a 49408 x 768 token embedding) stay cheap.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbspec.compiler.modelinfo import ModelFacts, ModelFileError, hub_cache_dir, inspect_model
from dbspec.compiler.safetensors_header import TensorInfo, read_safetensors, read_safetensors_header

ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}
Tensors = dict  # name -> (dtype, shape)


def write_safetensors(path: Path, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * ITEM_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)  # sparse zeros
    return path


def write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


# Realistic keys and shapes, a handful per component. Counts are written out, not recomputed.
SD1_UNET = {
    "conv_in.weight": ("F32", (320, 4, 3, 3)),  # 11520
    "conv_in.bias": ("F32", (320,)),  # 320
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": ("F32", (320, 768)),  # 245760
    "conv_out.weight": ("F32", (4, 320, 3, 3)),  # 11520
}
SD1_UNET_PARAMS = 269120
CLIP_L = {
    "text_model.embeddings.token_embedding.weight": ("F32", (49408, 768)),  # 37945344
    "text_model.embeddings.position_embedding.weight": ("F32", (77, 768)),  # 59136
    "text_model.embeddings.position_ids": ("I64", (1, 77)),  # a buffer, not a parameter
    "text_model.final_layer_norm.weight": ("F32", (768,)),  # 768
}
CLIP_L_PARAMS = 38005248
VAE = {
    "encoder.conv_in.weight": ("F32", (128, 3, 3, 3)),  # 3456
    "decoder.conv_out.weight": ("F32", (3, 128, 3, 3)),  # 3456
    "quant_conv.weight": ("F32", (8, 8, 1, 1)),  # 64
}
VAE_PARAMS = 6976


def as_dtype(tensors: Tensors, dtype: str) -> Tensors:
    return {n: (dtype if d.startswith(("F", "BF")) else d, s) for n, (d, s) in tensors.items()}


def prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + n: v for n, v in tensors.items()}


def pipeline_folder(
    root: Path, pipeline: str, components: list[str], unet_config: dict, scheduler: dict
) -> Path:
    index = {
        "_class_name": pipeline,
        "_diffusers_version": "0.30.0",
        "scheduler": ["diffusers", "PNDMScheduler"],
    }
    index |= {c: ["diffusers", "Whatever"] for c in components}
    index |= {"safety_checker": [None, None], "tokenizer": ["transformers", "CLIPTokenizer"]}
    write_json(root / "model_index.json", index)
    write_json(
        root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "in_channels": 4} | unet_config
    )
    write_json(root / "scheduler" / "scheduler_config.json", {"_class_name": "PNDMScheduler"} | scheduler)
    for c in components[1:]:
        write_json(root / c / "config.json", {"_class_name": c})
    return root


def sd1_folder(root: Path) -> Path:
    pipeline_folder(
        root, "StableDiffusionPipeline", ["unet", "text_encoder", "vae"], {"cross_attention_dim": 768}, {}
    )
    write_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors", SD1_UNET)
    write_safetensors(root / "text_encoder" / "model.safetensors", CLIP_L)
    write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", VAE)
    return root


def test_diffusers_sd1_folder_relative_to_spec_dir(tmp_path):
    sd1_folder(tmp_path / "models" / "sd15")
    facts = inspect_model("models/sd15", tmp_path)
    assert (facts.source, facts.family, facts.prediction, facts.resolved) == (
        "diffusers",
        "sd1",
        "epsilon",
        True,
    )
    assert facts.path == str(tmp_path / "models" / "sd15")
    assert facts.params == {"unet": SD1_UNET_PARAMS, "text_encoder": CLIP_L_PARAMS, "vae": VAE_PARAMS}
    assert facts.dtypes == {"unet": "F32", "text_encoder": "F32", "vae": "F32"}
    assert facts.variant == "" and facts.notes == ()
    assert facts.identity.startswith("sha256:") and set(facts.component_ids) == {
        "unet",
        "text_encoder",
        "vae",
    }


def test_diffusers_sd2_v_prediction_fp16_variant_and_pickled_vae(tmp_path):
    root = pipeline_folder(
        tmp_path / "sd21", "StableDiffusionPipeline", ["unet", "text_encoder", "vae"],
        {"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"},
    )  # fmt: skip
    unet = {
        **SD1_UNET,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": ("F32", (320, 1024)),
    }
    write_safetensors(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", as_dtype(unet, "F16"))
    write_safetensors(root / "text_encoder" / "model.fp16.safetensors", as_dtype(CLIP_L, "F16"))
    (root / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickle, never opened")
    facts = inspect_model(str(root), tmp_path / "elsewhere")
    assert (facts.family, facts.prediction, facts.variant) == ("sd2", "v_prediction", "fp16")
    assert facts.params == {"unet": 11520 + 320 + 327680 + 11520, "text_encoder": CLIP_L_PARAMS}
    assert facts.dtypes == {"unet": "F16", "text_encoder": "F16"}
    assert "vae" in facts.component_ids
    assert any(n.startswith("vae: weights are pickled .bin") for n in facts.notes)


def test_diffusers_sdxl_two_text_encoders_and_sharded_unet(tmp_path):
    root = pipeline_folder(
        tmp_path / "sdxl", "StableDiffusionXLPipeline", ["unet", "text_encoder", "text_encoder_2", "vae"],
        {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, {"prediction_type": "epsilon"},
    )  # fmt: skip
    shard_1 = {
        "conv_in.weight": ("F16", (320, 4, 3, 3)),
        "add_embedding.linear_1.weight": ("F16", (1280, 2816)),
    }
    shard_2 = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": ("F16", (640, 2048))}
    name_1, name_2 = (f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2))
    write_safetensors(root / "unet" / name_1, shard_1)
    write_safetensors(root / "unet" / name_2, shard_2)
    weight_map = {n: name_1 for n in shard_1} | {n: name_2 for n in shard_2}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    write_json(root / "unet" / "diffusion_pytorch_model.safetensors.index.json", index)
    write_safetensors(root / "text_encoder" / "model.safetensors", as_dtype(CLIP_L, "F16"))
    bigg = {
        "text_model.embeddings.token_embedding.weight": ("F16", (49408, 1280)),  # 63242240
        "text_model.encoder.layers.31.mlp.fc2.bias": ("F16", (1280,)),  # 1280
        "text_projection.weight": ("F16", (1280, 1280)),  # 1638400
    }
    write_safetensors(root / "text_encoder_2" / "model.safetensors", bigg)
    write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", VAE)
    facts = inspect_model(str(root), tmp_path)
    assert (facts.family, facts.prediction) == ("sdxl", "epsilon")
    assert facts.params == {
        "unet": 11520 + 3604480 + 1310720,
        "text_encoder": CLIP_L_PARAMS,
        "text_encoder_2": 64881920,
        "vae": VAE_PARAMS,
    }
    assert facts.dtypes == {"unet": "F16", "text_encoder": "F16", "text_encoder_2": "F16", "vae": "F32"}


def test_diffusers_refiner_is_detected_from_its_unet_config(tmp_path):
    # The refiner's UNet: context 1280 (OpenCLIP bigG alone) with text_time embeddings (5 time ids x 256 +
    # 1280 pooled = 2560 projection inputs); its model_index declares no first text encoder.
    config = {
        "cross_attention_dim": 1280,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2560,
    }
    root = pipeline_folder(tmp_path / "m", "StableDiffusionXLImg2ImgPipeline", ["unet"], config, {})
    facts = inspect_model(str(root), tmp_path)
    assert (facts.family, facts.prediction) == ("sdxl_refiner", "epsilon"), facts.notes


def test_diffusers_unknown_unet_and_missing_scheduler_say_so(tmp_path):
    root = pipeline_folder(tmp_path / "m", "StableDiffusionXLImg2ImgPipeline", ["unet"],
                           {"cross_attention_dim": 1536, "addition_embed_type": "text_time"}, {})  # fmt: skip
    (root / "scheduler" / "scheduler_config.json").unlink()
    write_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors", SD1_UNET)
    facts = inspect_model(str(root), tmp_path)
    assert (facts.family, facts.prediction) == ("unknown", "unknown")
    assert any("cross_attention_dim 1536" in n and "[model] family" in n for n in facts.notes)
    assert any("[model] prediction" in n for n in facts.notes)


def test_identity_is_stable_and_tracks_each_component(tmp_path):
    root = sd1_folder(tmp_path / "sd15")
    first, again = inspect_model(str(root), tmp_path), inspect_model(str(root), tmp_path)
    assert first.identity == again.identity and first.component_ids == again.component_ids
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    stat = unet_file.stat()
    os.utime(unet_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = inspect_model(str(root), tmp_path)
    assert changed.identity != first.identity
    assert changed.component_ids["unet"] != first.component_ids["unet"]
    assert changed.component_ids["vae"] == first.component_ids["vae"]  # VAE latent caches stay valid


# --- single-file checkpoints ---------------------------------------------------------------------------

BUFFERS = {"alphas_cumprod": ("F32", (1000,)), "model_ema.num_updates": ("I32", ())}
LDM_UNET = {
    "model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),  # 11520
    "model.diffusion_model.time_embed.0.weight": ("F16", (1280, 320)),  # 409600
    "model.diffusion_model.out.2.weight": ("F16", (4, 320, 3, 3)),  # 11520
}
LDM_UNET_PARAMS = 432640
LDM_VAE = prefixed("first_stage_model.", as_dtype(VAE, "F16"))


def sd1_single_file(path: Path, metadata: dict | None = None) -> Path:
    tensors = {
        **LDM_UNET,
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F16", (320, 768)),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": ("F16", (320, 640, 1, 1)),
        **prefixed("cond_stage_model.transformer.", as_dtype(CLIP_L, "F16")),
        **LDM_VAE, **BUFFERS,
    }  # fmt: skip
    return write_safetensors(path, tensors, metadata)


def sd2_single_file(path: Path, metadata: dict | None = None) -> Path:
    open_clip_h = {
        "cond_stage_model.model.token_embedding.weight": ("F16", (49408, 1024)),  # 50593792
        "cond_stage_model.model.positional_embedding": ("F16", (77, 1024)),  # 78848
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (
            "F16",
            (3072, 1024),
        ),  # 3145728
        "cond_stage_model.model.logit_scale": ("F16", ()),  # 1
    }
    unet = {
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": ("F16", (320, 1024))
    }
    return write_safetensors(path, {**LDM_UNET, **unet, **open_clip_h, **LDM_VAE, **BUFFERS}, metadata)


def test_single_file_sd1(tmp_path):
    sd1_single_file(tmp_path / "sd15.safetensors")
    facts = inspect_model("sd15.safetensors", tmp_path)
    assert (facts.source, facts.family, facts.prediction) == ("single_file", "sd1", "epsilon")
    assert facts.params == {
        "unet": LDM_UNET_PARAMS + 245760 + 204800,
        "text_encoder": CLIP_L_PARAMS,
        "vae": VAE_PARAMS,
    }
    assert facts.dtypes == {"unet": "F16", "text_encoder": "F16", "vae": "F16"}
    assert set(facts.component_ids) == {"unet", "text_encoder", "vae"} and facts.notes == ()


def test_single_file_sd2_prediction_unknown_without_hints(tmp_path):
    facts = inspect_model(str(sd2_single_file(tmp_path / "sd21.safetensors")), tmp_path)
    assert (facts.family, facts.prediction) == ("sd2", "unknown")
    assert facts.params == {"unet": LDM_UNET_PARAMS + 327680, "text_encoder": 53818369, "vae": VAE_PARAMS}
    assert any("set [model] prediction" in n and "768-v" in n for n in facts.notes)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"modelspec.prediction_type": "v"}, "v_prediction"),
        ({"modelspec.prediction_type": "epsilon"}, "epsilon"),
        ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v_prediction"),
        ({"modelspec.architecture": "stable-diffusion-v2-512"}, "epsilon"),
        ({"v_pred": "True"}, "v_prediction"),
    ],
)
def test_single_file_sd2_prediction_from_metadata(tmp_path, metadata, expected):
    facts = inspect_model(str(sd2_single_file(tmp_path / "sd21.safetensors", metadata)), tmp_path)
    assert (facts.family, facts.prediction, facts.notes) == ("sd2", expected, ())


def sdxl_tensors() -> Tensors:
    return {
        **LDM_UNET,
        "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),  # 3604480
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": ("F16", (640, 2048)),
        **prefixed("conditioner.embedders.0.transformer.", as_dtype(CLIP_L, "F16")),
        "conditioner.embedders.1.model.positional_embedding": ("F16", (77, 1280)),  # 98560
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": ("F16", (1280,)),  # 1280
        "conditioner.embedders.1.model.text_projection": ("F16", (1280, 1280)),  # 1638400
        **LDM_VAE, **BUFFERS,
    }  # fmt: skip


def test_single_file_sdxl_and_v_pred_marker(tmp_path):
    facts = inspect_model(str(write_safetensors(tmp_path / "xl.safetensors", sdxl_tensors())), tmp_path)
    assert (facts.family, facts.prediction) == ("sdxl", "epsilon")
    assert facts.params == {
        "unet": LDM_UNET_PARAMS + 3604480 + 1310720,
        "text_encoder": CLIP_L_PARAMS,
        "text_encoder_2": 1738240,
        "vae": VAE_PARAMS,
    }
    vpred = write_safetensors(tmp_path / "noob.safetensors", {**sdxl_tensors(), "v_pred": ("F32", ())})
    assert inspect_model(str(vpred), tmp_path).prediction == "v_prediction"


def test_single_file_without_text_encoders_uses_unet_context_size(tmp_path):
    to_k = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    unet = {**LDM_UNET, to_k: ("F16", (640, 2048))}
    facts = inspect_model(str(write_safetensors(tmp_path / "u.safetensors", unet)), tmp_path)
    assert facts.family == "sdxl" and set(facts.params) == {"unet"}
    assert any("no text_encoder weights" in n for n in facts.notes)


def test_single_file_refiner_is_detected(tmp_path):
    to_k = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    tensors = {
        **LDM_UNET,
        to_k: ("F16", (768, 1280)),
        "conditioner.embedders.0.model.text_projection": ("F16", (1280, 1280)),
    }
    facts = inspect_model(str(write_safetensors(tmp_path / "m.safetensors", tensors)), tmp_path)
    assert (facts.family, facts.prediction) == ("sdxl_refiner", "epsilon"), facts.notes
    assert "text_encoder_2" in facts.params and "text_encoder" not in facts.params


def test_single_file_mixed_parts_is_unknown(tmp_path):
    to_k = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    extra = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": ("F16", (768,))}
    tensors = {**LDM_UNET, to_k: ("F16", (640, 2048)), **extra}
    facts = inspect_model(str(write_safetensors(tmp_path / "m.safetensors", tensors)), tmp_path)
    assert facts.family == "unknown" and any("say sd1 but" in n for n in facts.notes), facts.notes


def test_single_file_that_is_not_a_checkpoint(tmp_path):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ("F16", (16, 320))}
    facts = inspect_model(str(write_safetensors(tmp_path / "lora.safetensors", lora)), tmp_path)
    assert (facts.family, facts.prediction, facts.params) == ("unknown", "unknown", {})
    assert any("not a Stable Diffusion checkpoint" in n for n in facts.notes)


def test_ckpt_reads_as_its_safetensors_twin_without_running_its_pickle(tmp_path):
    """A torch.save checkpoint (`{"state_dict": ..., "global_step"}`) gives the facts of the .safetensors file
    of the same tensors (compiler/pickle_weights.py); an object weights_only refuses is named in a note."""
    import argparse

    import torch

    header = read_safetensors_header(sd1_single_file(tmp_path / "full.safetensors"))
    shrunk = {n: (t.dtype, tuple(min(d, 3) for d in t.shape)) for n, t in header.items()}
    twin = inspect_model(str(write_safetensors(tmp_path / "twin.safetensors", shrunk)), tmp_path)
    dtypes = {"F16": torch.float16, "F32": torch.float32, "I64": torch.int64, "I32": torch.int32}
    state = {n: torch.zeros(shape, dtype=dtypes[d]) for n, (d, shape) in shrunk.items()}
    torch.save({"state_dict": state, "global_step": 1, "args": argparse.Namespace(lr=1)}, tmp_path / "m.ckpt")
    facts = inspect_model("m.ckpt", tmp_path)
    assert facts.source == "ckpt" and facts.family == twin.family == "sd1"
    assert (facts.prediction, facts.params, facts.dtypes) == (twin.prediction, twin.params, twin.dtypes)
    assert facts.params["unet"] > 0 and set(facts.component_ids) == set(twin.component_ids)
    (note,) = facts.notes
    assert note.startswith("its pickle names `argparse.Namespace`, which torch.load(weights_only=True)")
    assert note.endswith("only with model.allow_pickle = true")


def test_legacy_or_corrupt_ckpt(tmp_path):
    """torch's legacy format: unknown facts naming it (the run's torch.load reads it); a corrupt file: an
    error naming it (was: unknown facts, the run failing)."""
    import torch

    torch.save(
        {"state_dict": {"a": torch.zeros(1)}}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False
    )
    facts = inspect_model("old.ckpt", tmp_path)
    assert (facts.source, facts.family, facts.prediction, facts.params) == ("ckpt", "unknown", "unknown", {})
    assert facts.resolved and facts.identity.startswith("sha256:") and "legacy" in facts.notes[0]
    (tmp_path / "bad.ckpt").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(ModelFileError, match="bad.ckpt: not a torch.save zip file"):
        inspect_model("bad.ckpt", tmp_path)


def test_builtin_is_not_ours_and_missing_path_is_an_error(tmp_path):
    assert inspect_model("builtin:tiny-sd1", tmp_path) is None
    with pytest.raises(ModelFileError, match="no such file or folder"):
        inspect_model("./models/missing.safetensors", tmp_path)
    with pytest.raises(ModelFileError, match="model_index.json is missing"):
        inspect_model(".", tmp_path)


# --- corrupt files -------------------------------------------------------------------------------------


def corrupt_cases(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = write_safetensors(tmp_path / "good.safetensors", {"w": ("F32", (4, 4))}).read_bytes()
    header_len = int.from_bytes(good[:8], "little")
    return {
        "short": (b"\x01\x02", "truncated"),
        "length": ((10**6).to_bytes(8, "little") + b"{}", "exceeds the file size"),
        "json": (len(b"{nope").to_bytes(8, "little") + b"{nope", "not valid JSON"),
        "list": (len(b"[1]").to_bytes(8, "little") + b"[1]", "not a JSON object"),
        "data": (good[: 8 + header_len + 10], "truncated download"),
        "size": (good.replace(b"[4, 4]", b"[4, 5]"), "do not match F32"),
    }


@pytest.mark.parametrize("case", ["short", "length", "json", "list", "data", "size"])
def test_corrupt_headers_raise_model_file_error(tmp_path, case):
    content, reason = corrupt_cases(tmp_path)[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=reason) as caught:
        inspect_model("bad.safetensors", tmp_path)
    assert caught.value.path == str(path)


def test_missing_shard_is_reported(tmp_path):
    root = sd1_folder(tmp_path / "sd15")
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    index = {"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}}
    write_json(root / "unet" / "diffusion_pytorch_model.safetensors.index.json", index)
    with pytest.raises(
        ModelFileError, match="shard diffusion_pytorch_model-00001-of-00002.safetensors is missing"
    ):
        inspect_model(str(root), tmp_path)


def test_reader_agrees_with_the_safetensors_library(tmp_path):
    np = pytest.importorskip("numpy")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "real.safetensors"
    arrays = {"a": np.zeros((3, 5), np.float16), "b": np.zeros((7,), np.int64), "s": np.zeros((), np.float32)}
    safetensors_numpy.save_file(arrays, str(path), metadata={"modelspec.prediction_type": "v"})
    assert read_safetensors_header(path) == {
        "a": TensorInfo(dtype="F16", shape=(3, 5)),
        "b": TensorInfo(dtype="I64", shape=(7,)),
        "s": TensorInfo(dtype="F32", shape=()),
    }
    assert read_safetensors(path).metadata == {"modelspec.prediction_type": "v"}


# --- the local Hugging Face cache ----------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_snapshot(cache: Path, repo_id: str) -> Path:
    """Lay out models--org--name like huggingface_hub: refs/main -> commit, snapshot files
    link into blobs/."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    staging = sd1_folder(repo_dir / "staging")
    blobs = repo_dir / "blobs"
    blobs.mkdir()
    for i, file in enumerate(sorted(p for p in staging.rglob("*") if p.is_file())):
        blob = blobs / f"{i:064x}"
        file.rename(blob)
        link = repo_dir / "snapshots" / COMMIT / file.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return repo_dir / "snapshots" / COMMIT


def test_hub_id_resolves_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = fake_hub_snapshot(tmp_path / "hub", "org/sd15")
    facts = inspect_model("org/sd15", tmp_path / "spec")
    assert (facts.source, facts.resolved, facts.path, facts.family) == ("hub", True, str(snapshot), "sd1")
    assert facts.params == {"unet": SD1_UNET_PARAMS, "text_encoder": CLIP_L_PARAMS, "vae": VAE_PARAMS}
    assert any(COMMIT in n for n in facts.notes)
    by_commit = inspect_model("org/sd15", tmp_path, revision=COMMIT)
    assert by_commit.identity == facts.identity


def test_hub_id_missing_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    facts = inspect_model("stabilityai/stable-diffusion-2-1", tmp_path)
    assert facts == ModelFacts(
        source="hub", base="stabilityai/stable-diffusion-2-1", path="", resolved=False, family="unknown",
        prediction="unknown", params={}, dtypes={}, identity="", component_ids={}, notes=facts.notes,
    )  # fmt: skip
    (note,) = facts.notes
    assert str(tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1") in note
    assert "`huggingface-cli download stabilityai/stable-diffusion-2-1`" in note
    (tagged,) = inspect_model("stabilityai/stable-diffusion-2-1", tmp_path, revision="fp16").notes
    assert "download stabilityai/stable-diffusion-2-1 --revision fp16`" in tagged


def test_hub_cache_dir_follows_huggingface_hub(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"


def test_importing_modelinfo_loads_no_torch():
    code = (
        "import sys, dbspec.compiler.modelinfo\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'safetensors', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
