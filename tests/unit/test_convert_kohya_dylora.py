"""kohya configs training DyLoRA: kohya's own `network_module = "networks.dylora"` (sd-scripts
networks/dylora.py: `unit`, conv_dim asserted equal to network_dim, the convolutions at network_alpha) and
LyCORIS's `network_module = "lycoris.kohya"` with `algo=dylora` (lycoris/modules/dylora.py: `block_size`, 4
unless given), both once refused (DBS403), now [adapter] kind "dylora". The expectations are read from those
two create_network functions, not from the converter."""

from __future__ import annotations

from convert_kit import (  # noqa: F401
    SDXL,
    SD15,
    codes,
    empty_hub_cache,
    errors,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    out_path,
    plan_of,
    write,
)

from dbspec.convert.kohya.network import KOHYA_TEXT_TARGETS, KOHYA_UNET_TARGETS
from dbspec.spec.model import KOHYA_CONV_TARGETS

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "{module}"
network_dim = {dim}
network_alpha = 4
network_args = [{args}]
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _convert(tmp_path, module: str, args: str, dim: int = 8):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", CONFIG.format(model=SD15, module=module, dim=dim, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_networks_dylora_unit_and_its_layers(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", '"unit=2"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 2, "kohya")
    assert a.denoiser_targets == tuple(KOHYA_UNET_TARGETS) and a.text_encoder_targets == tuple(
        KOHYA_TEXT_TARGETS
    )
    assert (a.conv_rank, a.conv_targets) == (0, ())
    assert fate(outcome, "network_module") == "mapped"


def test_networks_dylora_unit_defaults_to_one(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", "")
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.dylora_unit == 1


def test_networks_dylora_conv_dim_takes_network_alpha(tmp_path):
    """DyLoRANetwork: conv_dim must equal network_dim; the ResNets' layers get network_dim and network_alpha
    (conv_alpha is parsed, never used), their time projection and shortcut too."""
    outcome = _convert(tmp_path, "networks.dylora", '"unit=4", "conv_dim=8", "conv_alpha=1"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, a.conv_targets) == (8, 4.0, tuple(KOHYA_CONV_TARGETS))
    assert {"time_emb_proj", "conv_shortcut"} <= set(a.denoiser_targets)
    assert "conv_alpha" in outcome.conversion.reports["network_args conv_alpha"].note


def test_networks_dylora_refuses_what_kohya_asserts(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", '"conv_dim=4"')
    assert outcome.exit_code == 1 and "conv_dim" in " ".join(errors(outcome))
    outcome = _convert(tmp_path, "networks.dylora", '"unit=3"')
    assert outcome.exit_code == 1 and "unit" in " ".join(errors(outcome))


def test_lycoris_dylora_block_size_defaults_to_four(tmp_path):
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "conv_dim=4", "conv_alpha=2"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 4, "lycoris")
    assert (a.conv_rank, a.conv_alpha) == (4, 2.0) and a.conv_targets
    assert not a.dora and not a.tucker and not a.rank_dropout


def test_lycoris_dylora_block_size_and_the_arguments_it_never_reads(tmp_path):
    outcome = _convert(
        tmp_path,
        "lycoris.kohya",
        '"algo=dylora", "block_size=2", "dropout=0.1", "rank_dropout=0.2", "dora_wd=True"',
    )
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dylora_unit, a.conv_rank, a.dora, a.rank_dropout) == (2, 8, False, 0.0)
    assert fate(outcome, "network_args dropout") == "inert"


def test_lycoris_dylora_module_dropout(tmp_path):
    """DyLoraModule.forward skips the layer with probability module_dropout while training (issue 12)."""
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "module_dropout=0.25"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.module_dropout, a.bypass) == ("dylora", "lycoris", 0.25, False)
    assert fate(outcome, "network_args") == "mapped"


def test_lycoris_dylora_block_size_off_the_ranks_is_its_assertion(tmp_path):
    """DyLoraModule asserts lora_dim % block_size == 0: kohya's run stops (DBS402), for the linears' rank and
    for conv_dim alike."""
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "block_size=3"', dim=8)
    assert outcome.exit_code == 1 and codes(outcome) >= {"DBS402"}
    assert "lora_dim % block_size" in messages(outcome, "DBS402") and "network_dim 8" in messages(
        outcome, "DBS402"
    )
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "block_size=4", "conv_dim=6"', dim=8)
    assert outcome.exit_code == 1 and "conv_dim 6" in messages(outcome, "DBS402")
    assert "DBS403" not in codes(outcome)


BYPASS = (
    "--network_module lycoris.kohya --network_dim 4 --network_alpha 2 "
    "--network_args algo=dylora preset={preset} bypass_mode={on} block_size={block}"
)


def test_lycoris_dylora_bypass_with_one_block(tmp_path):
    """bypass_mode with one block per layer (network_dim = block_size, conv_dim defaulting to it): LyCORIS's
    bypass forward runs, W x + up (down x) unscaled: adapter.bypass (issue 12)."""
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="full", on="True", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.bypass, a.conv_rank) == ("dylora", 4, 2.0, 4, True, 4)
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-mlp", on="True", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass is True
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-only", on="false", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass is False  # LyCORIS's str_bool


def test_lycoris_dylora_bypass_that_crashes_is_invalid(tmp_path):
    """Several blocks in a layer (its bypass forward views the drawn blocks as the whole rank): LyCORIS
    crashes in the first steps, DBS402 naming why; a conv_dim above block_size alike."""
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-mlp", on="True", block=2))
    assert outcome.exit_code == 1 and "network_dim 4" in messages(outcome, "DBS402")
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="full", on="True", block=4) + " conv_dim=8")
    assert outcome.exit_code == 1 and "conv_dim 8" in messages(outcome, "DBS402")
    assert "network_dim" not in messages(outcome, "DBS402")


def test_networks_dylora_loraplus(tmp_path):
    """DyLoRANetwork.prepare_optimizer_params: each lora_B block at lr x (loraplus_unet_lr_ratio or
    loraplus_lr_ratio) in the U-Net, x (loraplus_text_encoder_lr_ratio or loraplus_lr_ratio) in the text
    encoder (issue 12)."""
    outcome = _convert(tmp_path, "networks.dylora", '"unit=2", "loraplus_lr_ratio=16"')
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (
        16.0,
        16.0,
    )
    assert plan.adapter.kind == "dylora" and fate(outcome, "network_args") == "mapped"
    outcome = _convert(
        tmp_path,
        "networks.dylora",
        '"loraplus_lr_ratio=16", "loraplus_unet_lr_ratio=8", "loraplus_text_encoder_lr_ratio=4"',
    )
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (8.0, 4.0)
    # the plus groups at rate 0, skipped: the ups stay out of the optimizer (was DBS403)
    outcome = _convert(tmp_path, "networks.dylora", '"loraplus_lr_ratio=0"')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).optimizer.loraplus_held == ("denoiser", "text_encoder")


def test_networks_dylora_unknown_loraplus_key_is_ignored(tmp_path):
    """networks/dylora.py's create_network reads its three loraplus_* keys by name and no other: a misspelt
    one changes nothing (DBS405; was DBS403), the ratio it does read still maps (issue 12)."""
    outcome = _convert(
        tmp_path, "networks.dylora", '"unit=2", "loraplus_lr_ratio=16", "loraplus_unet_ratio=4"'
    )
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_args loraplus_unet_ratio") == "inert"
    assert "networks.dylora's create_network does not read it" in messages(outcome, "DBS405")
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (
        16.0,
        16.0,
    )
    assert plan.adapter.kind == "dylora" and plan.adapter.dylora_unit == 2


def test_the_plan_summary_shows_the_dylora_draw(tmp_path):
    from dbspec.plan.summary import adapter_rows

    outcome = _convert(tmp_path, "networks.dylora", '"unit=2"')
    rows = dict(adapter_rows(plan_of(outcome, tmp_path).adapter))
    assert rows["adapter"] == "dylora (kohya's forward, blocks of 2 ranks) rank 8, alpha 4"
    assert "sqrt(rank / ((b + 1) x unit))" in rows["  rank draw"]
    assert "every rank at alpha / rank" in rows["  full rank"]


# --- --network_weights files (issue 12) ---
# kohya's module names for SD 1.5 (tests/unit/test_init_weights.py writes the files byte by byte)
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
OUT = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
TE_FC = "lora_te_text_model_encoder_layers_11_mlp_fc2"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
SHORTCUT = "lora_unet_up_blocks_0_resnets_0_conv_shortcut"

FROM_WEIGHTS = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "{module}"
network_dim = 16
network_alpha = 8
network_args = [{args}]
network_weights = "prev.safetensors"
{extra}
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _from_file(tmp_path, modules: dict, module: str, args: str, extra: str = ""):
    from tests.unit.test_init_weights import write_lora

    write_lora(tmp_path / "prev.safetensors", modules)
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    text = FROM_WEIGHTS.format(model=SD15, module=module, args=args, extra=extra)
    write(tmp_path / "cfg.toml", text)
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def _matches(blocks, name: str, prefix: str = "lora_unet_"):
    """The first block whose pattern matches kohya's module `name` read as a diffusers path."""
    import re

    tail = name.removeprefix(prefix)
    return next(
        b for b in blocks if re.search(b.pattern, tail) or re.search(b.pattern, tail.replace("_", "."))
    )


def test_networks_dylora_dim_from_weights_builds_each_module_from_the_file(tmp_path):
    """networks/dylora.py create_network_from_weights: one DyLoRAModule per module of the file at its
    lora_down's rows and its alpha, none elsewhere (the ResNets scanned), DyLoRANetwork's unit 1; the
    network_args reach it as **kwargs it never reads, network_dim / network_alpha / network_dropout go to no
    network; load_weights then loads the file."""
    modules = {
        Q: (8, 4.0, 320, 0),
        OUT: (4, 2.0, 320, 0),  # its own rank and alpha
        CONV: (4, 1.0, 320, 3),  # a 3x3 convolution: conv_rank
        SHORTCUT: (8, 4.0, 640, 1),  # a 1x1 convolution of a ResNet: a linear rank
        TE: (8, 4.0, 768, 0),
        TE_FC: (2, 1.0, 768, 0),
    }
    outcome = _from_file(
        tmp_path,
        modules,
        "networks.dylora",
        '"unit=4", "conv_dim=16", "loraplus_lr_ratio=4"',
        "dim_from_weights = true\nnetwork_dropout = 0.1",
    )
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped"
    assert fate(outcome, "network_dim") == fate(outcome, "network_alpha") == "inert"
    assert fate(outcome, "network_args") == fate(outcome, "network_dropout") == "inert"  # DBS405
    assert "create_network_from_weights" in messages(outcome, "DBS405")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.dylora_unit, a.rank, a.alpha) == ("dylora", "kohya", 1, 8, 4.0)
    assert (a.conv_rank, a.conv_alpha) == (4, 1.0)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (0, 0)
    assert a.denoiser_targets == (*KOHYA_UNET_TARGETS, "time_emb_proj", "conv_shortcut")
    for name, (rank, alpha) in {Q: (8, 4.0), OUT: (4, 2.0), SHORTCUT: (8, 4.0)}.items():
        block = _matches(a.blocks, name)
        assert (block.rank, block.alpha) == (rank, alpha), name
    block = _matches(a.blocks, CONV)
    assert (block.rank, block.conv_rank, block.conv_alpha) == (0, 4, 1.0)
    assert (a.blocks[-1].pattern, a.blocks[-1].rank) == ("^", 0)  # kohya builds none the file lacks
    text = a.text_encoder_blocks
    assert [(b.rank, b.alpha) for b in text] == [(8, 4.0), (2, 1.0), (0, 1.0)]
    assert a.init_weights.endswith("prev.safetensors") and a.init_partial and a.init_layers == 6


def test_networks_dylora_dim_from_weights_without_an_alpha_is_kohyas_crash(tmp_path):
    """create_network_from_weights: `modules_alpha = modules_dim[key]` for a module without alpha turns the
    alpha table into an int, and the next lookup raises TypeError."""
    outcome = _from_file(
        tmp_path,
        {Q: (8, 4.0, 320, 0), OUT: (8, None, 320, 0)},
        "networks.dylora",
        "",
        "dim_from_weights = true",
    )
    assert outcome.exit_code == 1 and fate(outcome, "dim_from_weights") == "invalid"
    assert "modules_alpha = modules_dim[key]" in outcome.conversion.reports["dim_from_weights"].note


def test_networks_dylora_dim_from_weights_without_a_file_is_kohyas_crash(tmp_path):
    """train_network.py calls create_network_from_weights(1, None, ...): os.path.splitext(None) raises."""
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    text = FROM_WEIGHTS.format(model=SD15, module="networks.dylora", args="", extra="dim_from_weights = true")
    write(tmp_path / "cfg.toml", text.replace('network_weights = "prev.safetensors"\n', ""))
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and fate(outcome, "dim_from_weights") == "invalid"


def test_networks_dylora_scale_weight_norms_is_ignored(tmp_path):
    """train_network.py: `scale_weight_norms` with a network without apply_max_norm_regularization
    (DyLoRANetwork has none) logs a warning and sets it False."""
    outcome = _from_file(tmp_path, {Q: (16, 8.0, 320, 0)}, "networks.dylora", "", "scale_weight_norms = 1.0")
    assert outcome.exit_code == 0 and fate(outcome, "scale_weight_norms") == "inert", errors(outcome)
    assert "apply_max_norm_regularization" in messages(outcome, "DBS405")
    assert plan_of(outcome, tmp_path).adapter.max_norm == 0


def test_networks_dylora_base_weights_is_kohyas_crash(tmp_path):
    """train_network.py merges --base_weights with the network module's create_network_from_weights(...)
    .merge_to, and networks/dylora.py has DyLoRANetwork.merge_to inside a string (commented out)."""
    outcome = _from_file(
        tmp_path,
        {Q: (8, 4.0, 320, 0)},
        "networks.dylora",
        "",
        'base_weights = ["prev.safetensors"]\nbase_weights_multiplier = [0.5]',
    )
    assert outcome.exit_code == 1 and fate(outcome, "base_weights") == "invalid"
    assert "merge_to" in outcome.conversion.reports["base_weights"].note


def test_lycoris_dylora_network_weights_takes_only_the_files_alphas(tmp_path):
    """LycorisNetworkKohya.load_weights: load_state_dict(strict=False); DyLoraModule's weights are up_list /
    down_list, so only each layer's alpha buffer loads (float32) and scales it (get_weight: alpha / (b + 1)).
    The run starts from a fresh init at network_dim / conv_dim; the file's layers at the file's alphas, the
    others (and a module without alpha) at network_alpha / conv_alpha."""
    modules = {
        Q: (4, 2.0, 320, 0),  # another rank in the file: its lora_down / lora_up never load
        OUT: (8, 8.0, 320, 0),  # the network's alpha already
        SHORTCUT: (8, None, 640, 1),  # no alpha: keeps the network's
        CONV: (8, 3.0, 320, 3),
        TE: (8, 0.1, 768, 0),
    }
    outcome = _from_file(tmp_path, modules, "lycoris.kohya", '"algo=dylora", "conv_dim=8", "conv_alpha=4"')
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.dylora_unit, a.rank, a.alpha) == ("dylora", "lycoris", 4, 16, 8.0)
    assert (a.conv_rank, a.conv_alpha, a.init_weights) == (8, 4.0, "")  # nothing else loads
    assert len(a.blocks) == 2 and all(b.rank == 16 and b.conv_rank == 8 for b in a.blocks)
    assert (_matches(a.blocks, Q).alpha, _matches(a.blocks, Q).conv_alpha) == (2.0, 4.0)
    assert (_matches(a.blocks, CONV).alpha, _matches(a.blocks, CONV).conv_alpha) == (8.0, 3.0)
    (text,) = a.text_encoder_blocks
    assert (text.rank, text.alpha) == (16, struct_f32(0.1))  # the float16 file value, as float32 holds it
    assert text.pattern.startswith("^(text_encoder")


def struct_f32(value: float) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<f", struct.unpack("<e", struct.pack("<e", value))[0]))[0]


def test_lycoris_dylora_network_weights_at_the_networks_alphas_changes_nothing(tmp_path):
    outcome = _from_file(
        tmp_path, {Q: (4, 8.0, 320, 0), TE: (8, 8.0, 768, 0)}, "lycoris.kohya", '"algo=dylora"'
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_weights") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.blocks, a.text_encoder_blocks, a.init_weights, a.alpha) == ((), (), "", 8.0)


def test_lycoris_dylora_network_weights_at_alpha_zero_build_no_layer_there(tmp_path):
    """A file alpha of 0: LyCORIS copies it into DyLoraModule's buffer after the build that reads 0 as the
    rank, so get_weight scales the layer's update by 0 / (b + 1): output the base layer's, gradients exactly
    0 (tests/runtime/test_dylora_weights.py runs lycoris-lora 4.1.3's module so), lora_up never leaving its
    zero init. Was DBS403; now the layer is not built (rank 0 / conv_rank 0 blocks), the file's other alphas
    as before."""
    modules = {
        Q: (4, 0.0, 320, 0),
        OUT: (8, 2.0, 320, 0),
        CONV: (8, 0.0, 320, 3),
        TE: (8, 0.0, 768, 0),
    }
    outcome = _from_file(tmp_path, modules, "lycoris.kohya", '"algo=dylora", "conv_dim=8", "conv_alpha=4"')
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("dylora", 16, 8.0, 8, 4.0)
    assert _matches(a.blocks, Q).rank == 0  # not built
    assert (_matches(a.blocks, OUT).rank, _matches(a.blocks, OUT).alpha) == (16, 2.0)
    assert _matches(a.blocks, CONV).conv_rank == 0
    (text,) = a.text_encoder_blocks
    assert text.rank == 0 and text.pattern.startswith("^(text_encoder")


def test_lycoris_dylora_network_weights_at_alpha_zero_in_bypass_mode_train_at_the_rank(tmp_path):
    """bypass_mode: DyLoraModule's bypass forward never reads the alpha (up(down(x)), unscaled), so a file
    alpha of 0 trains as any other; its saved alpha 0 loads as the rank (scale 1): the block's alpha is the
    rank, the update unscaled as trained."""
    args = '"algo=dylora", "block_size=16", "bypass_mode=True"'
    outcome = _from_file(tmp_path, {Q: (4, 0.0, 320, 0), TE: (8, 0.0, 768, 0)}, "lycoris.kohya", args)
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.bypass and (_matches(a.blocks, Q).rank, _matches(a.blocks, Q).alpha) == (16, 16.0)
    (text,) = a.text_encoder_blocks
    assert (text.rank, text.alpha) == (16, 16.0)


def test_lycoris_dylora_network_weights_at_alpha_zero_with_module_dropout_builds_it_scaled_by_zero(tmp_path):
    """With module_dropout the zeroed layer still draws torch.rand(1) in every training forward: the layer is
    built at the network's rank with its update scaled by 0 (a block's zero_scale; was DBS403), a 3x3
    convolution's and a text layer's alike; the file's other alphas as before."""
    modules = {Q: (4, 0.0, 320, 0), OUT: (8, 2.0, 320, 0), CONV: (8, 0.0, 320, 3), TE: (8, 0.0, 768, 0)}
    args = '"algo=dylora", "conv_dim=8", "conv_alpha=4", "module_dropout=0.1"'
    outcome = _from_file(tmp_path, modules, "lycoris.kohya", args)
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert a.module_dropout == 0.1
    q = _matches(a.blocks, Q)
    assert (q.rank, q.alpha, q.zero_scale) == (16, 0.0, True)
    out = _matches(a.blocks, OUT)
    assert (out.rank, out.alpha, out.zero_scale) == (16, 2.0, False)
    c = _matches(a.blocks, CONV)
    assert (c.conv_rank, c.conv_alpha, c.zero_scale) == (8, 0.0, True)
    (text,) = a.text_encoder_blocks
    assert (text.rank, text.zero_scale) == (16, True)
    said = outcome.conversion.reports["network_weights"]
    assert said.fate == "mapped"


def test_lycoris_dylora_dim_from_weights_is_the_locon_lycoris_builds_from_the_file(tmp_path):
    """lycoris/kohya.py create_network_from_weights reads none of its **kwargs (algo=dylora, block_size,
    conv_dim, the dropouts): get_module picks LoConModule for a `lora_up.weight` key and builds it at the
    file's lora_down rows and alpha with LyCORIS's defaults (no dropout, no Tucker, no scalar), none where the
    file has none; train_network.py passes --network_dropout only to create_network; load_weights then loads
    the file. The same plan as algo=locon from that file (issue 12)."""
    modules = {
        Q: (8, 4.0, 320, 0),
        OUT: (4, 2.0, 320, 0),
        CONV: (4, 1.0, 320, 3),  # a 3x3 convolution: conv_rank
        SHORTCUT: (8, 4.0, 640, 1),
        TE: (8, 4.0, 768, 0),
        TE_FC: (2, 1.0, 768, 0),
        "lora_unet_conv_in": (4, 1.0, 4, 3),  # LyCORIS's preset full adapts these too, and
        "lora_unet_time_embedding_linear_1": (8, 4.0, 320, 0),  # from_weights builds any module named
    }
    args = '"algo=dylora", "block_size=2", "conv_dim=16", "conv_alpha=8", "dropout=0.1", "rank_dropout=0.2"'
    extra = "dim_from_weights = true\nnetwork_dropout = 0.1"
    outcome = _from_file(tmp_path, modules, "lycoris.kohya", args, extra)
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped"
    assert fate(outcome, "network_args") == fate(outcome, "network_dropout") == "inert"
    assert "create_network_from_weights reads none" in messages(outcome, "DBS405")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("lora", 8, 4.0, 4, 1.0)
    assert (a.rank_dropout, a.module_dropout, a.down_dropout, a.tucker) == (0.0, 0.0, 0.0, False)
    for name, (rank, alpha) in {Q: (8, 4.0), OUT: (4, 2.0), SHORTCUT: (8, 4.0)}.items():
        block = _matches(a.blocks, name)
        assert (block.rank, block.alpha) == (rank, alpha), name
    block = _matches(a.blocks, CONV)
    assert (block.rank, block.conv_rank, block.conv_alpha) == (0, 4, 1.0)
    assert (a.blocks[-1].pattern, a.blocks[-1].rank) == ("^", 0)  # LyCORIS builds none the file lacks
    assert [(b.rank, b.alpha) for b in a.text_encoder_blocks] == [(8, 4.0), (2, 1.0), (0, 1.0)]
    assert a.init_weights.endswith("prev.safetensors") and a.init_partial
    # create_network_from_weights matches every U-Net module's name (networks.lora's scans its classes)
    assert "conv_in" in a.conv_targets and "time_embedding.linear_1" in a.denoiser_targets
    conv_in = _matches(a.blocks, "lora_unet_conv_in")
    assert (conv_in.rank, conv_in.conv_rank, conv_in.conv_alpha) == (0, 4, 1.0)
    import attrs

    (tmp_path / "locon").mkdir()
    locon = _from_file(
        tmp_path / "locon", modules, "lycoris.kohya", '"algo=locon"', "dim_from_weights = true"
    )
    same = attrs.evolve(plan_of(locon, tmp_path / "locon").adapter, init_weights=a.init_weights)
    assert same == a  # whatever the algo, the file decides


def test_lycoris_dim_from_weights_without_an_alpha_is_lycoris_crash(tmp_path):
    """LoConModule.make_module_from_state_dict calls float(alpha) on the missing alpha: TypeError
    (networks.lora gives such a module its rank instead)."""
    outcome = _from_file(
        tmp_path,
        {Q: (8, 4.0, 320, 0), OUT: (8, None, 320, 0)},
        "lycoris.kohya",
        '"algo=dylora"',
        "dim_from_weights = true",
    )
    assert outcome.exit_code == 1 and fate(outcome, "dim_from_weights") == "invalid"
    assert "float(alpha)" in outcome.conversion.reports["dim_from_weights"].note


def _sdxl(tmp_path, module: str, args: str):
    from tests.unit.test_init_weights import SDXL_MODULES, write_lora

    write_lora(tmp_path / "prev.safetensors", SDXL_MODULES)
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    return kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=1024 --network_module={module} --network_dim=16 --network_alpha=8 "
        f"--network_weights=prev.safetensors {args} --learning_rate=1e-4 --max_train_steps=200 "
        "--save_model_as=safetensors --cache_latents",
    )


def test_sdxl_networks_dylora_dim_from_weights_reads_the_original_layout(tmp_path):
    """kohya's SDXL U-Net names the original layout (`input_blocks_4_1_...`): each module a block on
    diffusers' path at its rank and alpha, convolutions at their conv rank, the rest at rank 0."""
    import re

    from tests.unit.test_init_weights import SDXL_MODULES, SDXL_PATHS

    outcome = _sdxl(tmp_path, "networks.dylora", '--dim_from_weights --network_args "unit=4"')
    assert fate(outcome, "dim_from_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_unit, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (
        "dylora",
        1,
        8,
        4.0,
        4,
        1.0,
    )
    assert a.init_layers == len(SDXL_MODULES) and a.init_partial
    for path, ((rank, alpha), (conv_rank, conv_alpha)) in SDXL_PATHS.items():
        block = next(b for b in a.blocks if re.search(b.pattern, path))
        assert (block.rank, block.alpha, block.conv_rank, block.conv_alpha) == (
            rank,
            alpha,
            conv_rank,
            conv_alpha,
        )
    block = next(b for b in a.blocks if re.search(b.pattern, "down_blocks.0.resnets.0.conv2"))
    assert (block.rank, block.conv_rank) == (0, 0)  # not in the file: kohya builds none


def test_sdxl_lycoris_dylora_file_alphas_on_diffusers_paths(tmp_path):
    import re

    from tests.unit.test_init_weights import SDXL_PATHS

    outcome = _sdxl(tmp_path, "lycoris.kohya", '--network_args "algo=dylora" "conv_dim=8" "conv_alpha=1"')
    assert fate(outcome, "network_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha, a.init_weights) == (16, 8.0, 8, 1.0, "")
    for path, ((_rank, alpha), (conv_rank, conv_alpha)) in SDXL_PATHS.items():
        found = next((b for b in a.blocks if re.search(b.pattern, path)), None)
        conv = conv_rank > 0  # the file's alpha for this layer, and the network's
        own, network = (conv_alpha, 1.0) if conv else (alpha, 8.0)
        if own == network:  # nothing to change: no block
            assert found is None, path
            continue
        assert (found.rank, found.conv_rank) == (16, 8), path  # the network's ranks
        assert (found.conv_alpha if conv else found.alpha) == own, path
    assert [(b.rank, b.alpha) for b in a.text_encoder_blocks] == [(16, 4.0)]


def test_lycoris_dylora_file_with_flat_convolution_ups_is_lycoris_crash(tmp_path):
    """LyCORIS's DyLoraModule saves a convolution's lora_up as (out, rank); create_network_from_weights copies
    it into LoConModule's (out, rank, 1, 1) conv weight, which torch refuses (RuntimeError): kohya stops."""
    import numpy as np
    from safetensors.numpy import save_file

    conv_in = "lora_unet_down_blocks_0_attentions_0_proj_in"  # SD 1.x's 1x1 convolution
    tensors = {
        f"{Q}.lora_down.weight": np.zeros((4, 320), np.float16),
        f"{Q}.lora_up.weight": np.zeros((320, 4), np.float16),
        f"{Q}.alpha": np.array(2.0, np.float16),
        f"{conv_in}.lora_down.weight": np.zeros((4, 320, 1, 1), np.float16),
        f"{conv_in}.lora_up.weight": np.zeros((320, 4), np.float16),
        f"{conv_in}.alpha": np.array(2.0, np.float16),
    }
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    text = FROM_WEIGHTS.format(
        model=SD15, module="lycoris.kohya", args='"algo=dylora"', extra="dim_from_weights = true"
    )
    write(tmp_path / "cfg.toml", text)
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and fate(outcome, "dim_from_weights") == "invalid"
    assert "RuntimeError" in outcome.conversion.reports["dim_from_weights"].note


def test_networks_dylora_network_weights_of_other_alphas_train_at_network_alpha(tmp_path):
    """networks/dylora.py DyLoRAModule: `self.scale = alpha / lora_dim` from network_alpha when it is built,
    which forward reads; load_weights' load_state_dict only overwrites the `alpha` buffer (save_weights
    writes it back): adapter.init_alpha = "ignore" at alpha 8 and a DBS404 warning naming DyLoRAModule;
    the file's lora_down / lora_up still must be the network's rank (16)."""
    modules = {Q: (16, 4.0, 320, 0), TE: (16, 4.0, 768, 0)}
    outcome = _from_file(tmp_path, modules, "networks.dylora", "")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.rank, a.alpha, a.init_alpha, a.init_layers) == (
        "dylora",
        "kohya",
        16,
        8.0,
        "ignore",
        2,
    )
    said = messages(outcome, "DBS404")
    assert f"`{TE}.alpha` is 4, not the network's 8" in said and "DyLoRAModule's scale" in said
    assert fate(outcome, "network_weights") == "differs"


def test_networks_dylora_network_weights_at_network_alpha_keep_the_check(tmp_path):
    outcome = _from_file(tmp_path, {Q: (16, 8.0, 320, 0)}, "networks.dylora", "")
    a = plan_of(outcome, tmp_path).adapter
    assert a.init_alpha == "match" and "DBS404" not in codes(outcome)


def test_init_alpha_ignore_on_lycoris_dylora_is_refused(tmp_path):
    """LyCORIS's DyLoraModule scales by its alpha buffer (get_weight's alpha / (b + 1)), which the file
    sets: DBS595; kohya's form plans."""
    from tests.unit.test_init_weights import _plan, write_lora

    write_lora(tmp_path / "prev.safetensors", {Q: (16, 4.0, 320, 0)})
    adapter = 'rank = 16\nalpha = 8.0\ninit_weights = "prev.safetensors"\ninit_alpha = "ignore"\n'
    adapter += "init_partial = true\n"
    planned = _plan(tmp_path, adapter + 'dylora_form = "lycoris"', kind="dylora")
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS595"]
    assert hit.path == "adapter.init_alpha" and "alpha buffer" in hit.message
    planned = _plan(tmp_path, adapter + 'dylora_form = "kohya"', kind="dylora")
    assert planned.plan is not None, planned.diagnostics
    assert (planned.plan.adapter.alpha, planned.plan.adapter.init_alpha) == (8.0, "ignore")


def test_lycoris_dylora_network_alpha_zero_truncates_the_files_alphas(tmp_path):
    """network_alpha 0: DyLoraModule builds its alpha buffer as `torch.tensor(lora_dim)`, an int64, so
    load_weights' copy truncates the file's alpha toward zero (2.5 loads as 2, 0.5 as 0: scaled by 0, no
    layer); tests/runtime/test_dylora_weights.py checks lycoris-lora 4.1.3's module so."""
    from tests.unit.test_init_weights import write_lora

    write_lora(tmp_path / "prev.safetensors", {Q: (4, 2.5, 320, 0), TE: (8, 0.5, 768, 0)})
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    text = FROM_WEIGHTS.format(model=SD15, module="lycoris.kohya", args='"algo=dylora"', extra="")
    write(tmp_path / "cfg.toml", text.replace("network_alpha = 8", "network_alpha = 0"))
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (16, 16.0)  # alpha 0: the rank
    assert (_matches(a.blocks, Q).rank, _matches(a.blocks, Q).alpha) == (16, 2.0)
    (text_block,) = a.text_encoder_blocks
    assert text_block.rank == 0
