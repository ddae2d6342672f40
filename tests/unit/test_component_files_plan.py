"""Plan-time checks of per-component weight files (DBS372-375), their place in the plan and its summary, and
the identities that key caches (no torch: the files are written with safetensors' numpy API)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from dbspec.frontend import plan_spec
from dbspec.plan.model import TargetEnv

ROOT = Path(__file__).resolve().parents[2]
CPU = TargetEnv(device="cpu", memory_bytes=16 * 2**30, bf16=True, description="test cpu")
SPEC = """\
spec_version = 2

[model]
base = "{base}"
{model}

[[datasets]]
name = "toy"
path = "data/toy"
prompt = "a photo of ohwx toy"
resolution = 64

[buckets]
step = 16

[schedule]
steps = 2

[cache]
dir = "cache"

[output]
dir = "out"
"""


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def _file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: np.zeros(v, dtype=np.float32) for k, v in shapes.items()}, str(path))
    return path


def _clip(path: Path, width: int = 32, prefix: str = "") -> Path:
    return _file(
        path,
        {
            f"{prefix}text_model.embeddings.token_embedding.weight": (10, width),
            f"{prefix}text_model.final_layer_norm.weight": (width,),
        },
    )


def _t5(path: Path, width: int = 64) -> Path:
    return _file(
        path, {"shared.weight": (10, width), "encoder.block.0.layer.0.SelfAttention.k.weight": (8, width)}
    )


def _flux(path: Path) -> Path:
    return _file(path, {"double_blocks.0.img_attn.qkv.weight": (48, 16), "img_in.weight": (16, 64)})


def _ae(path: Path, channels: int = 16) -> Path:
    return _file(
        path,
        {"encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3), "decoder.conv_in.weight": (8, channels, 3, 3)},
    )


def _plan(tmp: Path, model: str = "", base: str = "builtin:tiny-flux"):
    if not (tmp / "data" / "toy").exists():
        shutil.copytree(ROOT / "specs" / "data" / "toy", tmp / "data" / "toy")
    spec = tmp / "spec.toml"
    spec.write_text(SPEC.format(base=base, model=model))
    return plan_spec(spec, CPU, str(spec), [])


def _codes(planned) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in planned.diagnostics:
        out.setdefault(d.code, []).append(d.message)
    return out


def _kohya_files(tmp: Path) -> str:
    _flux(tmp / "flux1.safetensors")
    _clip(tmp / "clip_l.safetensors")
    _t5(tmp / "t5xxl.safetensors")
    _ae(tmp / "ae.safetensors")
    return (
        'denoiser_file = "flux1.safetensors"\n'
        'text_encoder_files = ["clip_l.safetensors", "t5xxl.safetensors"]\n'
        'vae = "ae.safetensors"'
    )


def test_files_are_in_the_plan_summary_and_identities(tmp_path):
    planned = _plan(tmp_path, _kohya_files(tmp_path))
    assert planned.plan is not None, _codes(planned)
    m = planned.plan.model
    assert m.denoiser_file == str(tmp_path / "flux1.safetensors")
    assert m.text_encoder_files == (str(tmp_path / "clip_l.safetensors"), str(tmp_path / "t5xxl.safetensors"))
    assert m.vae == str(tmp_path / "ae.safetensors")
    assert "denoiser:file:" in m.identity and "text_encoder_2:file:" in m.text_identity
    assert m.vae_identity.startswith("file:")
    from rich.console import Console

    from dbspec.plan.summary import component_file_lines, render_summary

    lines = component_file_lines(planned.plan)
    assert (
        lines[0].startswith("weights: transformer from")
        and "flux1.safetensors (model.denoiser_file)" in lines[0]
    )
    assert lines[2].endswith("t5xxl.safetensors (model.text_encoder_files[1])") and "(model.vae)" in lines[3]
    assert lines[4] == "weights: configs, tokenizers and the other components from builtin:tiny-flux"
    console = Console(file=io.StringIO(), width=400)
    render_summary(planned.plan, console)
    text = "".join(console.file.getvalue().split())  # the caption wraps at the table's width
    assert all("".join(line.split()) in text for line in lines)


def test_another_t5_file_changes_the_text_identity_alone(tmp_path):
    text = _kohya_files(tmp_path)
    one = _plan(tmp_path, text).plan.model
    _t5(tmp_path / "t5-other.safetensors", width=64)
    (tmp_path / "t5-other.safetensors").write_bytes((tmp_path / "t5-other.safetensors").read_bytes() + b" ")
    two = _plan(tmp_path, text.replace('"t5xxl.safetensors"', '"t5-other.safetensors"')).plan.model
    assert two.text_identity != one.text_identity
    assert (two.identity, two.vae_identity) == (one.identity, one.vae_identity)


def test_empty_entries_keep_the_base_encoder(tmp_path):
    _t5(tmp_path / "t5xxl.safetensors")
    planned = _plan(tmp_path, 'text_encoder_files = ["", "t5xxl.safetensors"]')
    m = planned.plan.model
    assert m.text_encoder_files == ("", str(tmp_path / "t5xxl.safetensors"))
    assert "text_encoder:file" not in m.text_identity


def test_a_missing_file_is_dbs372(tmp_path):
    planned = _plan(tmp_path, 'denoiser_file = "flux1-dev.safetensors"')
    (message,) = _codes(planned)["DBS372"]
    assert "model.denoiser_file" in message and "flux1-dev.safetensors` does not exist" in message


def test_a_pickle_file_is_dbs372(tmp_path):
    (tmp_path / "clip_l.pt").write_bytes(b"x")
    planned = _plan(tmp_path, 'text_encoder_files = ["clip_l.pt"]')
    (message,) = _codes(planned)["DBS372"]
    assert "model.text_encoder_files[0]" in message and "not a .safetensors file" in message


def test_swapped_encoders_are_dbs373(tmp_path):
    _kohya_files(tmp_path)
    planned = _plan(tmp_path, 'text_encoder_files = ["t5xxl.safetensors", "clip_l.safetensors"]')
    messages = _codes(planned)["DBS373"]
    assert len(messages) == 2
    assert "t5xxl.safetensors` given for text_encoder (CLIPTextModel)" in messages[0]
    assert "holds a T5 encoder" in messages[0]
    assert "embeddings.token_embedding.weight" in messages[0]


def test_an_encoder_of_another_width_is_dbs373(tmp_path):
    _clip(tmp_path / "clip_g.safetensors", width=64)
    planned = _plan(tmp_path, 'text_encoder_files = ["clip_g.safetensors"]')
    (message,) = _codes(planned)["DBS373"]
    assert "64-wide CLIPTextModel" in message and "32 wide" in message


def test_an_sd3_checkpoint_with_its_encoders_serves_each(tmp_path):
    prefixes = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.")
    shapes = {
        f"{prefixes[0]}text_model.embeddings.token_embedding.weight": (10, 32),
        f"{prefixes[1]}text_model.embeddings.token_embedding.weight": (10, 64),
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight": (8, 128),
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (48, 16),
    }
    _file(tmp_path / "sd3.safetensors", shapes)
    files = 'text_encoder_files = ["sd3.safetensors", "sd3.safetensors", "sd3.safetensors"]'
    planned = _plan(tmp_path, f'denoiser_file = "sd3.safetensors"\n{files}', base="builtin:tiny-sd3")
    assert planned.plan is not None, _codes(planned)
    wrong = _plan(tmp_path, 'denoiser_file = "sd3.safetensors"', base="builtin:tiny-flux")
    (message,) = _codes(wrong)["DBS373"]
    assert "does not hold a Flux denoiser" in message and "an SD3 transformer" in message


def test_too_many_encoder_files_are_dbs374(tmp_path):
    _clip(tmp_path / "clip_l.safetensors")
    planned = _plan(tmp_path, 'text_encoder_files = ["clip_l.safetensors", "", ""]')
    (message,) = _codes(planned)["DBS374"]
    assert "3 entries" in message and "2 text encoder(s)" in message


def test_an_autoencoder_of_another_family_is_dbs373(tmp_path):
    _ae(tmp_path / "sd-vae.safetensors", channels=4)
    planned = _plan(tmp_path, 'vae = "sd-vae.safetensors"')
    (message,) = _codes(planned)["DBS373"]
    assert "4 latent channels" in message and "16" in message


def test_a_hub_base_not_downloaded_warns_dbs375(tmp_path):
    planned = _plan(tmp_path, _kohya_files(tmp_path), base="black-forest-labs/FLUX.1-dev")
    assert planned.plan is not None
    (message,) = _codes(planned)["DBS375"]
    assert "black-forest-labs/FLUX.1-dev" in message


def test_plan_download_skips_the_weights_the_files_replace(tmp_path, monkeypatch):
    """`dbspec plan --download` fetches model.base's configs and tokenizers, not the weights of components
    given as files."""
    import huggingface_hub

    from dbspec.compiler.hub import download, weights_elsewhere
    from dbspec.spec.model import Model

    model = Model(
        base="black-forest-labs/FLUX.1-dev",
        denoiser_file="f.safetensors",
        text_encoder_files=["", "t5.st"],
        vae="ae",
    )
    assert weights_elsewhere(model) == ("transformer", "text_encoder_2", "vae")
    sd3 = Model(base="stabilityai/stable-diffusion-3.5-large", text_encoder_files=["", "", "t5.st"])
    assert weights_elsewhere(sd3) == ("text_encoder_3",)
    seen = {}
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, **kw: seen.update(kw) or str(tmp_path)
    )
    download(model.base, "main", weights_elsewhere(model))
    assert seen["ignore_patterns"] == [
        "transformer/*.safetensors",
        "text_encoder_2/*.safetensors",
        "vae/*.safetensors",
    ]
    assert "*.json" in seen["allow_patterns"]
