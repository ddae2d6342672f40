"""kohya network_args for LoCon (networks.lora conv_dim/conv_alpha) and LyCORIS (lycoris.kohya algo=locon,
loha, lokr; dora_wd, preset, factor): realistic command lines convert without --allow-unsupported, pass
`dbspec check`, and plan what kohya's networks would train (sd-scripts networks/lora.py; LyCORIS kohya.py:
conv_dim/conv_alpha default to network_dim/network_alpha, preset "full")."""

from __future__ import annotations

import pytest


from convert_kit import SD15, SDXL, codes, empty_hub_cache, fate, images, kohya, messages, plan_of  # noqa: F401

KOHYA_CONV = ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")


def _convert(tmp_path, model: str, network: str, script: str = "train_network.py"):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={model} --train_data_dir=x "
        f"--resolution=512 {network} --learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


def test_networks_lora_conv_dim_is_locon_with_kohyas_resnet_layers(tmp_path):
    outcome = _convert(
        tmp_path,
        SD15,
        '--network_module=networks.lora --network_dim=16 --network_alpha=8 --network_args "conv_dim=8" '
        '"conv_alpha=4"',
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("lora", 16, 8.0, 8, 4.0)
    assert a.conv_targets == KOHYA_CONV and not a.dora
    # networks.lora scans ResnetBlock2D for conv_dim: its Linear and 1x1 layers train at network_dim
    assert {"time_emb_proj", "conv_shortcut", "proj_in", "ff.net.2"} <= set(a.denoiser_targets)
    assert fate(outcome, "network_args") == "mapped"


def test_networks_lora_conv_alpha_defaults_to_one(tmp_path):
    outcome = _convert(
        tmp_path, SD15, "--network_module=networks.lora --network_dim=8 --network_args conv_dim=4"
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha) == (4, 1.0)


def test_lycoris_locon_with_dora(tmp_path):
    outcome = _convert(
        tmp_path,
        SDXL,
        "--network_module=lycoris.kohya --network_dim=16 --network_alpha=16 "
        '--network_args "algo=locon" "conv_dim=4" "conv_alpha=2" "dora_wd=True" --network_train_unet_only',
        "sdxl_train_network.py",
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.dora, a.rank, a.conv_rank, a.conv_alpha) == ("lora", True, 16, 4, 2.0)
    assert a.dora_form == "lycoris"  # LyCORIS's LoConModule differentiates the norm (peft detaches it)
    # LyCORIS's "full" preset on kohya's SDXL U-Net (sdxl_original_unet.py): transformer and ResNet linears,
    # 3x3 convs; its time embedding (an nn.Sequential `time_embed`) and first / last convolutions
    # (`input_blocks.0.0`, `out.2`) match neither the preset's TimestepEmbedding class nor its names
    assert {"time_emb_proj", "to_q"} <= set(a.denoiser_targets)
    assert "time_embedding.linear_1" not in a.denoiser_targets
    assert a.conv_targets == KOHYA_CONV
    assert a.params["unet"] > 0 and not plan.train_text_encoder


def test_lycoris_loha_conv_dims_default_to_the_network_dims(tmp_path):
    outcome = _convert(
        tmp_path,
        SD15,
        '--network_module lycoris.kohya --network_dim 8 --network_alpha 4 --network_args "algo=loha" '
        '"rank_dropout=0.1" "module_dropout=0.05" "preset=attn-mlp"',
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, a.rank_dropout, a.module_dropout) == ("loha", 8, 4.0, 0.1, 0.05)
    assert a.conv_rank == 0 and a.conv_targets == ()  # attn-mlp adapts no convolution
    assert "ff.net.0.proj" in a.denoiser_targets and "fc1" in a.text_encoder_targets


def test_lycoris_rank_dropout_scale_is_ignored_as_lycoris_kohya_ignores_it(tmp_path):
    """LyCORIS's kohya create_network reads rank_dropout but never rank_dropout_scale: its LoHa / LoKr
    modules keep their default (no rescale of the kept rows), which is dbspec's rank_dropout_scale = false.
    (LoKr's rank_dropout crashes kohya on a GPU: tests/unit/test_convert_kohya_max_norm.py.)"""
    for algo in ("loha",):
        outcome = _convert(
            tmp_path,
            SD15,
            "--network_module lycoris.kohya --network_dim 8 --network_alpha 4 "
            f'--network_args "algo={algo}" "rank_dropout=0.25" "rank_dropout_scale=True"',
        )
        a = plan_of(outcome, tmp_path).adapter
        assert (a.kind, a.rank_dropout, a.rank_dropout_scale) == (algo, 0.25, False)
        assert "does not pass it to its modules" in messages(outcome, "DBS405")
        assert fate(outcome, "network_args") == "mapped"


def test_lycoris_lokr_factor_and_full_preset(tmp_path):
    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=lycoris.kohya --network_dim=10000 --network_alpha=1 "
        '--network_args "algo=lokr" "factor=8" "conv_dim=10000" "conv_alpha=1" "decompose_both=False"',
    )
    a = plan_of(outcome, tmp_path).adapter
    # LyCORIS hands LoKr the raw string "False", which is true (LokrModule tests `decompose_both and ...`)
    assert (a.kind, a.rank, a.factor, a.decompose_both, a.conv_rank) == ("lokr", 10000, 8, True, 10000)


def test_lycoris_lokr_decompose_both_is_a_python_truth_test(tmp_path):
    for value, expected in (("False", True), ("0", True), ("", False)):
        outcome = _convert(
            tmp_path,
            SD15,
            "--network_module=lycoris.kohya --network_dim=4 "
            f'--network_args "algo=lokr" "decompose_both={value}"',
        )
        assert plan_of(outcome, tmp_path).adapter.decompose_both is expected, value


def test_dora_wd_reads_as_lycoris_reads_it(tmp_path):
    """LyCORIS's str_bool: only "false" is off, so dora_wd=0 turns DoRA on."""
    outcome = _convert(
        tmp_path, SD15, '--network_module=lycoris.kohya --network_args "algo=lora" "dora_wd=0"'
    )
    assert plan_of(outcome, tmp_path).adapter.dora


def test_dora_wd_on_networks_lora_is_ignored_as_kohya_ignores_it(tmp_path):
    outcome = _convert(tmp_path, SD15, '--network_module=networks.lora --network_args "dora_wd=True"')
    assert not plan_of(outcome, tmp_path).adapter.dora
    assert "networks.lora has no weight decomposition" in messages(outcome, "DBS405")


def test_lycoris_switches_on_unless_false(tmp_path):
    """train_norm=0 is on for LyCORIS (str_bool): the U-Net's norms train offsets; "False" alone is off."""
    outcome = _convert(
        tmp_path, SD15, '--network_module=lycoris.kohya --network_args "algo=lora" "train_norm=0"'
    )
    assert plan_of(outcome, tmp_path).adapter.denoiser_norms
    off = _convert(
        tmp_path, SD15, '--network_module=lycoris.kohya --network_args "algo=lora" "train_norm=False"'
    )
    assert fate(off, "network_args") == "mapped" and not plan_of(off, tmp_path).adapter.denoiser_norms


@pytest.mark.parametrize("algo", ["lora", "lokr", "loha"])
def test_lycoris_bypass_mode_with_dora_wd_is_lycoris_defect(tmp_path, algo):
    """lycoris-lora 4.1.3's LoConModule / LokrModule / LohaModule take the bypass forward before the weight
    decomposition: dora_scale never trains, yet the saved file carries it and its loaders decompose with it
    (the file computes another model: checked in a scratch run), so kohya's run is invalid (DBS402)."""
    outcome = _convert(
        tmp_path,
        SD15,
        f'--network_module=lycoris.kohya --network_dim=8 --network_args "algo={algo}" "use_tucker=True" '
        '"dora_wd=True" "bypass_mode=True"',
    )
    assert outcome.exit_code != 0
    assert "never applies the weight decomposition" in messages(outcome, "DBS402")
    assert "dora_wd" in messages(outcome, "DBS402")


def test_lycoris_locon_with_tucker_is_lora_mid(tmp_path):
    """LyCORIS LoCon's use_tucker (lora_mid on each 3x3 convolution): adapter.tucker on a LoRA, planned with
    the Tucker parameter count, exported with LyCORIS's network args."""
    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
        '--network_args "algo=locon" "conv_dim=8" "conv_alpha=4" "use_tucker=True"',
    )
    assert outcome.exit_code == 0 and fate(outcome, "network_args") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.dora, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (
        "lora",
        True,
        False,
        16,
        8.0,
        8,
        4.0,
    )
    assert a.conv_targets == (*KOHYA_CONV, "conv_in", "conv_out")
    flat = _convert(
        tmp_path / "flat",
        SD15,
        "--network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
        '--network_args "algo=locon" "conv_dim=8" "conv_alpha=4"',
    )
    # rank 8 is far below 8/9 of every convolution's input: the Tucker form trains fewer parameters
    assert 0 < a.params["unet"] < plan_of(flat, tmp_path / "flat").adapter.params["unet"]


def test_unknown_lycoris_algo_is_unsupported(tmp_path):
    """An algo lycoris-lora 4.1.3 has no module for (its network_module_dict; T-LoRA converts now:
    test_convert_kohya_tlora.py)."""
    outcome = _convert(tmp_path, SD15, '--network_module=lycoris.kohya --network_args "algo=oft"')
    assert fate(outcome, "network_args") == "unsupported"
    assert "algo=oft has no dbspec equivalent" in outcome.conversion.reports["network_args"].note


def test_config_file_lokr_with_full_matrix_recipe(tmp_path):
    """A --config_file as kohya_ss writes it for LyCORIS LoKr: the huge-dim "full matrix" recipe."""
    from convert_kit import write

    images(tmp_path / "img" / "20_ohwx dog", 3, (1024, 1024))
    write(
        tmp_path / "cfg.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
network_module = "lycoris.kohya"
network_dim = 100000
network_alpha = 1
network_args = [
    "preset=full", "conv_dim=100000", "conv_alpha=1", "algo=lokr", "factor=16",
    "dora_wd=False", "use_tucker=False",
]
learning_rate = 1.0
optimizer_type = "Prodigy"
max_train_steps = 1000
mixed_precision = "bf16"
save_precision = "fp16"
""",
    )
    outcome = kohya(
        tmp_path, config_file=tmp_path / "cfg.toml", command="sdxl_train_network.py --output_dir out"
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, a.factor, a.conv_rank, a.conv_alpha) == (
        "lokr",
        100000,
        1.0,
        16,
        100000,
        1.0,
    )
    assert not a.dora and "conv_in" not in a.conv_targets  # kohya's SDXL U-Net: input_blocks.0.0
    assert plan.checkpoints.exports == ("kohya_lora",)
    assert fate(outcome, "network_args") == "mapped"


def test_dataset_network_multiplier_is_ignored_as_kohya_ignores_it(tmp_path):
    """library/train_util.py puts a dataset's network_multiplier into each batch; train_network.py (v0.10 and
    later) never reads it, so the LoRA trains at the multiplier create_network was given, 1.0."""
    from convert_kit import codes, write

    images(tmp_path / "img", 3, (512, 512), caption="ohwx", caption_ext=".txt")
    write(
        tmp_path / "dataset.toml",
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 512\nnetwork_multiplier = 0.5\n'
        '[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 2\n',
    )
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--dataset_config=dataset.toml --network_module=networks.lora --network_dim=8 --network_alpha=4 "
        "--learning_rate=1e-4 --max_train_steps=20",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 4.0)  # the scale alpha / rank, unscaled by 0.5
    assert "DBS403" not in codes(outcome)
    assert "never applies it" in messages(outcome, "DBS405")  # kohya ignores it: a warning, not an error


def test_networks_lora_rank_and_module_dropout(tmp_path):
    """networks/lora.py create_network reads rank_dropout / module_dropout from network_args (floats) and
    gives them to every LoRAModule."""
    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=networks.lora --network_dim=8 "
        '--network_args "rank_dropout=0.1" "module_dropout=0.05"',
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.module_dropout) == ("lora", 0.1, 0.05)
    assert fate(outcome, "network_args") == "mapped"


def test_networks_lora_network_dropout_is_the_down_projection_dropout(tmp_path):
    """train_network.py passes --network_dropout to networks.lora's create_network (neuron_dropout): each
    LoRAModule drops its down projection's output, before rank dropout; dbspec's adapter.down_dropout."""
    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=networks.lora --network_dim=8 --network_dropout=0.1 "
        '--network_args "rank_dropout=0.2"',
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.down_dropout, a.dropout, a.rank_dropout) == ("lora", 0.1, 0.0, 0.2)
    assert fate(outcome, "network_dropout") == "mapped" and "DBS404" not in codes(outcome)


def test_lycoris_network_dropout_is_ignored_outside_bypass_mode(tmp_path):
    """kohya hands --network_dropout to LyCORIS as its `dropout` argument, which LyCORIS's modules apply
    only in bypass_mode (their default rebuilds the weight without it; LoHa/LoKr likewise): ignored, with a
    warning, and the spec has no dropout."""
    for algo in ("locon", "loha", "lokr"):
        outcome = _convert(
            tmp_path,
            SD15,
            "--network_module=lycoris.kohya --network_dim=8 --network_dropout=0.1 "
            f'--network_args "algo={algo}"',
        )
        a = plan_of(outcome, tmp_path).adapter
        assert (a.dropout, a.down_dropout) == (0.0, 0.0)
        assert fate(outcome, "network_dropout") == "inert" and "bypass_mode" in messages(outcome, "DBS405")
        assert "dropout" not in messages(outcome, "DBS404")  # (the default preset's own note is there)


def test_lycoris_dropout_argument_wins_over_network_dropout(tmp_path):
    """train_network.py passes --network_dropout only when network_args has no `dropout`: the argument is
    the one LyCORIS reads (and ignores outside bypass mode)."""
    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=lycoris.kohya --network_dim=8 --network_dropout=0.1 "
        '--network_args "algo=locon" "dropout=0.3"',
    )
    assert "network_args dropout" in messages(outcome, "DBS405")
    assert fate(outcome, "network_args") == "mapped"


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_bypass_mode_is_peft_forward_and_its_dropout_the_output_dropout(tmp_path, algo):
    """bypass_mode adds ΔW x to W x, as peft's adapters compute: exact; with a dropout (--network_dropout,
    which train_network.py hands on as LyCORIS's `dropout`) LohaModule's / LokrModule's bypass forward
    drops the update after its module_dropout draw and LoHa's row mask: adapter.output_dropout, one draw
    per layer (tests/runtime/test_lycoris_bypass_dropout.py holds it to lycoris-lora's modules)."""
    plain = _convert(
        tmp_path,
        SD15,
        f'--network_module=lycoris.kohya --network_dim=8 --network_args "algo={algo}" "bypass_mode=True"',
    )
    assert fate(plain, "network_args") == "mapped" and plan_of(plain, tmp_path).adapter.kind == algo
    dropped = _convert(
        tmp_path,
        SD15,
        "--network_module=lycoris.kohya --network_dim=8 --network_alpha=4 --network_dropout=0.1 "
        f'--network_args "algo={algo}" "conv_dim=4" "bypass_mode=True" "module_dropout=0.2"',
    )
    a = plan_of(dropped, tmp_path).adapter
    assert (a.kind, a.output_dropout, a.module_dropout, a.conv_rank) == (algo, 0.1, 0.2, 4)
    assert fate(dropped, "network_args") == "mapped" and fate(dropped, "network_dropout") == "mapped"
    assert dropped.exit_code == 0


def test_lycoris_rs_lora_is_the_alpha_of_the_same_scale(tmp_path):
    """rs_lora scales each update by alpha / sqrt(rank): the plan's alpha / rank equals the scale of a real
    LyCORIS module built with rs_lora, and its saved alpha buffer (what loaders read)."""
    import torch
    from lycoris.modules.locon import LoConModule

    outcome = _convert(
        tmp_path,
        SD15,
        "--network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
        '--network_args "algo=locon" "conv_dim=8" "conv_alpha=4" "rs_lora=True"',
    )
    a = plan_of(outcome, tmp_path).adapter
    linear = LoConModule("l", torch.nn.Linear(32, 32), lora_dim=16, alpha=8, rs_lora=True)
    conv = LoConModule("c", torch.nn.Conv2d(8, 8, 3), lora_dim=8, alpha=4, rs_lora=True)
    assert abs(a.alpha / a.rank - linear.scale) < 1e-9 and abs(a.alpha - float(linear.alpha)) < 1e-5
    assert abs(a.conv_alpha / a.conv_rank - conv.scale) < 1e-9
    assert abs(a.conv_alpha - float(conv.alpha)) < 1e-5
    assert fate(outcome, "network_args") == "mapped"


def test_lycoris_loraplus(tmp_path):
    """LyCORIS's LoRA+ (set_loraplus_lr_ratio) puts parameters named lora_up in the raised group, as
    networks.lora does: mapped for algo=locon; LoHa has no lora_up, so the ratio changes nothing."""
    locon = _convert(
        tmp_path,
        SD15,
        '--network_module=lycoris.kohya --network_args "algo=locon" "loraplus_unet_lr_ratio=16" '
        '"loraplus_lr_ratio=4"',
    )
    o = plan_of(locon, tmp_path).optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio) == (16.0, 4.0)
    loha = _convert(
        tmp_path, SD15, '--network_module=lycoris.kohya --network_args "algo=loha" "loraplus_lr_ratio=4"'
    )
    o = plan_of(loha, tmp_path).optimizer
    assert (o.loraplus_denoiser_ratio, o.loraplus_text_encoder_ratio) == (0.0, 0.0)
    assert "lora_up" in messages(loha, "DBS405") and fate(loha, "network_args") == "mapped"


def test_networks_lora_ignores_arguments_it_does_not_read(tmp_path):
    """networks.lora's create_network reads its own keys only: `algo=locon` (LyCORIS's) on networks.lora
    trains a plain LoRA in kohya, so it converts to one with a warning instead of being refused."""
    outcome = _convert(
        tmp_path,
        SD15,
        '--network_module=networks.lora --network_dim=8 --network_args "algo=locon" "dropout=0.1"',
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.conv_rank, a.dropout) == ("lora", 8, 0, 0.0)
    text = messages(outcome, "DBS405")
    assert "network_args algo" in text and "network_args dropout" in text
    assert "DBS403" not in codes(outcome)


def test_lycoris_arguments_of_other_algos_are_ignored(tmp_path):
    """full_matrix acts only for LoKr and block_size only for OFT/full: on algo=loha LyCORIS reads and
    ignores them (a warning naming the algo); on networks.lora block_size is a key it never reads."""
    loha = _convert(
        tmp_path,
        SD15,
        '--network_module=lycoris.kohya --network_args "algo=loha" "full_matrix=True" "block_size=8"',
    )
    assert fate(loha, "network_args") == "mapped"
    text = messages(loha, "DBS405")
    assert "for LoKr only, not algo=loha" in text and "for DyLoRA (lycoris/modules/dylora.py) only" in text
    lora = _convert(tmp_path, SD15, '--network_module=networks.lora --network_args "block_size=8"')
    assert fate(lora, "network_args") == "mapped"
    assert "networks.lora's create_network does not read it" in messages(lora, "DBS405")


def test_lycoris_presets_that_stop_on_kohyas_sd_unet_with_lycoris_4_warn(tmp_path):
    """lycoris-lora 4.x's full / full-lin / unet-only list SD 1.x/2.x's time embedding by class and by
    name and assert on the duplicate (tests/runtime/test_lycoris_presets_kohya_sd.py): converted as LyCORIS
    3.2 and earlier build them, with a DBS404 warning naming the preset; attn-mlp builds and says nothing."""
    for preset, warned in (("full", True), ("unet-only", True), ("attn-mlp", False)):
        outcome = _convert(
            tmp_path / preset,
            SD15,
            f'--network_module=lycoris.kohya --network_dim=8 --network_args "algo=locon" "preset={preset}"',
        )
        assert plan_of(outcome, tmp_path / preset).adapter.kind == "lora"
        said = messages(outcome, "DBS404")
        assert ("duplicated lora name" in said and f"preset {preset}" in said) == warned, (preset, said)
