"""kohya lycoris.kohya `train_norm=True` on SD 1.x (train_network.py): LyCORIS's NormModule trains an offset
of each reached U-Net GroupNorm's and LayerNorm's weight and bias (`[adapter] denoiser_norms`,
runtime/norm_offsets.py) and, with a preset file reaching them, CLIP's LayerNorms (`text_encoder_norms`).
lycoris-lora 4.1.3's create_network on the tiny SD 1.x model builds NormModules on exactly the layers the
converted plan offsets; a tiny run trains them, resumes bit-exact, and its kohya export, loaded by
lycoris-lora's create_network_from_weights onto the base U-Net, gives the trained U-Net's outputs
(issue 12); `dbspec sample` loads the offsets back with the adapters. The network's dropouts draw as
NormModule draws (the GroupNorm test here; LayerNorms: test_lycoris_clip_norms.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.norm_offsets import BIAS, WEIGHT, add_norm_offsets, norm_layers
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.shared import NETWORK_ATTRS

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the ResNets' norms, conv_norm_out by name, and CLIP's LayerNorms through its encoder layers
FILE = """\
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ["conv_norm_out"]
text_encoder_target_module = ["CLIPEncoderLayer"]
"""


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _converted(tmp_path: Path, preset: str, extra: str = "", text: str = FILE) -> Path:
    from tests.unit.convert_kit import SD15, errors, images, kohya, out_path

    if preset.endswith(".toml"):
        (tmp_path / preset).write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo=locon" "preset={preset}" "train_norm=True" {extra} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


def _lycoris(pipe, preset: str, monkeypatch, **args):
    kept_lycoris_presets(monkeypatch)
    if preset in lycoris_kohya.PRESET:  # as test_lycoris_presets.py: the time embedding named once, not twice
        config = copy.deepcopy(lycoris_kohya.PRESET[preset])
        if "TimestepEmbedding" in config["unet_target_module"]:
            names = config["unet_target_name"]
            config["unet_target_name"] = [n for n in names if not n.startswith("time_embedding")]
        monkeypatch.setitem(lycoris_kohya.PRESET, preset, config)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    return lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        copy.deepcopy(pipe.unet),
        algo="locon",
        preset=preset,
        train_norm="True",
        **args,
    )


@pytest.mark.parametrize("preset", ["full", "attn-mlp", "unet-convblock-only", "p.toml"])
def test_plan_offsets_the_norms_lycoris_builds_norm_modules_on(pipe, preset, tmp_path, monkeypatch):
    spec = _converted(tmp_path, preset)
    a = compile_spec(spec, ["model.base=builtin:tiny-sd1"]).adapter
    made = _lycoris(pipe, str(tmp_path / preset) if preset.endswith(".toml") else preset, monkeypatch)
    theirs = {
        m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras] if type(m).__name__ == "NormModule"
    }
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    add_norm_offsets(unet, a.denoiser_norms)
    if a.text_encoder_norms:
        add_norm_offsets(text, a.text_encoder_norms)
    ours = {"lora_unet_" + p.replace(".", "_") for p, _ in norm_layers(unet)}
    ours |= {"lora_te_text_model_" + p.replace(".", "_") for p, _ in norm_layers(text)}
    kinds = {type(layer).__name__ for _, layer in norm_layers(unet)}
    assert theirs and ours == theirs
    both = {"GroupNorm", "LayerNorm"}  # Transformer2DModel's GroupNorm, its blocks' LayerNorms
    assert kinds == {"full": both, "attn-mlp": both}.get(preset, {"GroupNorm"})
    assert bool(a.text_encoder_norms) == (preset == "p.toml")


def test_group_norm_offsets_compute_what_norm_module_computes():
    """A GroupNorm's offsets with LyCORIS's module_dropout / rank_dropout: NormModule's output, drawn from the
    same generator state (its F.group_norm of the offsets, with the layer's groups and eps)."""
    from lycoris.modules.norms import NormModule

    torch.manual_seed(0)
    base = nn.Sequential(nn.GroupNorm(4, 16, eps=1e-5), nn.Conv2d(16, 16, 1), nn.GroupNorm(2, 16, eps=1e-6))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    add_norm_offsets(ours, ("0", "2"), 0.4, 0.3)
    modules = []
    for i in (0, 2):
        w, b = torch.randn(16), torch.randn(16)
        getattr(ours[i], WEIGHT).data.copy_(w)
        getattr(ours[i], BIAS).data.copy_(b)
        module = NormModule(f"n{i}", theirs[i], 1.0, rank_dropout=0.3, module_dropout=0.4)
        module.w_norm.data.copy_(w)
        module.b_norm.data.copy_(b)
        module.apply_to()
        modules.append(module.train())
    for step in range(12):
        x = torch.randn(2, 16, 3, 3)
        torch.manual_seed(step)
        out, after = ours(x), torch.rand(1)
        torch.manual_seed(step)
        torch.testing.assert_close(out, theirs(x), rtol=0, atol=1e-5)
        assert torch.equal(after, torch.rand(1))
    ours.eval()
    for module in modules:  # NormModule is no child of the layer it replaces: its own training flag
        module.eval()
    x = torch.randn(2, 16, 3, 3)
    assert (ours(x) - base(x)).abs().max() > 1e-2
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


BASE = ["model.base=builtin:tiny-sd1", 'checkpoints.exports=["kohya_lora"]', "schedule.steps=2"]


def test_unet_norm_offsets_train_resume_and_load_in_lycoris(pipe, tmp_path, monkeypatch):
    spec = _converted(tmp_path, "full", "--network_train_unet_only")
    plan = compile_spec(spec, [*BASE, "output.dir=whole"])
    assert plan.adapter.denoiser_norms and plan.train_denoiser and not plan.train_text_encoder
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts = compile_spec(spec, [*BASE, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    assert first.status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    tensors, resumed = load_file(str(export)), load_file(str(again))
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    offsets = {k for k in tensors if k.endswith(("w_norm", "b_norm"))}
    assert "lora_unet_mid_block_resnets_0_norm1.w_norm" in offsets
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm3.b_norm" in offsets
    assert all(tensors[k].abs().max() > 0 for k in offsets)  # trained away from LyCORIS's zeros
    saved = load_file(str(Path(whole.final) / "denoiser_norms.safetensors"))
    assert saved and all(k.startswith("unet.") for k in saved)

    # lycoris-lora's loader on the base U-Net: its LoCon and Norm modules give the trained U-Net's output
    unet = copy.deepcopy(pipe.unet).float()
    for attr in NETWORK_ATTRS[1:4]:  # the loader's network builds its preset's modules first: none here
        monkeypatch.setattr(lycoris_kohya.LycorisNetworkKohya, attr, [])
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, nn.Module(), unet, for_inference=True
    )
    assert {type(m).__name__ for m in network.unet_loras} == {"LoConModule", "NormModule"}
    torch.manual_seed(1)
    cfg = unet.config
    sample = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    context = torch.randn(1, 5, cfg.cross_attention_dim)
    t = torch.tensor([500])
    with torch.no_grad():
        plain = unet.eval()(sample, t, context).sample
    network.apply_to(nn.Module(), unet, apply_text_encoder=False, apply_unet=True)
    network.load_state_dict(weights, strict=False)
    trained = whole.components.unet.float().eval()
    with torch.no_grad():
        ours = trained(sample, t, context).sample
        theirs = unet.eval()(sample, t, context).sample
    assert (ours - plain).abs().max() > 1e-3  # the trained U-Net differs from the base
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    # `dbspec sample` on the run's folder: the base model, the run's adapters and its norm offsets. The
    # offsets compared with the adapters off on both: diffusers' load_lora_weights leaves out some of this
    # LoCon's layers (their config lists them, its state dict conversion drops them), which is not the norms'
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dbspec.runtime.sample import SampleRequest, load_pipeline

    sampled = load_pipeline(SampleRequest(source=Path(whole.output), settings=None)).unet.float().eval()
    assert sum(1 for _ in norm_layers(sampled)) == sum(1 for _ in norm_layers(trained)) > 0
    for model in (sampled, trained):
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(False)
    with torch.no_grad():
        norms_alone = trained(sample, t, context).sample
        assert (norms_alone - plain).abs().max() > 1e-3
        torch.testing.assert_close(sampled(sample, t, context).sample, norms_alone, rtol=0, atol=1e-5)


# NormModules alone: two U-Net norms and CLIP's final LayerNorm by name, no Linear or convolution
NORMS_ONLY = """\
unet_target_module = []
unet_target_name = ["conv_norm_out", 'mid_block\\.resnets\\.0\\.norm1']
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.final_layer_norm']
"""


def test_norm_offsets_alone_train_resume_and_load_in_lycoris(pipe, tmp_path, monkeypatch):
    """A network of NormModules only: no adapter on either model, the offsets alone train (the U-Net's and
    CLIP's), resume bit-exact, and the export (NormModule tensors only) loads in lycoris-lora with both
    trained models' outputs; `dbspec sample` loads them back."""
    spec = _converted(tmp_path, "p.toml", text=NORMS_ONLY)
    plan = compile_spec(spec, [*BASE, "output.dir=whole"])
    a = plan.adapter
    assert (a.denoiser_targets, a.text_encoder_targets, a.conv_rank) == ((), (), 0)
    assert set(a.denoiser_norms) == {"conv_norm_out", "mid_block.resnets.0.norm1"}
    assert a.text_encoder_norms == ("final_layer_norm",) and plan.train_text_encoder
    whole = execute(plan, keep_models=True)
    parts = compile_spec(spec, [*BASE, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert whole.status == second.status == "finished" and first.status == "interrupted"
    assert first.losses + second.losses == whole.losses
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    tensors, resumed = load_file(str(export)), load_file(str(again))
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    assert {k.split(".")[0] for k in tensors} == {
        "lora_unet_conv_norm_out",
        "lora_unet_mid_block_resnets_0_norm1",
        "lora_te_text_model_final_layer_norm",
    }

    unet, clip = copy.deepcopy(pipe.unet).float(), copy.deepcopy(pipe.text_encoder).float()
    named = nn.Module()
    named.text_model = clip  # kohya's CLIP names its modules text_model.*
    for attr in NETWORK_ATTRS[1:4]:  # the loader's network builds its preset's modules first: none here
        monkeypatch.setattr(lycoris_kohya.LycorisNetworkKohya, attr, [])
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, named, unet, for_inference=True
    )
    assert {type(m).__name__ for m in [*network.unet_loras, *network.text_encoder_loras]} == {"NormModule"}
    network.apply_to(named, unet, apply_text_encoder=True, apply_unet=True)
    network.load_state_dict(weights, strict=False)
    torch.manual_seed(1)
    cfg = unet.config
    sample = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    context, t = torch.randn(1, 5, cfg.cross_attention_dim), torch.tensor([500])
    ids = torch.arange(7).unsqueeze(0) % clip.config.vocab_size
    trained_unet = whole.components.unet.float().eval()
    trained_clip = whole.components.text_encoders[0].float().eval()
    with torch.no_grad():
        ours = trained_unet(sample, t, context).sample
        torch.testing.assert_close(unet.eval()(sample, t, context).sample, ours, rtol=0, atol=1e-4)
        torch.testing.assert_close(
            clip.eval()(ids).last_hidden_state, trained_clip(ids).last_hidden_state, rtol=0, atol=1e-4
        )
        assert (ours - pipe.unet.float().eval()(sample, t, context).sample).abs().max() > 1e-3

    from dbspec.runtime.sample import SampleRequest, load_pipeline

    sampled = load_pipeline(SampleRequest(source=Path(whole.output), settings=None))
    with torch.no_grad():
        torch.testing.assert_close(
            sampled.unet.float().eval()(sample, t, context).sample, ours, rtol=0, atol=1e-5
        )
        text = sampled.text_encoder.float().eval()(ids).last_hidden_state
        torch.testing.assert_close(text, trained_clip(ids).last_hidden_state, rtol=0, atol=1e-5)
