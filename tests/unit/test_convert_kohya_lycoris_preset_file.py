"""LyCORIS preset files (`network_args preset=<file>.toml`, lycoris.kohya) on SD 1.x / 2.x and SDXL: realistic
kohya command lines and config files convert without --allow-unsupported, pass `dbspec check`, and plan the
layers LyCORIS builds for the file (tests/runtime/test_lycoris_preset_file.py and
test_lycoris_preset_file_sdxl.py build them with lycoris-lora). A file that is not here is unreadable
(DBS401); one LyCORIS refuses, or whose layers it builds twice, stops kohya (DBS402); per-layer algorithms
and other families are not expressed (DBS403). An SDXL file adapting other layers in its two text encoders
gives the second its own adapter.text_encoder_2_targets.
The built-in `ia3` preset matches no layer in lycoris-lora 4.1.3: kohya has nothing to train (DBS402)."""

from __future__ import annotations

import re

from convert_kit import (  # noqa: F401
    SD15,
    SD21,
    SDXL,
    codes,
    empty_hub_cache,
    expressible,
    fate,
    images,
    kohya,
    messages,
    plan_of,
)

ATTN_CONV = """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = []
"""


def _convert(
    tmp_path, preset: str, text: str | None, args: str = "", model: str = SD15, script="train_network.py"
):
    if text is not None:
        (tmp_path / preset).write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={model} --train_data_dir=x "
        "--resolution=512 --network_module=lycoris.kohya --network_dim=8 --network_alpha=4 "
        f'--network_args "algo=lokr" "conv_dim=4" "conv_alpha=1" "preset={preset}" {args} '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


def test_class_and_name_preset_file(tmp_path):
    outcome = expressible(_convert(tmp_path, "attn_conv.toml", ATTN_CONV))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and (a.conv_rank, a.conv_alpha) == (4, 1.0)
    assert set(a.denoiser_targets) == {
        "proj_in",
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
        "proj_out",
    }
    assert a.conv_targets == ("conv_in", "conv_out")
    assert a.text_encoder_targets == ("fc1", "fc2")
    assert fate(outcome, "network_args") == "mapped"


def test_without_conv_dim_no_convolution(tmp_path):
    text = ATTN_CONV.replace("enable_conv = true", "enable_conv = false")
    a = plan_of(expressible(_convert(tmp_path, "p.toml", text)), tmp_path).adapter
    assert a.conv_rank == 0 and "conv_in" not in a.denoiser_targets


def test_sd2_name_patterns_from_a_config_file(tmp_path):
    """Regex names pick some blocks' layers: their full paths (kohya's SD 2.x U-Net, linear projections)."""
    preset = """\
unet_target_module = []
unet_target_name = ['down_blocks\\.1\\..*attn1\\.to_[qk]$', "mid_block.resnets.0.conv1"]
text_encoder_target_module = []
text_encoder_target_name = ["text_model.encoder.layers.2[012].self_attn.q_proj"]
"""
    (tmp_path / "sel.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    (tmp_path / "config.toml").write_text(
        f'pretrained_model_name_or_path = "{SD21}"\nv2 = true\nv_parameterization = true\n'
        'train_data_dir = "x"\nresolution = "512"\nnetwork_module = "lycoris.kohya"\nnetwork_dim = 4\n'
        'network_alpha = 1\nnetwork_args = ["algo=locon", "preset=sel.toml"]\nlearning_rate = 1e-4\n'
        "max_train_steps = 100\n",
        encoding="utf-8",
    )
    outcome = expressible(kohya(tmp_path, command="train_network.py --config_file config.toml"))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and a.conv_rank == 4  # conv_dim defaults to network_dim
    assert set(a.denoiser_targets) == {
        f"down_blocks.1.attentions.{i}.transformer_blocks.0.attn1.to_{x}" for i in (0, 1) for x in "qk"
    }
    assert a.conv_targets == ("mid_block.resnets.0.conv1",)
    # SD 2.x's CLIP as kohya builds it has 23 layers: 20, 21 and 22
    assert a.text_encoder_targets == tuple(f"layers.{i}.self_attn.q_proj" for i in (20, 21, 22))


def test_missing_preset_file_is_unreadable(tmp_path):
    outcome = _convert(tmp_path, "nowhere.toml", None)
    assert "DBS401" in codes(outcome) and "nowhere.toml" in messages(outcome, "DBS401")


def test_unknown_key_stops_kohya(tmp_path):
    outcome = _convert(tmp_path, "bad.toml", ATTN_CONV + 'target_modules = ["Linear"]\n')
    assert "DBS402" in codes(outcome) and "unknown preset keys target_modules" in messages(outcome, "DBS402")


def test_not_toml_stops_kohya(tmp_path):
    outcome = _convert(tmp_path, "bad.toml", "unet_target_module = [\n")
    assert "DBS402" in codes(outcome) and "not TOML" in messages(outcome, "DBS402")


def test_layer_reached_twice_stops_kohya(tmp_path):
    """The class TimestepEmbedding and the names time_embedding.linear_1/2 (LyCORIS's defaults when the file
    leaves unet_target_name out) build the time embedding twice: LyCORIS asserts on the duplicate."""
    text = 'unet_target_module = ["TimestepEmbedding"]\n'
    outcome = _convert(tmp_path, "twice.toml", text)
    assert "DBS402" in codes(outcome) and "time_embedding.linear_1 twice" in messages(outcome, "DBS402")


def test_per_module_algorithm_is_a_block_kind(tmp_path):
    """LoRA/LoCon, LoHa, LoKr, full, ia3, diag-oft, boft, glora, dylora and (was DBS403) LyCORIS's T-LoRA mix
    on the U-Net (a block's kind)."""
    text = ATTN_CONV + '[module_algo_map.CrossAttention]\nalgo = "tlora"\n'
    outcome = _convert(tmp_path, "mixed.toml", text)
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), messages(outcome, "DBS403")
    assert "tlora" in {b.kind for b in plan_of(outcome, tmp_path).adapter.blocks}


def _sdxl(tmp_path, preset: str, text: str):
    return _convert(tmp_path, preset, text, model=SDXL, script="sdxl_train_network.py")


def test_sdxl_attention_only_file(tmp_path):
    """kohya's SDXL U-Net (library/sdxl_original_unet.py) names its attention class CrossAttention; both CLIP
    encoders take the one text-encoder target list."""
    text = (
        'unet_target_module = ["CrossAttention"]\nunet_target_name = []\n'
        'text_encoder_target_module = ["CLIPAttention"]\n'
    )
    plan = plan_of(expressible(_sdxl(tmp_path, "attn.toml", text)), tmp_path)
    a = plan.adapter
    assert plan.model.family == "sdxl" and a.kind == "lokr"
    assert a.denoiser_targets == ("to_q", "to_k", "to_v", "to_out.0") and a.conv_targets == ()
    assert a.text_encoder_targets == ("k_proj", "v_proj", "q_proj", "out_proj")


def test_sdxl_dylora_entry_beside_lokr(tmp_path):
    """SDXL: a DyLoRA entry on kohya's CrossAttention of a LoKr network is a `kind = "dylora"` block on
    diffusers' attention paths in blocks of the network's block_size; both CLIP encoders' attention a DyLoRA
    text-encoder block in the entry's own block_size."""
    text = (
        'unet_target_module = ["CrossAttention", "FeedForward"]\nunet_target_name = []\n'
        'text_encoder_target_module = ["CLIPAttention"]\n'
        '[module_algo_map.CrossAttention]\nalgo = "dylora"\ndim = 8\n'
        '[module_algo_map.CLIPAttention]\nalgo = "dylora"\ndim = 6\nblock_size = 3\n'
    )
    outcome = expressible(
        _convert(tmp_path, "dy.toml", text, '"block_size=2"', SDXL, "sdxl_train_network.py")
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "sdxl" and a.kind == "lokr"
    (block,) = a.blocks
    assert (block.kind, block.rank, block.unit) == ("dylora", 8, 2)
    assert re.search(block.pattern, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
    assert not re.search(block.pattern, "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2")
    assert [(b.kind, b.rank, b.unit) for b in a.text_encoder_blocks] == [("dylora", 6, 3)]


def test_sdxl_conv_file_takes_kohyas_original_names(tmp_path):
    """The file names kohya's original-layout paths (input_blocks.0.0, out.2: conv_in / conv_out); the
    targets are diffusers' (dbspec's SDXL U-Net), the downsamplers' `op` its `conv`."""
    text = """\
enable_conv = true
unet_target_module = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["input_blocks.0.0", "out.2"]
text_encoder_target_module = []
"""
    plan = plan_of(expressible(_sdxl(tmp_path, "conv.toml", text)), tmp_path)
    a = plan.adapter
    assert a.denoiser_targets == ("time_emb_proj", "conv_shortcut")
    assert a.conv_targets == ("conv_in", "conv1", "conv2", "conv", "conv_out")
    assert not plan.train_text_encoder


def test_sdxl_fnmatch_and_exclude_name_from_a_config_file(tmp_path):
    """fnmatch patterns on kohya's SDXL paths: the output blocks, feed-forwards and shortcuts left out, so the
    ResNets' and transformers' layers of the input and middle blocks keep full diffusers paths."""
    preset = """\
use_fnmatch = true
unet_target_module = ["ResnetBlock2D", "Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
exclude_name = ["output_blocks.*", "*.ff.net.*", "*.out_proj", "*.skip_connection"]
"""
    (tmp_path / "sel.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    (tmp_path / "config.toml").write_text(
        f'pretrained_model_name_or_path = "{SDXL}"\ntrain_data_dir = "x"\nresolution = "1024"\n'
        'network_module = "lycoris.kohya"\nnetwork_dim = 8\nnetwork_alpha = 4\n'
        'network_args = ["algo=locon", "conv_dim=4", "preset=sel.toml"]\nlearning_rate = 1e-4\n'
        "max_train_steps = 100\n",
        encoding="utf-8",
    )
    outcome = expressible(kohya(tmp_path, command="sdxl_train_network.py --config_file config.toml"))
    a = plan_of(outcome, tmp_path).adapter
    assert not any(t.startswith("up_blocks") or "ff.net" in t for t in a.denoiser_targets)
    assert "mid_block.attentions.0.transformer_blocks.9.attn2.to_out.0" in a.denoiser_targets
    assert "down_blocks.0.resnets.0.time_emb_proj" in a.denoiser_targets
    assert a.conv_targets[0] == "down_blocks.0.resnets.0.conv1" and "conv_in" not in a.conv_targets
    assert a.text_encoder_targets == ("k_proj", "v_proj", "q_proj", "fc1", "fc2")


def test_sdxl_sd_names_match_nothing(tmp_path):
    """SD's names for the first and last convolutions are not paths of kohya's SDXL U-Net (input_blocks.0.0,
    out.2): a file naming only them builds no module, and kohya has nothing to train."""
    text = 'unet_target_module = []\nunet_target_name = ["conv_in", "conv_out"]\n'
    text += "text_encoder_target_module = []\n"
    outcome = _sdxl(tmp_path, "p.toml", text)
    assert "DBS402" in codes(outcome) and "matches no layer" in messages(outcome, "DBS402")


def test_sdxl_second_encoder_only_layers(tmp_path):
    """OpenCLIP bigG's text_projection, which CLIP-L lacks, is one target for both encoders; a class only one
    encoder has (CLIPTextModelWithProjection, the whole second encoder) gives the second its own
    text_encoder_2_targets, the first adapting nothing (train.text_encoder false, the second training
    alone)."""
    text = 'text_encoder_target_module = []\ntext_encoder_target_name = ["text_projection"]\n'
    a = plan_of(expressible(_sdxl(tmp_path, "proj.toml", text)), tmp_path).adapter
    assert a.text_encoder_targets == a.text_encoder_2_targets == ("text_projection",)
    text = 'text_encoder_target_module = ["CLIPTextModelWithProjection"]\n'
    plan = plan_of(expressible(_sdxl(tmp_path, "whole.toml", text)), tmp_path)
    linears = ("k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2")
    assert plan.adapter.text_encoder_targets == ()
    assert plan.adapter.text_encoder_2_targets == (*linears, "text_projection")
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("frozen", "lora")


def test_ia3_preset_trains_nothing(tmp_path):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x "
        "--resolution=512 "
        '--network_module=lycoris.kohya --network_args "algo=ia3" "preset=ia3" --learning_rate=1e-3',
    )
    assert "DBS402" in codes(outcome) and "DBS403" not in codes(outcome)
    assert "matches no layer" in messages(outcome, "DBS402")


def test_sdpa_attention_class_alone_matches_nothing(tmp_path):
    """kohya pins transformers 4.54.1, whose CLIP has one attention class, CLIPAttention: a file naming only
    the older CLIPSdpaAttention adapts no text-encoder attention (its MLP class still does)."""
    text = ATTN_CONV.replace('["CLIPMLP"]', '["CLIPSdpaAttention", "CLIPMLP"]')
    a = plan_of(expressible(_convert(tmp_path, "p.toml", text)), tmp_path).adapter
    assert a.text_encoder_targets == ("fc1", "fc2")
    text = ATTN_CONV.replace('["CLIPMLP"]', '["CLIPAttention"]')
    a = plan_of(expressible(_convert(tmp_path, "q.toml", text)), tmp_path).adapter
    assert a.text_encoder_targets == ("k_proj", "v_proj", "q_proj", "out_proj")


def test_text_encoder_only_and_unet_only_files(tmp_path):
    """A file that matches no U-Net layer: kohya's network has no U-Net module (train.denoiser = false); one
    that matches no text-encoder layer: no text-encoder module (train.text_encoder = false)."""
    text = "unet_target_module = []\nunet_target_name = []\n"
    plan = plan_of(expressible(_convert(tmp_path, "te.toml", text)), tmp_path)
    assert plan.adapter.text_encoder_targets and plan.train_text_encoder and not plan.train_denoiser
    text = ATTN_CONV.replace('["CLIPMLP"]', "[]")
    plan = plan_of(expressible(_convert(tmp_path, "unet.toml", text)), tmp_path)
    assert plan.adapter.denoiser_targets and not plan.train_text_encoder


def test_file_matching_nothing_stops_kohya(tmp_path):
    text = "unet_target_module = []\nunet_target_name = []\ntext_encoder_target_module = []\n"
    outcome = _convert(tmp_path, "none.toml", text)
    assert "DBS402" in codes(outcome) and "matches no layer" in messages(outcome, "DBS402")
