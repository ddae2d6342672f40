"""networks.lora `--dim_from_weights` with block learning-rate weights (issue 12, was DBS403):
create_network_from_weights reads `down_lr_weight` / `mid_lr_weight` / `up_lr_weight` /
`block_lr_zero_threshold` (parse_block_lr_kwargs) and sets them on the network it builds from the file, so
each file module trains at the rate times the weight of its kohya block (get_block_index), in one optimizer
group per block; a block at weight 0 keeps its modules (built from the file, unlike create_network, which
removes them) out of the optimizer (assemble_params skips a group at rate 0): dbspec's `lr_scale = 0`."""

from __future__ import annotations

import re

import pytest
from convert_kit import SDXL, codes, errors, fate, images, kohya, plan_of
from test_convert_kohya_cyclic_network_groups import _args, _converted, _torch_curves
from test_init_weights import OUT, Q, TE, _convert, write_lora

from dbspec.convert.kohya.blocks import kohya_block_index

MID = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
DOWN_1 = "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k"
FILE = {
    Q: (8, 4.0, 320, 0),  # block 1
    DOWN_1: (8, 4.0, 640, 0),  # block 5
    MID: (4, 2.0, 1280, 0),  # block 12
    OUT: (8, 4.0, 320, 0),  # block 24
    TE: (8, 4.0, 768, 0),
}
# block 1 at 0.5, block 5 at 0 (held), mid at 2, block 24 at 0.25 (down_lr_weight's first value is block 0's,
# which holds no module)
DOWN = "1,0.5,1,1,1,0,1,1,1,1,1,1"
UP = "1,1,1,1,1,1,1,1,1,1,1,0.25"
WEIGHTS = f"down_lr_weight={DOWN} mid_lr_weight=2 up_lr_weight={UP}"

PATHS = {
    Q: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    DOWN_1: "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
    MID: "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    OUT: "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
}


def _block(adapter, path: str):
    return next(b for b in adapter.blocks if re.search(b.pattern, path))


def test_kohyas_block_index_of_module_names():
    """networks/lora.py get_block_index on kohya's names (SD 1.x diffusers-style, SDXL original)."""
    assert [kohya_block_index(n, False) for n in (Q, DOWN_1, MID, OUT)] == [1, 5, 12, 24]
    assert kohya_block_index("lora_unet_down_blocks_1_downsamplers_0_conv", False) == 6
    assert kohya_block_index("lora_unet_up_blocks_0_upsamplers_0_conv", False) == 15
    assert kohya_block_index("lora_unet_conv_in", False) == -1
    sdxl = ("input_blocks_4_1_proj_in", "middle_block_1_proj_out", "output_blocks_8_0_in_layers_2", "out_2")
    assert [kohya_block_index(f"lora_unet_{n}", True) for n in sdxl] == [5, 11, 21, 22]


def test_each_file_module_trains_at_its_blocks_weight(tmp_path):
    write_lora(tmp_path / "prev.safetensors", FILE)
    outcome = _convert(
        tmp_path, f"--network_weights=prev.safetensors --dim_from_weights --network_args {WEIGHTS}"
    )
    assert outcome.written and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args") == "mapped" and fate(outcome, "dim_from_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    got = {name: (_block(a, path).rank, _block(a, path).lr_scale) for name, path in PATHS.items()}
    assert got == {Q: (8, 0.5), DOWN_1: (8, 0.0), MID: (4, 2.0), OUT: (8, 0.25)}
    # modules the file lacks: none (rank 0), whatever their block's weight
    assert _block(a, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k").rank == 0
    # the text encoder's modules take no block weight
    assert all(b.lr_scale == 1.0 for b in a.text_encoder_blocks)


def test_a_threshold_and_a_preset_as_kohya_reads_them(tmp_path):
    """block_lr_zero_threshold zeroes the weights at or below it; a preset name kohya does not know crashes
    it (DBS402)."""
    write_lora(tmp_path / "prev.safetensors", FILE)
    outcome = _convert(
        tmp_path,
        f"--network_weights=prev.safetensors --dim_from_weights --network_args {WEIGHTS} "
        "block_lr_zero_threshold=0.5",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert [_block(a, PATHS[n]).lr_scale for n in (Q, MID, OUT)] == [0.0, 2.0, 0.0]
    outcome = _convert(
        tmp_path, "--network_weights=prev.safetensors --dim_from_weights --network_args down_lr_weight=sin"
    )
    assert "DBS402" in codes(outcome) and not outcome.written


def test_sdxl_original_names_take_their_blocks_weight(tmp_path):
    modules = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0": (8, 16.0, 640, 0),  # block 5
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_q": (8, 16.0, 1280, 0),  # block 15
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (8, 16.0, 768, 0),
    }
    write_lora(tmp_path / "prev.safetensors", modules)
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=1024 --network_module=networks.lora "
        "--network_weights=prev.safetensors --dim_from_weights --network_args "
        "down_lr_weight=1,1,1,1,0.5,1,1,1,1 up_lr_weight=1,1,3,1,1,1,1,1,1 "
        "--learning_rate=1e-4 --max_train_steps=200",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    # input_blocks.4 is diffusers' down_blocks.1.attentions.0; output_blocks.2 up_blocks.0's upsampler block
    assert _block(a, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0").lr_scale == 0.5
    assert _block(a, "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_q").lr_scale == 3.0


@pytest.mark.parametrize("split", [False, True], ids=["shared", "per-block"])
def test_kohyas_groups_are_the_files_blocks(tmp_path, split):
    """kohya's per-group CyclicLR lists: [text encoder, then each block holding a file module at a weight
    above 0, in create_modules' order (down, up, mid)]: blocks 1, 2, 4, 24, 12 (5 is skipped at rate 0), no
    LoRA+ group (create_network_from_weights sets none). Blocks 2 and 4 share dbspec's `denoiser` group
    (weight 1); different values for them give every block its own group (`group = "unet_block<N>"`)."""
    q2 = "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q"  # block 2
    q4 = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # block 4
    write_lora(tmp_path / "prev.safetensors", {**FILE, q2: (8, 4.0, 320, 0), q4: (8, 4.0, 640, 0)})
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    blocks = [1, 2, 4, 24, 12]
    names = ["denoiser_x0.5", "denoiser", "denoiser", "denoiser_x0.25", "denoiser_x2"]
    lists = {"base_lr": [1e-6, 2e-6, 3e-6, 3e-6, 4e-6, 5e-6], "max_lr": [1e-4, 2e-4, 3e-4, 3e-4, 4e-4, 5e-4]}
    order = ["text_encoder", *names]
    if split:
        lists["base_lr"][3] = 3.5e-6
        order = ["text_encoder"] + [f"{n}_unet_block{i}" for n, i in zip(names, blocks)]
    outcome = _convert(
        tmp_path,
        f"--network_weights=prev.safetensors --dim_from_weights --network_args {WEIGHTS} loraplus_lr_ratio=4 "
        "--lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    indexed = [f"{n}#{i}" for i, n in enumerate(order)]
    expected = _torch_curves("CyclicLR", indexed, lists, {"step_size_up": 40}, 200)["lr"]
    expected = {name.split("#")[0]: curve for name, curve in expected.items()}
    curves = dict(schedule.group_lr_points)
    assert sorted(curves) == sorted(set(order))
    for name, points in curves.items():
        for step, lr in points:
            assert lr == pytest.approx(expected[name][step], rel=1e-9)
    if split:
        a = plan_of(outcome, tmp_path).adapter
        assert _block(a, PATHS[Q]).group == "unet_block1" and _block(a, PATHS[OUT]).group == "unet_block24"
