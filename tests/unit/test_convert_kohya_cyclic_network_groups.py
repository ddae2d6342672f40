"""kohya's per-group CyclicLR / OneCycleLR lists (lr_scheduler_args `base_lr=[...]`, `max_lr=[...]`, issue 12)
for the networks whose groups dbspec now derives: networks.lora_flux and lora_sd3 (flux_train_network.py,
sd3_train_network.py: each text encoder its own group, each followed by its LoRA+ plus group, then the
transformer's) and LyCORIS's lycoris.kohya (train_network.py: text encoders, plus, U-Net, plus; a plus group
only for algo lora/locon). Each converted command line passes `dbspec check`, and the plan's curve for
every group equals torch's scheduler built over dummy parameters in kohya's group order."""

from __future__ import annotations

import pytest
import torch
from convert_kit import SD15, SDXL, codes, component_file, errors, fate, images, kohya, messages, plan_of

FLUX = "black-forest-labs/FLUX.1-dev"
SD35 = "stabilityai/stable-diffusion-3.5-large"
# sd-scripts' Flux LoRA command line (docs/flux_train_network.md) training the text encoders
FLUX_COMMAND = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 flux_train_network.py "
    f"--pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors "
    "--ae ae.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --save_model_as "
    "safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 "
    "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
    "networks.lora_flux --network_dim 16 --network_alpha 8 --optimizer_type adamw8bit --learning_rate 1e-4 "
    "--highvram --max_train_steps 400 --timestep_sampling shift --discrete_flow_shift 3.1582 "
    "--model_prediction_type raw --guidance_scale 1.0"
)
# sd-scripts' SD3 LoRA command line (docs/sd3_train_network.md) training the text encoders
SD3_COMMAND = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 sd3_train_network.py "
    f"--pretrained_model_name_or_path {SD35} --clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors "
    "--t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk "
    "--save_model_as safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 "
    "--seed 42 --gradient_checkpointing --save_precision bf16 --network_module networks.lora_sd3 "
    "--network_dim 16 --network_alpha 8 --optimizer_type adamw8bit --learning_rate 1e-4 "
    "--max_train_steps 400 --weighting_scheme uniform --blocks_to_swap 0"
)
LYCORIS_COMMAND = (
    f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x "
    "--resolution=512 --output_dir=out --network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
    "--learning_rate=1e-4 --text_encoder_lr=5e-5 --max_train_steps=400 --optimizer_type=AdamW "
    "--mixed_precision=fp16 --save_model_as=safetensors"
)


def _flux(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, command=f"{FLUX_COMMAND} {extra}")


def _sd3(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(tmp_path, command=f"{SD3_COMMAND} {extra}")


def _lycoris(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    return kohya(tmp_path, command=f"{LYCORIS_COMMAND} {extra}")


def _args(values: dict[str, list[float]], rest: str) -> str:
    lists = " ".join(f"{k}=[{','.join(f'{v:g}' for v in vs)}]" for k, vs in values.items())
    return f"--lr_scheduler_args {lists} {rest}"


def _torch_curves(cls: str, kohya_order: list[str], lists: dict, kwargs: dict, steps: int) -> dict:
    """torch's scheduler over one dummy parameter per group in kohya's order: each group's LR (and beta1)
    after 0 ... steps scheduler steps, by the group's dbspec name."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4} for _ in kohya_order]
    optimizer = torch.optim.AdamW(groups)
    scheduler = getattr(torch.optim.lr_scheduler, cls)(optimizer, **lists, **kwargs)
    lrs: dict[str, list[float]] = {name: [] for name in kohya_order}
    betas: dict[str, list[float]] = {name: [] for name in kohya_order}
    for index in range(steps + 1):
        for name, group in zip(kohya_order, optimizer.param_groups, strict=True):
            lrs[name].append(group["lr"])
            betas[name].append(group["betas"][0])
        if index < steps:
            optimizer.step()
            scheduler.step()
    return {"lr": lrs, "momentum": betas}


def _converted(outcome, tmp_path):
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    assert fate(outcome, "lr_scheduler_args") == "mapped"
    return plan_of(outcome, tmp_path, ["checkpoints.every=20"]).schedule  # a curve point every 20 steps


def _check(schedule, expected: dict, momentum: bool = False) -> None:
    """Every dbspec group's plan curve is torch's curve for the kohya group that maps onto it."""
    curves = dict(schedule.group_lr_points)
    assert sorted(curves) == sorted(expected["lr"])
    for name, points in curves.items():
        assert len(points) > 3
        for step, lr in points:
            assert lr == pytest.approx(expected["lr"][name][step], rel=1e-9, abs=1e-15), (name, step)
    if momentum:
        momenta = dict(schedule.group_momentum_points)
        assert sorted(momenta) == sorted(expected["momentum"])
        for name, points in momenta.items():
            for step, value in points:
                assert value == pytest.approx(expected["momentum"][name][step], rel=1e-9), (name, step)


def test_flux_text_encoders_t5_and_loraplus_each_in_kohyas_order(tmp_path):
    """lora_flux: [CLIP-L, CLIP-L plus, T5-XXL, T5-XXL plus, transformer, transformer plus]."""
    order = [
        "text_encoder",
        "text_encoder_lora_up",
        "text_encoder_2",
        "text_encoder_2_lora_up",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {
        "base_lr": [1e-6, 4e-6, 2e-6, 8e-6, 1e-5, 4e-5],
        "max_lr": [5e-5, 2e-4, 2e-5, 8e-5, 1e-4, 4e-4],
    }
    outcome = _flux(
        tmp_path,
        '--network_args "train_t5xxl=True" "loraplus_lr_ratio=4" --text_encoder_lr 5e-5 2e-5 '
        "--lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=30 step_size_down=50 \"mode='triangular2'\""),
    )
    schedule = _converted(outcome, tmp_path)
    kwargs = {"step_size_up": 30, "step_size_down": 50, "mode": "triangular2"}
    _check(schedule, _torch_curves("CyclicLR", order, lists, kwargs, 400))


def test_flux_unet_only_with_unet_loraplus(tmp_path):
    """network_train_unet_only: kohya's optimizer holds [transformer, transformer plus]."""
    lists = {"max_lr": [1e-4, 1.6e-3]}
    outcome = _flux(
        tmp_path,
        '--network_train_unet_only --network_args "loraplus_unet_lr_ratio=16" '
        "--lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400 pct_start=0.2"),
    )
    schedule = _converted(outcome, tmp_path)
    expected = _torch_curves(
        "OneCycleLR", ["denoiser", "denoiser_lora_up"], lists, {"total_steps": 400, "pct_start": 0.2}, 400
    )
    _check(schedule, expected)


def test_flux_clip_and_t5_at_one_rate_share_dbspecs_group(tmp_path):
    """One text-encoder rate: dbspec trains CLIP-L and T5 in one group; equal list values map onto it."""
    lists = {"base_lr": [2e-6, 2e-6, 1e-5], "max_lr": [3e-5, 3e-5, 1e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "train_t5xxl=True" --text_encoder_lr 3e-5 --lr_scheduler_type CyclicLR '
        + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    expected = _torch_curves(
        "CyclicLR", ["text_encoder", "text_encoder_t5", "denoiser"], lists, {"step_size_up": 40}, 400
    )
    expected["lr"].pop("text_encoder_t5")
    _check(schedule, expected)


def test_flux_clip_and_t5_at_one_rate_with_different_values_split(tmp_path):
    """One text-encoder rate, two values: kohya's CLIP-L and T5-XXL groups map onto dbspec's `text_encoder`
    and `text_encoder_2`, the table naming the latter gives T5 its own group at the same rate."""
    lists = {"base_lr": [1e-6, 2e-6, 1e-5], "max_lr": [3e-5, 3e-5, 1e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "train_t5xxl=True" --text_encoder_lr 3e-5 --lr_scheduler_type CyclicLR '
        + _args(lists, "step_size_up=40"),
    )
    assert "text_encoder_2_lr" not in outcome.text
    plan = plan_of(outcome, tmp_path, ["checkpoints.every=20"])
    assert plan.optimizer.text_encoder_2_lr == plan.optimizer.text_encoder_lr == 3e-5
    expected = _torch_curves(
        "CyclicLR", ["text_encoder", "text_encoder_2", "denoiser"], lists, {"step_size_up": 40}, 400
    )
    _check(_converted(outcome, tmp_path), expected)


@pytest.mark.parametrize(
    ("lists", "order"),
    [
        # T5 alone differs: CLIP-G keeps CLIP-L's group, T5 gets `text_encoder_3`; the max_lr list agrees
        # on the encoders but maps onto the same groups
        (
            {"base_lr": [1e-6, 1e-6, 2e-6, 1e-5], "max_lr": [3e-5, 3e-5, 3e-5, 1e-4]},
            ["text_encoder", "text_encoder_2", "text_encoder_3", "denoiser"],
        ),
        (
            {"base_lr": [1e-6, 3e-6, 2e-6, 1e-5]},
            ["text_encoder", "text_encoder_2", "text_encoder_3", "denoiser"],
        ),
    ],
    ids=["t5-differs", "all-differ"],
)
def test_sd3_encoders_at_one_rate_with_different_values_split(tmp_path, lists, order):
    """lora_sd3 with one text_encoder_lr: [CLIP-L, CLIP-G, T5-XXL, MMDiT], each encoder its own dbspec
    group (`text_encoder`, `text_encoder_2`, `text_encoder_3`) at the one rate."""
    rest = "step_size_up=40" + ("" if "max_lr" in lists else " max_lr=1e-4")
    outcome = _sd3(
        tmp_path,
        '--network_args "train_t5xxl=True" --text_encoder_lr 3e-5 --lr_scheduler_type CyclicLR '
        + _args(lists, rest),
    )
    plan = plan_of(outcome, tmp_path, ["checkpoints.every=20"])
    o = plan.optimizer
    assert o.text_encoder_2_lr == o.text_encoder_3_lr == o.text_encoder_lr == 3e-5
    kwargs = {"step_size_up": 40} | ({} if "max_lr" in lists else {"max_lr": 1e-4})
    _check(_converted(outcome, tmp_path), _torch_curves("CyclicLR", order, lists, kwargs, 400))


def test_flux_list_length_follows_kohyas_groups(tmp_path):
    """Without train_t5xxl kohya has [CLIP-L, transformer]: three values are torch's ValueError."""
    outcome = _flux(
        tmp_path, "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=[1e-6,2e-6,1e-5] max_lr=1e-4"
    )
    text = messages(outcome, "DBS402")
    assert "base_lr has 3 values" in text and "(textencoder 1, unet)" in text


@pytest.mark.parametrize(
    ("rates", "order"),
    [
        # three rates: CLIP-L, CLIP-G and T5-XXL each their own dbspec group
        ("5e-5 2e-5 1e-5", ["text_encoder", "text_encoder_2", "text_encoder_3", "denoiser"]),
        # two: [a, b, b], T5 in CLIP-G's group (equal values in the list)
        ("5e-5 2e-5", ["text_encoder", "text_encoder_2", "text_encoder_2", "denoiser"]),
    ],
    ids=["three", "two"],
)
def test_sd3_three_text_encoders_in_kohyas_order(tmp_path, rates, order):
    """lora_sd3: [CLIP-L, CLIP-G, T5-XXL, MMDiT]; OneCycleLR's max_lr and the momentum lists per group."""
    shared = order[1] == order[2]
    lists = {
        "max_lr": [5e-5, 2e-5, 2e-5 if shared else 1e-5, 1e-4],
        "base_momentum": [0.8, 0.75, 0.75 if shared else 0.7, 0.85],
        "max_momentum": [0.9, 0.92, 0.92 if shared else 0.94, 0.95],
    }
    outcome = _sd3(
        tmp_path,
        f'--network_args "train_t5xxl=True" --text_encoder_lr {rates} --lr_scheduler_type OneCycleLR '
        + _args(lists, "total_steps=400 \"anneal_strategy='linear'\""),
    )
    schedule = _converted(outcome, tmp_path)
    names = [f"{n}#{i}" for i, n in enumerate(order)]
    expected = _torch_curves(
        "OneCycleLR", names, lists, {"total_steps": 400, "anneal_strategy": "linear"}, 400
    )
    for kind in ("lr", "momentum"):
        expected[kind] = {name.split("#")[0]: curve for name, curve in expected[kind].items()}
    _check(schedule, expected, momentum=True)


def test_sd3_clip_only_with_loraplus(tmp_path):
    """Without T5: [CLIP-L, plus, CLIP-G, plus, MMDiT, plus]; CLIP-G at its own rate: text_encoder_2."""
    order = [
        "text_encoder",
        "text_encoder_lora_up",
        "text_encoder_2",
        "text_encoder_2_lora_up",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {"base_lr": [1e-7, 2e-7, 3e-7, 4e-7, 5e-7, 6e-7], "max_lr": [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5]}
    outcome = _sd3(
        tmp_path,
        '--network_args "loraplus_lr_ratio=2" --text_encoder_lr 5e-5 2e-5 --lr_scheduler_type CyclicLR '
        + _args(lists, "step_size_up=25"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 25}, 400))


def test_lycoris_locon_with_loraplus_in_kohyas_order(tmp_path):
    """lycoris.kohya algo=locon: [text encoder, its plus, U-Net, its plus] as networks.lora."""
    order = ["text_encoder", "text_encoder_lora_up", "denoiser", "denoiser_lora_up"]
    lists = {"base_lr": [1e-6, 4e-6, 1e-5, 4e-5], "max_lr": [5e-5, 2e-4, 1e-4, 4e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_args algo=locon conv_dim=8 conv_alpha=4 loraplus_lr_ratio=4 --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=50 \"mode='exp_range'\" gamma=0.999"),
    )
    schedule = _converted(outcome, tmp_path)
    kwargs = {"step_size_up": 50, "mode": "exp_range", "gamma": 0.999}
    _check(schedule, _torch_curves("CyclicLR", order, lists, kwargs, 400))


def test_lycoris_loha_has_no_plus_groups(tmp_path):
    """LoHa has no `lora_up` parameter: LyCORIS's plus groups stay empty, kohya has [text encoder, U-Net]."""
    lists = {"max_lr": [5e-5, 1e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_args algo=loha loraplus_lr_ratio=4 --lr_scheduler_type OneCycleLR "
        + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    expected = _torch_curves("OneCycleLR", ["text_encoder", "denoiser"], lists, {"total_steps": 400}, 400)
    _check(schedule, expected)


def test_lycoris_unet_only_has_one_group(tmp_path):
    outcome = _lycoris(
        tmp_path,
        "--network_train_unet_only --network_args algo=lokr --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=1e-4",
    )
    assert "DBS402" in codes(outcome) and "1 parameter group(s) (unet)" in messages(outcome, "DBS402")


def test_sdxl_train_block_lr_gives_each_block_its_group(tmp_path):
    """sdxl_train.py --block_lr: [each U-Net block at a rate not 0, in block order, text encoder 1, 2]; block
    i is [[optimizer.blocks]] entry i, dbspec's group `denoiser_block<i>`."""
    rates = [1e-5 * (1 + i % 4) for i in range(23)]
    rates[4] = rates[22] = 0.0  # left out of kohya's optimizer
    blocks = [i for i, rate in enumerate(rates) if rate]
    order = [f"denoiser_block{i}" for i in blocks] + ["text_encoder", "text_encoder_2"]
    lists = {
        "base_lr": [rates[i] / 10 for i in blocks] + [1e-7, 2e-7],
        "max_lr": [rates[i] * (2 + i % 3) for i in blocks] + [1e-6, 2e-6],
    }
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x "
        "--resolution=512 --output_dir=out --learning_rate=1e-5 --train_text_encoder "
        "--learning_rate_te1=1e-6 --learning_rate_te2=2e-6 --max_train_steps=300 --optimizer_type=AdamW "
        "--mixed_precision=bf16 "
        f"--block_lr={','.join(f'{r:g}' for r in rates)} --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=20 step_size_down=35"),
    )
    schedule = _converted(outcome, tmp_path)
    assert [g.name for g in schedule.torch.groups] == order  # no leftover `denoiser` group
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 20, "step_size_down": 35}, 300))


# networks.lora block lr weights on SD 1.5: kohya's groups per block (unet_block<N>), in the order its
# create_modules meets them: the down blocks' attentions (1, 2, 4, 5, 7, 8), the up blocks' (16-24), then
# the mid block's (12: library/original_unet.py registers mid_block after up_blocks)
DOWN = [1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.25, 0.25, 1.0, 1.0, 1.0]  # indices 0-11
UP = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]  # indices 13-24
KOHYA_BLOCKS = [1, 2, 4, 5, 7, 8, *range(16, 25), 12]


def _weight(index: int) -> float:
    return DOWN[index] if index < 12 else 3.0 if index == 12 else UP[index - 13]


def _dbspec_group(index: int, plus: bool = False) -> str:
    scale = _weight(index)
    name = "denoiser_lora_up" if plus else "denoiser"
    return name if scale == 1.0 else f"{name}_x{scale:g}"


@pytest.mark.parametrize("loraplus", [False, True], ids=["plain", "loraplus"])
def test_networks_lora_block_lr_weights_give_kohyas_block_groups(tmp_path, loraplus):
    """[text encoder, (plus,) unet_block1, (plus,) ...]: each kohya block maps onto dbspec's group of its
    scale (runtime/blocks.py: `denoiser`, `denoiser_x<scale>`), blocks of one scale sharing one value."""
    order = ["text_encoder"] + (["text_encoder_lora_up"] if loraplus else [])
    for index in KOHYA_BLOCKS:
        order.append(_dbspec_group(index))
        if loraplus:
            order.append(_dbspec_group(index, plus=True))
    values = {"denoiser": 1e-5, "denoiser_x0.5": 2e-5, "denoiser_x0.25": 3e-5, "denoiser_x2": 4e-5}
    values |= {"denoiser_x3": 5e-5, "text_encoder": 1e-6}
    values |= {k.replace("denoiser", "denoiser_lora_up"): 4 * v for k, v in values.items() if "den" in k}
    values["text_encoder_lora_up"] = 4e-6
    lists = {"base_lr": [values[n] for n in order], "max_lr": [values[n] * 20 for n in order]}
    weights = (
        f"down_lr_weight={','.join(f'{w:g}' for w in DOWN)} mid_lr_weight=3 "
        f"up_lr_weight={','.join(f'{w:g}' for w in UP)}" + (" loraplus_lr_ratio=4" if loraplus else "")
    )
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.lora --network_args {weights} --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    names = [f"{n}#{i}" for i, n in enumerate(order)]
    expected = _torch_curves("CyclicLR", names, lists, {"step_size_up": 40}, 400)
    expected["lr"] = {name.split("#")[0]: curve for name, curve in expected["lr"].items()}
    _check(schedule, expected)


def test_networks_lora_conv_dim_zero_block_groups_hold_the_resnet_only_blocks(tmp_path):
    """conv_dim=0 scans the ResNets (their Linear / 1x1 layers at network_dim): blocks holding only ResNets
    (10, 11: down_blocks.3; 13-15: up_blocks.0) have modules and groups too, the downsampler-only blocks
    (3, 6, 9) none; create_modules meets them in the same order (sd-scripts' prepare_optimizer_params names
    unet_block1 ... 8, 10, 11, 13 ... 24, 12 for these weights). A value per block: a group per block."""
    blocks = [1, 2, 4, 5, 7, 8, 10, 11, *range(13, 25), 12]
    order = ["text_encoder"] + [f"{_dbspec_group(index)}_unet_block{index}" for index in blocks]
    lists = {
        "base_lr": [1e-6 * (1 + k) for k in range(len(order))],
        "max_lr": [1e-4 * (1 + k % 5) for k in range(len(order))],
    }
    weights = (
        f"down_lr_weight={','.join(f'{w:g}' for w in DOWN)} mid_lr_weight=3 "
        f"up_lr_weight={','.join(f'{w:g}' for w in UP)}"
    )
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.lora --network_args conv_dim=0 {weights} --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 40}, 400))
    adapter = plan_of(outcome, tmp_path, ["checkpoints.every=20"]).adapter
    assert sorted(b.group for b in adapter.blocks if b.group) == sorted(f"unet_block{i}" for i in blocks)
    assert "time_emb_proj" in adapter.denoiser_targets and adapter.conv_rank == 0


@pytest.mark.parametrize("loraplus", [False, True, "fa"], ids=["plain", "loraplus", "lora_fa"])
def test_networks_lora_blocks_of_one_weight_with_different_values_split(tmp_path, loraplus):
    """Blocks 1 and 2 both train at x0.5 (dbspec's one `denoiser_x0.5` group), blocks 4, 5 at 1: kohya's
    list gives each block its own value, so every kohya block gets its own dbspec group,
    `denoiser[_x<weight>]_unet_block<N>` ([[adapter.blocks]] `group`; the blocks at the adapter's
    settings get an entry), at the same rate; each group's curve is torch's for its kohya group."""
    fa, loraplus = loraplus == "fa", loraplus is True  # lora_fa: networks.lora's blocks, no LoRA+
    order = ["text_encoder"] + (["text_encoder_lora_up"] if loraplus else [])
    for index in KOHYA_BLOCKS:
        order.append(f"{_dbspec_group(index)}_unet_block{index}")
        if loraplus:
            order.append(f"{_dbspec_group(index, plus=True)}_unet_block{index}")
    lists = {
        "base_lr": [1e-6 * (1 + k) for k in range(len(order))],
        "max_lr": [1e-4 * (1 + k % 5) for k in range(len(order))],
    }
    weights = (
        f"down_lr_weight={','.join(f'{w:g}' for w in DOWN)} mid_lr_weight=3 "
        f"up_lr_weight={','.join(f'{w:g}' for w in UP)}" + (" loraplus_lr_ratio=4" if loraplus else "")
    )
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.lora{'_fa' if fa else ''} --network_args {weights} "
        "--lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=40"),
    )
    assert 'group = "unet_block4"' in outcome.text and 'group = "unet_block12"' in outcome.text
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 40}, 400))
    plan = plan_of(outcome, tmp_path, ["checkpoints.every=20"])
    blocks = {b.group: b for b in plan.adapter.blocks if b.group}
    assert sorted(blocks) == sorted(f"unet_block{i}" for i in KOHYA_BLOCKS)
    assert all(blocks[f"unet_block{i}"].lr_scale == _weight(i) for i in KOHYA_BLOCKS)
    assert {b.rank for b in plan.adapter.blocks} == {16} and {b.alpha for b in plan.adapter.blocks} == {8.0}
    rates = {g.name: g.rate for g in schedule.torch.groups}
    assert rates["denoiser_x0.5_unet_block1"] == rates["denoiser_x0.5_unet_block2"] == 0.5e-4


def test_networks_lora_blocks_with_one_value_per_weight_keep_the_weight_groups(tmp_path):
    """Lists that give blocks of one weight one value keep dbspec's groups by weight (no block groups)."""
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.lora --network_args down_lr_weight={','.join(f'{w:g}' for w in DOWN)} "
        "--lr_scheduler_type CyclicLR --lr_scheduler_args max_lr=1e-3 base_lr=["
        + ",".join(["1e-6"] + [f"{1e-5 * _weight(i):g}" for i in KOHYA_BLOCKS if i < 12] + ["1e-5"] * 10)
        + "]",
    )
    assert "group =" not in outcome.text
    assert sorted(g.name for g in _converted(outcome, tmp_path).torch.groups) == [
        "denoiser",
        "denoiser_x0.25",
        "denoiser_x0.5",
        "text_encoder",
    ]


def test_sdxl_networks_lora_block_lr_weights_in_input_middle_output_order(tmp_path):
    """SDXL (kohya's original block names): the transformer blocks 5, 6, 8, 9 (input_blocks.4, 5, 7, 8),
    11 (middle_block.1), 13-18 (output_blocks.0-5) in ascending order; down_lr_weight has 9 values."""
    down = [1, 1, 1, 1, 0.5, 0.5, 1, 2, 2]  # input_blocks.0-8: indices 1-9
    up = [1, 1, 1, 0.25, 0.25, 0.25, 1, 1, 1]  # output_blocks.0-8: indices 13-21
    weight = {1 + i: w for i, w in enumerate(down)} | {13 + i: w for i, w in enumerate(up)} | {11: 1.0}
    blocks = [5, 6, 8, 9, 11, *range(13, 19)]
    order = ["text_encoder"] + ["denoiser" if weight[b] == 1 else f"denoiser_x{weight[b]:g}" for b in blocks]
    values = {"text_encoder": 1e-6, "denoiser": 1e-5, "denoiser_x0.5": 2e-5, "denoiser_x2": 3e-5}
    values["denoiser_x0.25"] = 4e-5
    lists = {"max_lr": [values[n] * 10 for n in order]}
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=512 --output_dir=out --network_module=networks.lora "
        "--learning_rate=1e-4 --max_train_steps=300 --network_args "
        f"down_lr_weight={','.join(f'{w:g}' for w in down)} up_lr_weight={','.join(f'{w:g}' for w in up)} "
        "--lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=300"),
    )
    schedule = _converted(outcome, tmp_path)
    names = [f"{n}#{i}" for i, n in enumerate(order)]
    expected = _torch_curves("OneCycleLR", names, lists, {"total_steps": 300}, 300)
    expected["lr"] = {name.split("#")[0]: curve for name, curve in expected["lr"].items()}
    _check(schedule, expected)


def test_flux_network_reg_lrs_groups_come_first_in_the_transformers_place(tmp_path):
    """lora_flux's assemble_params: the modules each network_reg_lrs regex matches first form its group
    `reg_lr_<i>` (and plus), ahead of the rest; dbspec's `denoiser_lr<rate>` groups (runtime/blocks.py)."""
    order = [
        "text_encoder",
        "text_encoder_lora_up",
        "denoiser_lr0.0002",
        "denoiser_lora_up_lr0.0002",
        "denoiser_lr5e-05",
        "denoiser_lora_up_lr5e-05",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {
        "base_lr": [1e-7, 4e-7, 2e-6, 8e-6, 5e-7, 2e-6, 1e-6, 4e-6],
        "max_lr": [1e-5, 4e-5, 2e-4, 8e-4, 5e-5, 2e-4, 1e-4, 4e-4],
    }
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" "network_reg_lrs=double_blocks_[0-9]_=2e-4,single_blocks=5e-5" '
        "--text_encoder_lr 1e-5 --lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=30"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 30}, 400))


def test_flux_network_reg_lrs_on_clip_l_split_its_group_in_kohyas_order(tmp_path):
    """assemble_params on CLIP-L's modules as on the transformer's: each regex's `reg_lr_<i>` group (and plus)
    ahead of the encoder's default ones (a regex at rate 0 none); dbspec's `text_encoder_lr<rate>` groups
    (runtime/blocks.py)."""
    order = [
        "text_encoder_lr0.0002",
        "text_encoder_lora_up_lr0.0002",
        "text_encoder",
        "text_encoder_lora_up",
        "denoiser_lr0.0003",
        "denoiser_lora_up_lr0.0003",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {"max_lr": [2e-4, 8e-4, 1e-5, 4e-5, 3e-4, 1.2e-3, 1e-4, 4e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" '
        '"network_reg_lrs=layers_[0-5]_=2e-4,layers_6_=0,double_blocks_[0-9]_=3e-4" '
        "--text_encoder_lr 1e-5 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_flux_network_reg_lrs_on_clip_l_at_rate_0_keep_the_regexes_groups_alone(tmp_path):
    """CLIP-L at text_encoder_lr 0 with a regex training some of its modules: assemble_params keeps that
    regex's `reg_lr_<i>` group (and plus) and leaves CLIP-L's default groups at 0 out; dbspec's held blocks
    (lr_scale 0) have none either."""
    order = [
        "text_encoder_lr0.0002",
        "text_encoder_lora_up_lr0.0002",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {"max_lr": [2e-4, 8e-4, 1e-4, 4e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" "network_reg_lrs=layers_[0-5]_=2e-4,layers_6_=0" '
        "--text_encoder_lr 0 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_flux_network_reg_lrs_on_t5_at_rate_0_keep_the_regexes_groups_alone(tmp_path):
    """T5-XXL (train_t5xxl=True) at text_encoder_lr's second value 0 with a regex training some of its
    modules: assemble_params gives CLIP-L its default groups, T5 that regex's `reg_lr_<i>` group (and plus)
    alone (its default groups at 0 left out), then the transformer's; dbspec's T5 joins CLIP-L's group,
    split by its blocks (`text_encoder_lr<rate>`), its held blocks in none."""
    order = [
        "text_encoder",
        "text_encoder_lora_up",
        "text_encoder_lr0.0001",
        "text_encoder_lora_up_lr0.0001",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {"max_lr": [1e-5, 4e-5, 1e-4, 4e-4, 2e-4, 8e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" "train_t5xxl=True" "network_reg_lrs=block_[0-3]_=1e-4" '
        "--text_encoder_lr 1e-5 0 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_flux_network_reg_lrs_covering_the_transformer_leave_no_default_group(tmp_path):
    lists = {"max_lr": [3e-4, 6e-5]}
    outcome = _flux(
        tmp_path,
        '--network_train_unet_only --network_args "network_reg_lrs=double_blocks=3e-4,single_blocks=6e-5" '
        "--lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    order = ["denoiser_lr0.0003", "denoiser_lr6e-05"]
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_flux_network_reg_lrs_group_at_rate_zero_is_left_out(tmp_path):
    """assemble_params skips a `reg_lr_<i>` group (and its plus group) at rate 0: its modules (blocks at
    lr_scale 0) have no group, so kohya's lists name the others alone (issue 12)."""
    order = [
        "text_encoder",
        "text_encoder_lora_up",
        "denoiser_lr5e-05",
        "denoiser_lora_up_lr5e-05",
        "denoiser",
        "denoiser_lora_up",
    ]
    lists = {"max_lr": [1e-5, 4e-5, 5e-5, 2e-4, 1e-4, 4e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" "network_reg_lrs=double_blocks_[0-9]_=0,single_blocks=5e-5" '
        "--text_encoder_lr 1e-5 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_flux_network_reg_lrs_at_one_rate_take_their_own_bounds(tmp_path):
    """Two network_reg_lrs regexes at one rate are two kohya groups (`reg_lr_0`, `reg_lr_1`, each with its
    plus group) that dbspec trained as one (`denoiser_lr0.0001`), so per-group lists giving them different
    bounds were refused (DBS403): each regex's blocks now name a group of their own, `group = "reg_lr_<i>"`
    (`denoiser_lr0.0001_reg_lr_<i>`), and each follows torch's curve for its kohya group (issue 12). A
    regex alone at its rate in its component (CLIP-L's) keeps its shared name."""
    order = [
        "text_encoder_lr0.0001",
        "text_encoder_lora_up_lr0.0001",
        "text_encoder",
        "text_encoder_lora_up",
        "denoiser_lr0.0001_reg_lr_0",
        "denoiser_lora_up_lr0.0001_reg_lr_0",
        "denoiser_lr0.0001_reg_lr_1",
        "denoiser_lora_up_lr0.0001_reg_lr_1",
    ]
    lists = {
        "base_lr": [1e-7, 4e-7, 2e-7, 8e-7, 1e-6, 4e-6, 3e-6, 1.2e-5],
        "max_lr": [1e-5, 2e-5, 3e-5, 4e-5, 2e-4, 3e-4, 4e-4, 5e-4],
    }
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_lr_ratio=4" '
        '"network_reg_lrs=double_blocks=1e-4,single_blocks=1e-4,layers_[0-5]_=1e-4" '
        "--text_encoder_lr 1e-5 --lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=30"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("CyclicLR", order, lists, {"step_size_up": 30}, 400))
    blocks = plan_of(outcome, tmp_path).adapter.blocks
    assert {b.group for b in blocks if b.lr} == {"reg_lr_0", "reg_lr_1"}
    assert all(not b.group for b in blocks if not b.lr)


def test_flux_network_reg_lrs_at_one_rate_on_clip_l_take_their_own_bounds(tmp_path):
    """Two regexes at one rate on CLIP-L's modules: two kohya groups ahead of CLIP-L's default one, each
    its own dbspec group (`text_encoder_lr0.0002_reg_lr_<i>`, [[adapter.text_encoder_blocks]] `group`)
    with its own bounds (was DBS403, issue 12)."""
    order = [
        "text_encoder_lr0.0002_reg_lr_0",
        "text_encoder_lr0.0002_reg_lr_1",
        "text_encoder",
        "denoiser",
    ]
    lists = {"max_lr": [1e-5, 2e-4, 3e-4, 5e-5]}
    outcome = _flux(
        tmp_path,
        '--network_args "network_reg_lrs=layers_[0-5]_=2e-4,layers_[6-9]_=2e-4" '
        "--text_encoder_lr 1e-5 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))
    blocks = plan_of(outcome, tmp_path).adapter.text_encoder_blocks
    assert {b.group for b in blocks if b.lr} == {"reg_lr_0", "reg_lr_1"}


def test_flux_unet_lr_zero_keeps_the_regex_groups_alone(tmp_path):
    """unet_lr 0: kohya's default U-Net groups and a regex's at rate 0 are left out, the other regexes'
    groups train in `reg_lr_<i>` order after the text encoder's."""
    order = ["text_encoder", "denoiser_lr0.0003", "denoiser_lr6e-05"]
    lists = {"max_lr": [1e-4, 3e-4, 6e-5]}
    outcome = _flux(
        tmp_path,
        '--network_args "network_reg_lrs=double_blocks=3e-4,single_blocks_1=0,single_blocks=6e-5" '
        "--unet_lr 0 --lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    assert "DBS403" not in codes(outcome), errors(outcome)
    schedule = _converted(outcome, tmp_path)
    _check(schedule, _torch_curves("OneCycleLR", order, lists, {"total_steps": 400}, 400))


def test_lora_fa_text_encoder_and_unet_in_kohyas_order(tmp_path):
    """networks.lora_fa (networks/lora_fa.py prepare_optimizer_params): [text encoder, U-Net], no LoRA+."""
    lists = {"base_lr": [1e-6, 1e-5], "max_lr": [5e-5, 2e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=40"),
    )
    expected = _torch_curves("CyclicLR", ["text_encoder", "denoiser"], lists, {"step_size_up": 40}, 400)
    _check(_converted(outcome, tmp_path), expected)


def test_lora_fa_block_lr_weights_give_kohyas_block_groups(tmp_path):
    """networks.lora_fa with block lr weights (SD 1.5): [text encoder, unet_block1, ...] as networks.lora's
    block groups without plus groups (lora_fa_blocks.py), each onto dbspec's group of its weight."""
    order = ["text_encoder"] + [_dbspec_group(index) for index in KOHYA_BLOCKS]
    values = {"denoiser": 1e-5, "denoiser_x0.5": 2e-5, "denoiser_x0.25": 3e-5, "denoiser_x2": 4e-5}
    values |= {"denoiser_x3": 5e-5, "text_encoder": 1e-6}
    lists = {"base_lr": [values[n] for n in order], "max_lr": [values[n] * 20 for n in order]}
    weights = (
        f"down_lr_weight={','.join(f'{w:g}' for w in DOWN)} mid_lr_weight=3 "
        f"up_lr_weight={','.join(f'{w:g}' for w in UP)}"
    )
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.lora_fa --network_args {weights} --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    names = [f"{n}#{i}" for i, n in enumerate(order)]
    expected = _torch_curves("CyclicLR", names, lists, {"step_size_up": 40}, 400)
    expected["lr"] = {name.split("#")[0]: curve for name, curve in expected["lr"].items()}
    _check(schedule, expected)
    short = _lycoris(
        tmp_path / "short",
        f"--network_module=networks.lora_fa --network_args {weights} --lr_scheduler_type CyclicLR "
        + _args({"base_lr": [1e-6, 1e-5], "max_lr": [1e-4, 1e-4]}, "step_size_up=40"),
    )
    assert "DBS402" in codes(short)  # two values for kohya's 17 groups: torch raises


def test_lora_fa_unet_only_one_cycle(tmp_path):
    lists = {"max_lr": [3e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --network_train_unet_only --lr_scheduler_type OneCycleLR "
        + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    assert schedule.torch.max_lr == 3e-4 and not schedule.torch.groups  # one group: one number


def test_lora_fa_text_encoder_group_at_rate_0_trains_on_the_schedule(tmp_path):
    """lora_fa keeps a group at rate 0 (networks/lora_fa.py prepare_optimizer_params); CyclicLR replaces every
    group's rate with its bounds, so kohya trains it: the text encoder trains, at the schedule's values (its
    rate here the peak, which the schedule replaces alike), each group's curve torch's."""
    lists = {"base_lr": [1e-6, 1e-5], "max_lr": [5e-5, 2e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --text_encoder_lr=0 --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=40"),
    )
    schedule = _converted(outcome, tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 5e-5
    expected = _torch_curves("CyclicLR", ["text_encoder", "denoiser"], lists, {"step_size_up": 40}, 400)
    _check(schedule, expected)


def test_lora_fa_unet_at_rate_0_trains_on_one_cycle(tmp_path):
    """learning_rate 0 (no unet_lr): lora_fa's U-Net group at the optimizer's default rate 0, which
    OneCycleLR's max_lr / div_factor replaces; the text encoder at its own rate."""
    lists = {"max_lr": [1e-4, 3e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --learning_rate=0 --lr_scheduler_type OneCycleLR "
        + _args(lists, "total_steps=400"),
    )
    schedule = _converted(outcome, tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.train_text_encoder and plan.optimizer.lr == 3e-4
    expected = _torch_curves("OneCycleLR", ["text_encoder", "denoiser"], lists, {"total_steps": 400}, 400)
    _check(schedule, expected)


def test_lora_fa_scalar_bounds_lift_a_group_at_rate_0(tmp_path):
    """One CyclicLR base_lr / max_lr for every group: torch replaces the text encoder's rate 0 too."""
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --text_encoder_lr=0 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=1e-6 max_lr=1e-4 step_size_up=40",
    )
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 1e-4
    assert (plan.schedule.torch.base_lr, plan.schedule.torch.max_lr) == (1e-6, 1e-4)


def test_lora_fa_group_the_schedule_holds_at_0_stays_untrained(tmp_path):
    """OneCycleLR max_lr 0 for the text encoder's group at rate 0: its rate stays 0 all run (kohya's group
    never moves), so it does not train; the list keeps kohya's order. Without a clip: the group's gradients
    count in max_grad_norm's (test_convert_kohya_idle_text.py)."""
    lists = {"max_lr": [0.0, 3e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.lora_fa --text_encoder_lr=0 --max_grad_norm 0 "
        "--lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400"),
    )
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_text_encoder and plan.schedule.torch.max_lr == 3e-4


@pytest.mark.parametrize("loraplus", [False, True], ids=["plain", "loraplus"])
def test_dylora_groups_as_networks_lora(tmp_path, loraplus):
    """networks.dylora (networks/dylora.py prepare_optimizer_params): [text encoder, (plus,) U-Net, (plus)],
    the plus groups holding its `lora_B` blocks at lr x ratio."""
    order = ["text_encoder"] + (["text_encoder_lora_up"] if loraplus else []) + ["denoiser"]
    order += ["denoiser_lora_up"] if loraplus else []
    lists = {"base_lr": [1e-6 * (i + 1) for i in range(len(order))], "max_lr": [1e-4] * len(order)}
    args = '--network_args "unit=4" "loraplus_lr_ratio=4" ' if loraplus else '--network_args "unit=4" '
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.dylora {args}--lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=40"),
    )
    expected = _torch_curves("CyclicLR", order, lists, {"step_size_up": 40}, 400)
    _check(_converted(outcome, tmp_path), expected)


def test_one_cycle_list_with_a_max_lr_of_0_follows_torch(tmp_path):
    """OneCycleLR max_lr=[0, 1e-4, 4e-4] on lora_flux (CLIP-L, transformer, its plus group): the CLIP-L
    group's rate stays 0 all the way, as torch's."""
    lists = {"max_lr": [0.0, 1e-4, 4e-4]}
    outcome = _flux(
        tmp_path,
        '--network_args "loraplus_unet_lr_ratio=4" --lr_scheduler_type OneCycleLR '
        + _args(lists, "total_steps=400"),
    )
    expected = _torch_curves(
        "OneCycleLR", ["text_encoder", "denoiser", "denoiser_lora_up"], lists, {"total_steps": 400}, 400
    )
    schedule = _converted(outcome, tmp_path)
    assert schedule.torch.max_lr_zero == "literal"
    _check(schedule, expected, momentum=True)
    assert all(lr == 0.0 for _, lr in dict(schedule.group_lr_points)["text_encoder"])


def test_kohya_oft_has_the_unet_group_alone(tmp_path):
    """networks.oft (networks/oft.py prepare_optimizer_params): one group, the U-Net's blocks at unet_lr;
    text_encoder_lr never read. A one-value list is that group's value."""
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.oft --network_dim=8 --network_alpha=1e-3 "
        '--network_args "enable_all_linear=1" '
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=[1e-6] max_lr=[2e-4] step_size_up=40",
    )
    schedule = _converted(outcome, tmp_path)
    assert (schedule.torch.base_lr, schedule.torch.max_lr) == (1e-6, 2e-4) and not schedule.torch.groups
    assert schedule.torch.step_size_up == 40


def test_kohya_oft_at_rate_0_trains_on_cyclic_bounds(tmp_path):
    """--unet_lr 0: OFTNetwork keeps its one group at rate 0, and torch's CyclicLR sets each group's rate to
    base_lr at construction, so kohya trains the blocks on the cycle: the rate here is the peak, which the
    schedule replaces alike, and the curve is torch's (issue 12)."""
    lists = {"base_lr": [1e-6], "max_lr": [2e-4]}
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.oft --network_dim=8 --network_alpha=1e-3 --unet_lr=0 "
        "--lr_scheduler_type CyclicLR " + _args(lists, "step_size_up=40"),
    )
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    schedule = _converted(outcome, tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and not plan.train_text_encoder and plan.optimizer.lr == 2e-4
    assert (plan.adapter.kind, plan.adapter.oft_form, plan.adapter.oft_blocks) == ("diag-oft", "kohya", 8)
    assert (schedule.torch.base_lr, schedule.torch.max_lr) == (1e-6, 2e-4) and not schedule.torch.groups
    expected = _torch_curves("CyclicLR", ["denoiser"], lists, {"step_size_up": 40}, 400)["lr"]["denoiser"]
    assert len(schedule.lr_points) > 3
    for step, lr in schedule.lr_points:  # kohya's one group: torch's curve from base_lr, not from 0
        assert lr == pytest.approx(expected[step], rel=1e-9, abs=1e-15), step


def test_kohya_oft_at_rate_0_otherwise_trains_nothing(tmp_path):
    """Without a schedule that lifts it the group steps by 0: kohya's run trains nothing, which dbspec
    refuses (DBS200 for optimizer.lr = 0 without a text encoder training), with that reason; OneCycleLR with
    max_lr 0 holds it at 0 too."""
    outcome = _lycoris(tmp_path, "--network_module=networks.oft --network_alpha=1e-3 --unet_lr=0")
    assert "DBS403" in codes(outcome) and "trains nothing" in messages(outcome, "DBS403")
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.oft --network_alpha=1e-3 --learning_rate=0 --lr_scheduler_type "
        "OneCycleLR --lr_scheduler_args max_lr=0 total_steps=400",
    )
    assert "DBS403" in codes(outcome) and "trains nothing" in messages(outcome, "DBS403")


@pytest.mark.parametrize(
    "args, rate",
    [("", 1e-2), ('--optimizer_args "relative_step=False" "warmup_init=True"', 1e-6)],
)
def test_kohya_oft_at_rate_0_trains_on_adafactors_relative_step(tmp_path, args, rate):
    """--unet_lr 0 with kohya's Adafactor (relative_step, its default; warmup_init turns it on):
    train_util.get_optimizer pops the group's rate and Adafactor computes its own, so kohya trains the
    blocks: Adafactor with relative_step, the plan's rate Adafactor's first step's (only the logged initial
    value) and its schedule Adafactor's own (issue 12)."""
    outcome = _lycoris(
        tmp_path,
        f"--network_module=networks.oft --network_dim=8 --network_alpha=1e-3 --unet_lr=0 --optimizer_type "
        f"Adafactor {args}",
    )
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and not plan.train_text_encoder
    assert (plan.adapter.kind, plan.adapter.oft_form, plan.adapter.oft_blocks) == ("diag-oft", "kohya", 8)
    o = plan.optimizer
    assert (o.kind, o.lr, o.adafactor.relative_step, o.adafactor.warmup_init) == (
        "adafactor",
        rate,
        True,
        rate == 1e-6,
    )
    assert plan.schedule.lr_schedule == "adafactor"


def test_kohya_oft_list_longer_than_its_one_group_is_refused(tmp_path):
    """Two values for OFTNetwork's one group: torch's CyclicLR raises (expected 1 values)."""
    outcome = _lycoris(
        tmp_path,
        "--network_module=networks.oft --network_alpha=1e-3 --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=[1e-6,1e-5] max_lr=1e-4",
    )
    assert "DBS402" in codes(outcome), errors(outcome)


def test_flux_lycoris_groups_are_lycoris_order_clip_only(tmp_path):
    """lycoris.kohya on Flux (LyCORIS's prepare_optimizer_params): [text encoder, its plus, transformer, its
    plus]; its text-encoder group holds CLIP-L's modules at text_encoder_lr's first value (no T5 module)."""
    order = ["text_encoder", "text_encoder_lora_up", "denoiser", "denoiser_lora_up"]
    lists = {"base_lr": [1e-6, 4e-6, 1e-5, 4e-5], "max_lr": [5e-5, 2e-4, 1e-4, 4e-4]}
    outcome = _flux(
        tmp_path,
        '--network_module lycoris.kohya --network_args "algo=locon" "loraplus_lr_ratio=4" '
        "--text_encoder_lr 5e-5 2e-5 --lr_scheduler_type CyclicLR "
        + _args(lists, "step_size_up=30 step_size_down=50 \"mode='triangular2'\""),
    )
    schedule = _converted(outcome, tmp_path)
    kwargs = {"step_size_up": 30, "step_size_down": 50, "mode": "triangular2"}
    _check(schedule, _torch_curves("CyclicLR", order, lists, kwargs, 400))


def test_flux_lycoris_unet_only_preset_has_no_text_encoder_group(tmp_path):
    lists = {"max_lr": [1e-4, 1.6e-3]}
    outcome = _flux(
        tmp_path,
        '--network_module lycoris.kohya --network_args "preset=unet-only" "loraplus_unet_lr_ratio=16" '
        "--lr_scheduler_type OneCycleLR " + _args(lists, "total_steps=400 pct_start=0.2"),
    )
    schedule = _converted(outcome, tmp_path)
    expected = _torch_curves(
        "OneCycleLR", ["denoiser", "denoiser_lora_up"], lists, {"total_steps": 400, "pct_start": 0.2}, 400
    )
    _check(schedule, expected)
