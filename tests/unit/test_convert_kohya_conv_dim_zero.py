"""kohya networks.lora / networks.lora_fa with `conv_dim=0` (issue 12). create_network reads conv_dim with
`kwargs.get("conv_dim", None)`, and LoRANetwork adds ResnetBlock2D, Downsample2D and Upsample2D to the U-Net
classes it scans whenever conv_dim is not None (or conv_block_dims is given): their Linear (`time_emb_proj`)
and 1x1 Conv2d (`conv_shortcut`) layers train at network_dim / network_alpha, and only the 3x3 convolutions
take conv_dim, so at 0 they are skipped. dbspec converted conv_dim 0 as no conv_dim (without the ResNet
layers). The expectation is kohya's create_modules rule applied to kohya's own U-Net trees as recorded from
sd-scripts (dbspec's torch-free inventory, lycoris_file.sd_unet / sdxl_unet, checked against the recordings in
tests/runtime): every Linear and 1x1 Conv2d inside a module of a scanned class; the plan's targets are matched
on the same layers (diffusers' paths, peft's suffix match)."""

from __future__ import annotations

import re

import pytest
from convert_kit import SD15, SDXL, codes, errors, fate, images, kohya, messages, plan_of

from dbspec.convert.kohya.lycoris_file import sd_unet, sdxl_unet
from dbspec.plan.model import AdapterPlan
from dbspec.unet_layout import diffusers_name

ATTENTION = ("Transformer2DModel",)  # LoRANetwork.UNET_TARGET_REPLACE_MODULE
RESNETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")  # UNET_TARGET_REPLACE_MODULE_CONV2D_3X3
SD_N, SDXL_N = 25, 23  # kohya's block counts (get_block_dims_and_alphas)


def _convert(tmp_path, network: str, sdxl: bool = False, module: str = "networks.lora"):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    script = "sdxl_train_network.py" if sdxl else "train_network.py"
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={SDXL if sdxl else SD15} "
        f"--train_data_dir=x --resolution=512 --network_module={module} --network_dim=16 --network_alpha=8 "
        f"--network_args {network} --learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


def _rows(sdxl: bool) -> list[tuple[str, str, str]]:
    return sdxl_unet() if sdxl else sd_unet(False)


def _kohya_modules(sdxl: bool, classes: tuple[str, ...]) -> set[str]:
    """networks/lora.py create_modules, restated: each Linear / 1x1 Conv2d inside a module whose class is
    scanned (a 3x3 Conv2d only with a conv rank above 0: none here)."""
    rows = _rows(sdxl)
    scanned = [path for path, cls, _ in rows if cls in classes]
    return {
        path
        for path, _, kind in rows
        if kind in ("linear", "conv1") and any(path.startswith(s + ".") for s in scanned)
    }


def _diffusers(path: str, sdxl: bool) -> str:
    return diffusers_name(path, sep=".") if sdxl else path  # kohya's SD 1.x U-Net has diffusers' names


def _matches(path: str, targets) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)  # peft's suffix match


def _planned(a: AdapterPlan, sdxl: bool) -> dict[str, tuple[int, float]]:
    """(rank, alpha) of each layer of kohya's tree the plan adapts: the first [[adapter.blocks]] pattern
    matching its diffusers path, else the adapter's; a rank of 0 adapts nothing."""
    out = {}
    for path, _, kind in _rows(sdxl):
        if not kind:
            continue
        dotted = _diffusers(path, sdxl)
        conv = kind == "conv"
        if not (
            _matches(dotted, a.conv_targets) and a.conv_rank if conv else _matches(dotted, a.denoiser_targets)
        ):
            continue
        block = next((b for b in a.blocks if re.search(b.pattern, dotted)), None)
        owner = a if block is None else block
        rank, alpha = (owner.conv_rank, owner.conv_alpha) if conv else (owner.rank, owner.alpha)
        if rank:
            out[path] = (rank, alpha)
    return out


@pytest.mark.parametrize("module", ["networks.lora", "networks.lora_fa"])
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_conv_dim_zero_adapts_the_resnets_linear_and_1x1_layers_at_network_dim(tmp_path, module, sdxl):
    outcome = _convert(tmp_path, "conv_dim=0", sdxl, module)
    a = plan_of(outcome, tmp_path).adapter
    assert fate(outcome, "network_args") == "mapped"
    assert a.conv_rank == 0 and not a.blocks
    assert {"time_emb_proj", "conv_shortcut"} <= set(a.denoiser_targets)
    planned = _planned(a, sdxl)
    expected = _kohya_modules(sdxl, ATTENTION + RESNETS)
    assert sorted(set(planned) ^ expected) == []
    assert set(planned.values()) == {(16, 8.0)}
    # the ResNets' layers are what conv_dim 0 adds: without it kohya scans the transformers only
    added = expected - _kohya_modules(sdxl, ATTENTION)
    assert any(p.endswith(("time_emb_proj", "emb_layers.1")) for p in added)
    assert any(p.endswith(("conv_shortcut", "skip_connection")) for p in added)


def test_without_conv_dim_the_resnets_stay_out(tmp_path):
    a = plan_of(_convert(tmp_path, "rank_dropout=0.1"), tmp_path).adapter
    assert sorted(set(_planned(a, False)) ^ _kohya_modules(False, ATTENTION)) == []


def test_conv_alpha_beside_conv_dim_zero_changes_nothing(tmp_path):
    """conv_alpha goes to the 3x3 convolutions only, which conv_dim 0 skips: ignored (DBS405)."""
    outcome = _convert(tmp_path, "conv_dim=0 conv_alpha=4")
    a = plan_of(outcome, tmp_path).adapter
    assert a.conv_rank == 0 and "time_emb_proj" in a.denoiser_targets
    assert "DBS405" in codes(outcome) and "conv_alpha" in messages(outcome, "DBS405")


def test_conv_alpha_without_conv_dim_is_ignored(tmp_path):
    outcome = _convert(tmp_path, "conv_alpha=4")
    a = plan_of(outcome, tmp_path).adapter
    assert "time_emb_proj" not in a.denoiser_targets
    assert "conv_alpha" in messages(outcome, "DBS405")


def test_conv_alpha_with_conv_dim_is_used_and_not_reported(tmp_path):
    outcome = _convert(tmp_path, "conv_dim=4 conv_alpha=2")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha) == (4, 2.0)
    assert "conv_alpha" not in messages(outcome, "DBS405")


@pytest.mark.parametrize(
    "network, why",
    [
        ("conv_dim=", "int()"),  # kohya's int("") stops it
        ("conv_dim=4.0", "int()"),  # so does int("4.0")
        ('"conv_dim=0" "conv_alpha="', "float()"),  # and float("") once conv_dim is given
    ],
)
def test_conv_dim_or_alpha_kohya_cannot_parse_is_invalid(tmp_path, network, why):
    outcome = _convert(tmp_path, network)
    assert "DBS402" in codes(outcome) and not outcome.written
    assert why in messages(outcome, "DBS402")


def _kohya_block_index(path: str, sdxl: bool) -> int:
    """networks/lora.py get_block_index on the module's kohya name, restated."""
    name = "lora_unet_" + path.replace(".", "_")
    if sdxl:
        rest = name[len("lora_unet_") :]
        for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
            if rest.startswith(prefix):
                return base + int(rest.split("_")[2])
        return -1
    m = re.search(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_", name)
    if m:
        i, kind, j = int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
        return 1 + idx if m.group(1) == "down" else 13 + idx
    return 12 if "mid_block_" in name else -1


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_conv_dim_zero_with_block_dims_gives_the_resnets_their_blocks_rank(tmp_path, sdxl):
    """With block_dims, get_block_dims_and_alphas makes conv_block_dims [0] * n from conv_dim 0 (not None):
    the ResNets are scanned, their Linear / 1x1 layers take block_dims, the 3x3 convolutions 0."""
    n = SDXL_N if sdxl else SD_N
    dims = [2 + i % 3 for i in range(n)]
    alphas = [d / 2 for d in dims]
    network = (
        f'"conv_dim=0" "block_dims={",".join(map(str, dims))}" "block_alphas={",".join(map(str, alphas))}"'
    )
    outcome = _convert(tmp_path, network, sdxl)
    a = plan_of(outcome, tmp_path).adapter
    planned = _planned(a, sdxl)
    expected = _kohya_modules(sdxl, ATTENTION + RESNETS)
    assert sorted(set(planned) ^ expected) == []
    for path in expected:
        index = _kohya_block_index(path, sdxl)
        assert planned[path] == (dims[index], alphas[index]), path


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_conv_block_dims_all_zero_scan_the_resnets_without_convolutions(tmp_path, sdxl):
    n = SDXL_N if sdxl else SD_N
    outcome = _convert(
        tmp_path, f'"block_dims={",".join(["16"] * n)}" "conv_block_dims={",".join(["0"] * n)}"', sdxl
    )
    a = plan_of(outcome, tmp_path).adapter
    planned = _planned(a, sdxl)
    assert sorted(set(planned) ^ _kohya_modules(sdxl, ATTENTION + RESNETS)) == []
    assert set(planned.values()) == {(16, 8.0)}


def test_conv_dim_zero_with_lr_weights_drops_the_resnets_of_a_block_at_weight_zero(tmp_path):
    """remove_block_dims_and_alphas: a block at lr weight 0 loses its modules, the ResNets' too."""
    down = ",".join(["1", "1", "0"] + ["1"] * 9)  # blocks 0-11: block 2 is down_blocks.0's second layers
    outcome = _convert(tmp_path, f'"conv_dim=0" "down_lr_weight={down}"')
    planned = _planned(plan_of(outcome, tmp_path).adapter, False)
    expected = {p for p in _kohya_modules(False, ATTENTION + RESNETS) if _kohya_block_index(p, False) != 2}
    assert sorted(set(planned) ^ expected) == []
    assert "down_blocks.0.resnets.1.time_emb_proj" not in planned
    assert "down_blocks.0.resnets.0.time_emb_proj" in planned


def test_conv_block_dims_without_conv_dim_and_a_conv_alpha_stop_kohya(tmp_path):
    """conv_block_dims without conv_dim and conv_block_alphas: kohya gives each block conv_alpha unparsed
    (a string) and LoRAModule's alpha / dim raises TypeError on the first convolution it builds."""
    convs = ",".join(str(i % 2) for i in range(SD_N))
    outcome = _convert(
        tmp_path, f'"block_dims={",".join(["8"] * SD_N)}" "conv_block_dims={convs}" "conv_alpha=4"'
    )
    assert "DBS402" in codes(outcome) and "TypeError" in messages(outcome, "DBS402")
    # with conv_block_alphas it is not read (ignored), and no convolution built leaves it unread too
    for rest in (f'"conv_block_alphas={",".join(["2"] * SD_N)}"', ""):
        tmp = tmp_path / f"case{len(rest)}"
        dims = convs if rest else ",".join(["0"] * SD_N)
        outcome = _convert(
            tmp, f'"block_dims={",".join(["8"] * SD_N)}" "conv_block_dims={dims}" "conv_alpha=4" {rest}'
        )
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert "conv_alpha" in messages(outcome, "DBS405")


def test_lora_fa_on_sdxl_with_conv_dim_zero_and_block_dims(tmp_path):
    """lora_fa numbers SD 1.x blocks only: on SDXL every U-Net module takes the lists' last value, the
    ResNets' Linear / 1x1 layers too (conv_dim 0: conv_block_dims [0] * 25)."""
    dims = [4] * (SD_N - 1) + [6]
    outcome = _convert(
        tmp_path, f'"conv_dim=0" "block_dims={",".join(map(str, dims))}"', True, "networks.lora_fa"
    )
    planned = _planned(plan_of(outcome, tmp_path).adapter, True)
    assert sorted(set(planned) ^ _kohya_modules(True, ATTENTION + RESNETS)) == []
    assert set(planned.values()) == {(6, 8.0)}


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_lycoris_conv_dim_zero_keeps_the_resnets_linear_and_1x1_layers(tmp_path, algo):
    """lycoris-lora 4.1.3 (create_single_module): at conv_dim 0 a 1x1 convolution still takes network_dim
    (`k_size == 1 and lora_dim > 0`), Linears always; only k x k convolutions are skipped (its `full`
    preset on kohya's SDXL tree: tests/runtime/test_lycoris_preset_file_sdxl.py)."""
    outcome = _convert(tmp_path, f'"algo={algo}" "conv_dim=0"', module="lycoris.kohya")
    a = plan_of(outcome, tmp_path).adapter
    assert {"time_emb_proj", "conv_shortcut"} <= set(a.denoiser_targets) and a.conv_rank == 0
    planned = _planned(a, False)
    assert "down_blocks.1.resnets.0.conv_shortcut" in planned
    assert not any(p.endswith(("conv1", "conv2", ".conv", "conv_in", "conv_out")) for p in planned)
