"""LyCORIS `train_norm=True` (lycoris.kohya network_args) on kohya's SD 1.x / 2.x (train_network.py) and SDXL
(sdxl_train_network.py) models: create_single_module gives each module whose class name holds "Norm" that
the preset's walk reaches a NormModule (lycoris/modules/norms.py), whatever the algo. The built-in presets
reach the U-Net's GroupNorms / LayerNorms inside Transformer2DModel and ResnetBlock2D (`[adapter]
denoiser_norms`), none of CLIP's; a preset file may reach CLIP's LayerNorms (`text_encoder_norms`).
tests/runtime/test_lycoris_unet_norms.py checks the listed layers against lycoris-lora's own network on the
tiny SD 1.x model, and trains, resumes and reloads them."""

from __future__ import annotations

import pytest

from convert_kit import (  # noqa: F401
    SD15,
    SD21,
    SDXL,
    codes,
    expressible,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
)

# diffusers' SD 1.x U-Net: the norms of Transformer2DModel (its GroupNorm `norm`, its blocks' LayerNorms
# norm1-3) and of ResnetBlock2D (GroupNorms norm1 / norm2); never conv_norm_out (no preset class holds it)
EVERY = ("norm", "norm1", "norm2", "norm3")


def _convert(tmp_path, args: str, model: str = SD15, script: str = "train_network.py", extra: str = ""):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={model} --train_data_dir=x "
        f"--resolution=512 --network_module=lycoris.kohya --network_dim=8 --network_alpha=4 "
        f"--network_args {args} --learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors "
        f"{extra}",
    )


def _matches(suffixes: tuple[str, ...], path: str) -> bool:
    return any(path == s or path.endswith("." + s) for s in suffixes)


@pytest.mark.parametrize("model, extra", [(SD15, ""), (SD21, "--v2 --v_parameterization")])
def test_full_preset_offsets_every_transformer_and_resnet_norm(tmp_path, model, extra):
    outcome = expressible(_convert(tmp_path, '"algo=locon" "train_norm=True"', model, extra=extra))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "lora" and set(a.denoiser_norms) == set(EVERY) and a.text_encoder_norms == ()
    assert plan.train_denoiser and fate(outcome, "network_args") == "mapped"


def test_sdxl_transformer_preset_offsets_the_transformers_norms_alone(tmp_path):
    """attn-mlp on kohya's SDXL U-Net: Transformer2DModel's norms, not the ResNets' (norm1 / norm2 there):
    the blocks' LayerNorms by their transformer_blocks index (SDXL's attentions are 2 and 10 deep)."""
    outcome = expressible(
        _convert(tmp_path, '"algo=lokr" "preset=attn-mlp" "train_norm=True"', SDXL, "sdxl_train_network.py")
    )
    norms = plan_of(outcome, tmp_path).adapter.denoiser_norms
    resnet = "down_blocks.1.resnets.0.norm1"
    transformer = [
        f"mid_block.attentions.0.transformer_blocks.{k}.norm{i}" for k in range(10) for i in (1, 2, 3)
    ]
    assert not _matches(norms, resnet) and not _matches(norms, "conv_norm_out")
    assert all(_matches(norms, p) for p in [*transformer, "down_blocks.2.attentions.1.norm"])


def test_convblock_preset_offsets_the_resnet_norms_alone(tmp_path):
    outcome = expressible(_convert(tmp_path, '"algo=loha" "preset=unet-convblock-only" "train_norm=True"'))
    norms = plan_of(outcome, tmp_path).adapter.denoiser_norms
    assert _matches(norms, "up_blocks.3.resnets.2.norm2") and _matches(norms, "mid_block.resnets.1.norm1")
    assert not _matches(norms, "down_blocks.0.attentions.0.transformer_blocks.0.norm1")
    assert not _matches(norms, "down_blocks.0.attentions.0.norm")


def test_attn_only_reaches_no_norm(tmp_path):
    """attn-only's classes (CrossAttention; CLIPAttention) hold no norm: train_norm builds nothing."""
    outcome = expressible(_convert(tmp_path, '"algo=lora" "preset=attn-only" "train_norm=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.denoiser_norms == () and a.text_encoder_norms == ()
    assert fate(outcome, "network_args train_norm") == "inert"


def test_unet_only_training_drops_nothing_of_the_unet(tmp_path):
    """network_train_unet_only: apply_to drops the text encoder's modules; the U-Net's NormModules stay."""
    outcome = expressible(
        _convert(tmp_path, '"algo=lora" "train_norm=True"', extra="--network_train_unet_only")
    )
    plan = plan_of(outcome, tmp_path)
    assert set(plan.adapter.denoiser_norms) == set(EVERY) and not plan.train_text_encoder


@pytest.mark.parametrize("algo", ["ia3", "diag-oft", "glora", "boft"])
def test_train_norm_beside_other_algos(tmp_path, algo):
    """LyCORIS gives the norms NormModules whatever the algo (was DBS403 beside these): the same offsets
    (tests/runtime/test_lycoris_sd_boft_norm_file.py beside BOFT)."""
    outcome = expressible(_convert(tmp_path, f'"algo={algo}" "train_norm=True" "conv_dim=0"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and set(a.denoiser_norms) == set(EVERY)


@pytest.mark.parametrize(
    "algo, drops",
    [
        ("ia3", '"module_dropout=0.2"'),  # (was DBS403) IA3Module's own draw
        ("ia3", '"rank_dropout=0.1" "module_dropout=0.2"'),  # NormModule's alone (IA3Module's unread)
        ("diag-oft", '"rank_dropout=0.1" "module_dropout=0.2"'),  # (was DBS403) DiagOFTModule's too
        ("diag-oft", '"rank_dropout=0.1" "module_dropout=0.2" "bypass_mode=True"'),  # NormModule's
        ("boft", '"rank_dropout=0.1" "module_dropout=0.2"'),  # (was DBS403) BOFT never reads rank_dropout
        ("glora", '"rank_dropout=0.1"'),  # (was DBS403) GLoRA reads it in bypass_mode only
        ("boft", '"module_dropout=0.2"'),  # (was DBS403) ButterflyOFTModule's own draw
        ("glora", '"module_dropout=0.2"'),
        ("glora", '"rank_dropout=0.1" "module_dropout=0.2" "bypass_mode=True"'),
        ("dylora", '"rank_dropout=0.1" "module_dropout=0.2"'),  # (was DBS403) DyloraModule never reads it
    ],
)
def test_train_norm_with_the_networks_dropouts(tmp_path, algo, drops):
    """NormModule draws the network's module_dropout / rank_dropout between the other modules' forwards: the
    offsets draw them in forward order (tests/runtime/test_lycoris_norm_dropouts.py checks the draws against
    lycoris-lora's network). A rank_dropout the kind's modules never read (BOFT, DyLoRA, GLoRA outside
    bypass_mode; was DBS403) is the offsets' alone: `norm_rank_dropout`, the adapter's rank_dropout 0."""
    outcome = _convert(tmp_path, f'"algo={algo}" "train_norm=True" "conv_dim=0" {drops}')
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert a.kind == algo and set(a.denoiser_norms) == set(EVERY)
    assert a.module_dropout == (0.2 if "module_dropout" in drops else 0.0)
    rate = 0.1 if "rank_dropout" in drops else 0.0
    alone = algo in ("boft", "dylora") or (algo == "glora" and "bypass" not in drops)
    assert a.rank_dropout == (0.0 if alone else rate) and a.norm_rank_dropout == rate
    if alone and rate:
        report = outcome.conversion.reports["network_args rank_dropout"]
        assert (report.fate, report.target) == ("mapped", "adapter.norm_rank_dropout")
        assert "norm_rank_dropout = 0.1" in out_path(tmp_path).read_text()
        assert not {"DBS405", "DBS556"} & codes(outcome)


def test_train_norm_beside_dylora(tmp_path):
    """(was DBS403) the offsets beside LyCORIS's DyloraModules, its module_dropout drawn by both in forward
    order (tests/runtime/test_lycoris_dylora_norms.py against lycoris-lora's network)."""
    outcome = expressible(_convert(tmp_path, '"algo=dylora" "train_norm=True" "module_dropout=0.2"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "dylora" and set(a.denoiser_norms) == set(EVERY) and a.module_dropout == 0.2
    assert a.norm_rank_dropout == 0.0


def test_rank_dropout_without_norms_stays_ignored(tmp_path):
    """train_norm reaching no norm (attn-only): BOFT's rank_dropout is read by nothing (DBS405), no
    norm_rank_dropout."""
    outcome = expressible(
        _convert(tmp_path, '"algo=boft" "train_norm=True" "preset=attn-only" "rank_dropout=0.1"')
    )
    assert plan_of(outcome, tmp_path).adapter.norm_rank_dropout == 0.0
    assert fate(outcome, "network_args rank_dropout") == "inert" and "DBS405" in codes(outcome)


PRESET = """\
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ["conv_norm_out"]
text_encoder_target_module = ["CLIPEncoderLayer"]
"""


@pytest.mark.parametrize("model, script", [(SD15, "train_network.py"), (SDXL, "sdxl_train_network.py")])
def test_preset_file_reaching_clip_and_unet_norms(tmp_path, model, script):
    """A file's classes and names: the ResNets' norms, conv_norm_out by name (kohya's SDXL calls it out.0,
    so the name matches nothing there) and every CLIP encoder layer's LayerNorms (both of SDXL's encoders:
    one list)."""
    (tmp_path / "p.toml").write_text(PRESET, encoding="utf-8")
    outcome = expressible(_convert(tmp_path, '"algo=lora" "preset=p.toml" "train_norm=True"', model, script))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert set(a.text_encoder_norms) == {"layer_norm1", "layer_norm2"} and plan.train_text_encoder
    assert _matches(a.denoiser_norms, "up_blocks.0.resnets.1.norm2")
    assert _matches(a.denoiser_norms, "conv_norm_out") == (model == SD15)
    assert not _matches(a.denoiser_norms, "mid_block.attentions.0.norm")


def test_preset_file_of_norms_alone(tmp_path):
    """A file reaching only norms: the network's modules are NormModules alone (no adapter layer)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = []\nunet_target_name = ["conv_norm_out"]\ntext_encoder_target_module = []\n'
        "text_encoder_target_name = ['text_model\\.final_layer_norm']\n",
        encoding="utf-8",
    )
    outcome = expressible(_convert(tmp_path, '"algo=lora" "preset=p.toml" "train_norm=True"'))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.denoiser_norms == ("conv_norm_out",) and a.text_encoder_norms == ("final_layer_norm",)
    assert a.denoiser_targets == () and a.text_encoder_targets == ()
    assert plan.train_denoiser and plan.train_text_encoder


def test_sdxl_file_reaching_norms_of_one_encoder(tmp_path):
    """OpenCLIP bigG's layer 20 exists in it alone: SDXL's CLIP-L has bigG's first 12 layers' paths and
    classes, so one list names each encoder's norms exactly (none in CLIP-L here)."""
    (tmp_path / "p.toml").write_text(
        "text_encoder_target_module = []\n"
        "text_encoder_target_name = ['text_model\\.encoder\\.layers\\.20\\.']\n",
        encoding="utf-8",
    )
    outcome = expressible(
        _convert(tmp_path, '"algo=lora" "preset=p.toml" "train_norm=True"', SDXL, "sdxl_train_network.py")
    )
    norms = plan_of(outcome, tmp_path).adapter.text_encoder_norms
    assert set(norms) == {"layers.20.layer_norm1", "layers.20.layer_norm2"}


def test_sdxl_file_reaching_one_encoders_root_class_gives_each_its_norms(tmp_path):
    """`CLIPTextModel` is CLIP-L's root class alone (OpenCLIP bigG's is CLIPTextModelWithProjection): every
    CLIP-L LayerNorm, none of bigG's, which one list cannot name: the second encoder's own
    text_encoder_2_norms (empty), and bigG does not train (no module there)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["Transformer2DModel"]\ntext_encoder_target_module = ["CLIPTextModel"]\n',
        encoding="utf-8",
    )
    outcome = expressible(
        _convert(tmp_path, '"algo=lora" "preset=p.toml" "train_norm=True"', SDXL, "sdxl_train_network.py")
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert set(a.text_encoder_norms) == {"layer_norm1", "layer_norm2", "final_layer_norm"}
    assert a.text_encoder_2_norms == () and a.text_encoder_2_targets == ()
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("lora", "frozen")


def test_sdxl_one_list_fits_both_encoders(tmp_path):
    """CLIPEncoderLayer in both encoders: one list, the second's the same."""
    (tmp_path / "p.toml").write_text('text_encoder_target_module = ["CLIPEncoderLayer"]\n', encoding="utf-8")
    outcome = expressible(
        _convert(tmp_path, '"algo=lora" "preset=p.toml" "train_norm=True"', SDXL, "sdxl_train_network.py")
    )
    a = plan_of(outcome, tmp_path).adapter
    assert a.text_encoder_2_norms == a.text_encoder_norms == ("layer_norm1", "layer_norm2")


def test_network_weights_holding_norm_offsets_start_the_norms(tmp_path):
    """A train_norm run's file: kohya's load_weights loads its w_norm / b_norm into the NormModules, and
    dbspec's run loads them into the norm offsets (runtime/init_weights.py; the numbers against lycoris-lora:
    tests/runtime/test_lycoris_sd_norm_file.py). A file without them starts the adapters alone."""
    import numpy as np
    from safetensors.numpy import save_file

    down = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": np.zeros((8, 1280), np.float32),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": np.zeros((1280, 8), np.float32),
    }
    save_file(
        {**down, "lora_unet_mid_block_resnets_0_norm1.w_norm": np.zeros(1280, np.float32)},
        tmp_path / "a.safetensors",
    )
    save_file(down, tmp_path / "b.safetensors")
    for name in ("a", "b"):
        outcome = expressible(
            _convert(tmp_path, '"algo=lora" "train_norm=True"', extra=f"--network_weights {name}.safetensors")
        )
        assert fate(outcome, "network_weights") == "mapped"
