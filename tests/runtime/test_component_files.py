"""Flux and SD3 from kohya's separate component files (model.denoiser_file, model.text_encoder_files, a
model.vae file): the files hold another seed's weights than model.base, so loading the base's instead fails
the weight checks; a run from the files equals a run from a diffusers folder of the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file

from dbspec.runtime import flux_original
from dbspec.runtime.execute import execute
from dbspec.runtime.models import ModelLoadError, load_components
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.component_files_kit import flux_to_original, write_flux_files, write_sd3_files
from tests.runtime.runspec import compile_spec, summary_text, write_spec

FLUX, SD3 = "builtin:tiny-flux", "builtin:tiny-sd3"
LORA = '[adapter]\nkind = "lora"\nrank = 2\n'


def _with_model_keys(spec: Path, base: str, lines: str) -> Path:
    text = spec.read_text()
    spec.write_text(text.replace(f'base = "{base}"\n', f'base = "{base}"\n{lines}\n', 1))
    return spec


def _same(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours, theirs = module.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)


def _differs(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    ours = module.state_dict()
    return any(
        not torch.equal(ours[k], v) for k, v in reference.state_dict().items() if v.is_floating_point()
    )


def test_flux_conversion_equals_diffusers_at_flux1_width():
    """diffusers' converter splits single blocks at Flux.1's width (3072, MLP 12288): on a state dict of that
    width (one double and one single block, 2 columns per matrix) dbspec's config-sized conversion equals
    it, key for key and tensor for tensor."""
    names = flux_to_original(build_pipeline(FLUX).transformer.state_dict()).keys()
    gen = torch.Generator().manual_seed(0)
    rows = {"qkv": 3 * 3072, "linear1": 3 * 3072 + 12288}
    state = {}
    for name in names:
        kind = next((k for k in rows if f".{k}." in name), None)
        n = rows[kind] if kind else 6
        shape = (n,) if name.endswith((".bias", ".scale")) else (n, 2)
        state[name] = torch.randn(shape, generator=gen)
    ours = flux_original.to_diffusers(state, {"num_attention_heads": 24, "attention_head_dim": 128})
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    """Seed 1's tiny Flux as kohya's four files, and as a diffusers folder."""
    tmp = tmp_path_factory.mktemp("flux-files")
    pipe = build_pipeline(FLUX, seed=1)
    pipe.save_pretrained(tmp / "folder")
    return pipe, write_flux_files(pipe, tmp / "files"), tmp / "folder"


def _flux_lines(files: dict[str, Path]) -> str:
    return (
        f'denoiser_file = "{files["flux1"]}"\n'
        f'text_encoder_files = ["{files["clip_l"]}", "{files["t5xxl"]}"]\n'
        f'vae = "{files["ae"]}"'
    )


def test_flux_components_load_from_kohyas_files(tmp_path, flux_files):
    pipe, files, _ = flux_files
    spec = _with_model_keys(write_spec(tmp_path, base=FLUX, steps=2), FLUX, _flux_lines(files))
    plan = compile_spec(spec)
    m = plan.model
    assert m.denoiser_file == str(files["flux1"]) and m.vae == str(files["ae"])
    assert m.text_encoder_files == (str(files["clip_l"]), str(files["t5xxl"]))
    summary = "".join(summary_text(plan).split())  # the caption wraps at the table's width
    assert f"transformerfrom{files['flux1']}" in summary and f"text_encoder_2from{files['t5xxl']}" in summary
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert m.params == {
        "unet": count(pipe.transformer),
        "vae": count(pipe.vae),
        "text_encoder": count(pipe.text_encoder),
        "text_encoder_2": count(pipe.text_encoder_2),
    }  # read from the files' headers
    comps = load_components(plan)
    base = build_pipeline(FLUX)
    for ours, theirs, seed0 in (
        (comps.unet, pipe.transformer, base.transformer),
        (comps.vae, pipe.vae, base.vae),
        (comps.text_encoders[0], pipe.text_encoder, base.text_encoder),
        (comps.text_encoders[1], pipe.text_encoder_2, base.text_encoder_2),
    ):
        _same(ours, theirs)
        assert _differs(ours, seed0)  # the file's weights, not the base's


def test_flux_run_from_files_equals_run_from_folder(tmp_path, flux_files):
    _, files, folder = flux_files
    spec = write_spec(tmp_path, base=FLUX, steps=2, extra=LORA)
    from_files = execute(compile_spec(_with_model_keys(spec, FLUX, _flux_lines(files)), ["output.dir=a"]))
    spec.write_text(spec.read_text().replace(_flux_lines(files), "").replace(FLUX, str(folder)))
    from_folder = execute(compile_spec(spec, ["output.dir=b"]))
    assert from_files.status == from_folder.status == "finished"
    torch.testing.assert_close(
        torch.tensor(from_files.losses), torch.tensor(from_folder.losses), rtol=0, atol=1e-6
    )
    a = load_file(str(Path(from_files.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(from_folder.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_flux_resume_from_files_is_bit_identical(tmp_path, flux_files):
    _, files, _ = flux_files
    spec = write_spec(tmp_path, base=FLUX, steps=4, extra=LORA + "\n[checkpoints]\nevery = 2\n")
    spec = _with_model_keys(spec, FLUX, _flux_lines(files))
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text_caches_follow_the_t5_file(tmp_path, flux_files):
    """Another --t5xxl changes the text identity (text caches) and nothing else's."""
    _, files, _ = flux_files
    other = tmp_path / "t5-other.safetensors"
    state = load_file(str(files["t5xxl"]))
    state["shared.weight"] = state["shared.weight"] + 1
    from safetensors.torch import save_file

    save_file(state, str(other))
    spec = _with_model_keys(write_spec(tmp_path, base=FLUX, steps=2), FLUX, _flux_lines(files))
    one = compile_spec(spec).model
    spec.write_text(spec.read_text().replace(str(files["t5xxl"]), str(other)))
    two = compile_spec(spec).model
    assert one.text_identity != two.text_identity
    assert (one.identity, one.vae_identity) == (two.identity, two.vae_identity)


def test_sd3_text_encoders_from_the_checkpoint_and_files(tmp_path):
    """kohya's SD3 file with the text encoders inside (under text_encoders.*.transformer.), CLIP-L without its
    projection (kohya's load_clip_l: the identity), and a separate clip_g file."""
    pipe = build_pipeline(SD3, seed=1)
    files = write_sd3_files(pipe, tmp_path / "files")
    lines = (
        f'denoiser_file = "{files["sd3"]}"\n'
        f'text_encoder_files = ["{files["sd3"]}", "{files["clip_g"]}", "{files["sd3"]}"]\n'
        f'vae = "{files["sd3"]}"'
    )
    spec = _with_model_keys(write_spec(tmp_path, base=SD3, steps=2, extra=LORA), SD3, lines)
    plan = compile_spec(spec)
    with pytest.warns(UserWarning, match="identity"):
        comps = load_components(plan)
    _same(comps.unet, pipe.transformer)
    _same(comps.vae, pipe.vae)
    _same(comps.text_encoders[1], pipe.text_encoder_2)
    _same(comps.text_encoders[2], pipe.text_encoder_3)
    clip_l = comps.text_encoders[0].state_dict()
    reference = pipe.text_encoder.state_dict()
    for key, value in reference.items():
        if key == "text_projection.weight":
            assert torch.equal(clip_l[key], torch.eye(value.shape[1]))
        else:
            torch.testing.assert_close(clip_l[key], value, rtol=0, atol=0, msg=key)
    assert execute(plan).status == "finished"


def test_a_denoiser_file_of_another_size_says_which_file(tmp_path, flux_files):
    _, files, _ = flux_files
    state = load_file(str(files["flux1"]))
    state = {k: v for k, v in state.items() if not k.startswith("single_blocks.")}
    state["double_blocks.1.img_mod.lin.weight"] = state["double_blocks.0.img_mod.lin.weight"].clone()
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(bad))
    spec = _with_model_keys(write_spec(tmp_path, base=FLUX, steps=2), FLUX, f'denoiser_file = "{bad}"')
    with pytest.raises(ModelLoadError, match="other.safetensors"):
        load_components(compile_spec(spec))


def test_sd1_components_from_an_original_single_file(tmp_path):
    """Family-neutral: SD 1.x's U-Net, CLIP and VAE from an A1111-layout checkpoint (model.diffusion_model.,
    cond_stage_model.transformer., first_stage_model.) over builtin:tiny-sd1's configs and tokenizer."""
    from dbspec.runtime.exports import single_file_state

    base = "builtin:tiny-sd1"
    pipe = build_pipeline(base, seed=1)
    state = single_file_state(unet=pipe.unet, vae=pipe.vae, text_encoders=[pipe.text_encoder], family="sd1")
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    lines = f'denoiser_file = "{path}"\ntext_encoder_files = ["{path}"]\nvae = "{path}"'
    plan = compile_spec(_with_model_keys(write_spec(tmp_path, base=base, steps=1), base, lines))
    comps = load_components(plan)
    _same(comps.unet, pipe.unet)
    _same(comps.vae, pipe.vae)
    _same(comps.text_encoders[0], pipe.text_encoder)


def test_sdxl_openclip_encoder_from_an_original_single_file(tmp_path):
    """SDXL's second encoder in OpenCLIP's layout (conditioner.embedders.1.model.: resblocks, fused in_proj,
    text_projection transposed), through diffusers' convert_open_clip_checkpoint; the first in transformers'
    layout under conditioner.embedders.0.transformer."""
    from dbspec.runtime.exports import single_file_state

    base = "builtin:tiny-sdxl"
    pipe = build_pipeline(base, seed=1)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    state = single_file_state(unet=pipe.unet, vae=pipe.vae, text_encoders=encoders, family="sdxl")
    from safetensors.torch import save_file

    path = tmp_path / "sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    lines = f'denoiser_file = "{path}"\ntext_encoder_files = ["{path}", "{path}"]\nvae = "{path}"'
    plan = compile_spec(_with_model_keys(write_spec(tmp_path, base=base, steps=1), base, lines))
    comps = load_components(plan)
    _same(comps.unet, pipe.unet)
    _same(comps.text_encoders[0], pipe.text_encoder)
    _same(comps.text_encoders[1], pipe.text_encoder_2)


def test_component_files_over_a_single_file_base(tmp_path):
    """A single-file base (model.config for its configs): the denoiser file is configured by model.config, an
    encoder file by the checkpoint's own encoder's config, a VAE file likewise."""
    from safetensors.torch import save_file

    from dbspec.runtime.exports import single_file_state
    from dbspec.runtime.tiny import materialize

    base = "builtin:tiny-sd1"
    configs = materialize(base, tmp_path / "configs")

    def write(seed: int, name: str):
        pipe = build_pipeline(base, seed=seed)
        state = single_file_state(
            unet=pipe.unet, vae=pipe.vae, text_encoders=[pipe.text_encoder], family="sd1"
        )
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
        return pipe

    write(3, "model.safetensors")
    other = write(4, "other.safetensors")
    lines = (
        'denoiser_file = "other.safetensors"\ntext_encoder_files = ["other.safetensors"]\n'
        'vae = "other.safetensors"'
    )
    spec = _with_model_keys(
        write_spec(tmp_path, base="model.safetensors", steps=1), "model.safetensors", lines
    )
    plan = compile_spec(spec, ['model.family="sd1"', f'model.config="{configs}"'])
    assert plan.model.source == "single_file"
    comps = load_components(plan)
    _same(comps.unet, other.unet)
    _same(comps.text_encoders[0], other.text_encoder)
    _same(comps.vae, other.vae)


def test_kohya_flux_command_converts_plans_and_trains_from_its_files(tmp_path, flux_files):
    """End to end: a kohya flux_train_network.py command over the four files, `dbspec convert kohya --set
    model.base=<a folder of the same model>` (configs and tokenizers offline), then a run from the files."""
    import shutil

    from typer.testing import CliRunner

    from dbspec.cli import app
    from tests.runtime.runspec import ROOT

    pipe, files, folder = flux_files
    shutil.copytree(ROOT / "specs" / "data" / "toy", tmp_path / "img" / "4_ohwx toy")
    command = (
        f"accelerate launch flux_train_network.py --pretrained_model_name_or_path {files['flux1']} "
        f"--clip_l {files['clip_l']} --t5xxl {files['t5xxl']} --ae {files['ae']} --train_data_dir img "
        "--resolution 64 --enable_bucket --min_bucket_reso 64 --bucket_reso_steps 64 --network_module "
        "networks.lora_flux --network_dim 2 --network_train_unet_only "
        "--learning_rate 1e-3 --max_train_steps 2 --timestep_sampling shift --model_prediction_type raw "
        "--output_dir out"
    )
    spec = tmp_path / "spec.toml"
    result = CliRunner().invoke(
        app,
        ["convert", "kohya", "-o", str(spec), "--cwd", str(tmp_path), "--command", command]
        + ["--set", f"model.base={folder}", "--set", "cache.dir=cache"],
    )
    assert spec.exists(), result.output
    assert "DBS418" not in result.output  # model.base given: no advice to give it
    plan = compile_spec(spec)
    assert plan.model.base == str(folder) and plan.model.denoiser_file == str(files["flux1"])
    assert plan.model.text_encoder_files == (str(files["clip_l"]), str(files["t5xxl"]))
    run = execute(plan, keep_models=True)
    assert run.status == "finished" and run.steps == 2
    _same(run.components.vae, pipe.vae)


def test_a_flux_file_of_another_depth_loads_with_its_own_block_counts(tmp_path):
    """kohya's flux_utils builds Flux with the file's numbers of double and single blocks (pruned models such
    as Flex.1 train): a 2 + 3-block file over the 1 + 1-block base's config loads whole."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from dbspec.builtin import builtin_model

    config = {**builtin_model(FLUX).unet, "num_layers": 2, "num_single_layers": 3}
    torch.manual_seed(5)
    deeper = FluxTransformer2DModel(**config).eval()
    path = tmp_path / "flux-deeper.safetensors"
    save_file({k: v.contiguous() for k, v in flux_to_original(deeper.state_dict()).items()}, str(path))
    spec = _with_model_keys(write_spec(tmp_path, base=FLUX, steps=1), FLUX, f'denoiser_file = "{path}"')
    plan = compile_spec(spec)
    assert plan.model.params["unet"] == sum(
        p.numel() for p in deeper.parameters()
    )  # the file's, not the base's
    comps = load_components(plan)
    assert (comps.unet.config.num_layers, comps.unet.config.num_single_layers) == (2, 3)
    _same(comps.unet, deeper)
