"""kohya `network_alpha = 0` / `conv_alpha = 0` (and a block's alpha 0) converted exactly (issue 12;
dbspec/convert/kohya/alpha_zero.py): networks/lora.py's LoRAModule (lora_fa's, lora_flux's, lora_sd3's
copies), networks/dylora.py's DyLoRAModule and lycoris-lora 4.1.3's LoCon / LoHa / LoKr / GLoRA / DyLoRA
modules read `alpha = lora_dim if alpha is None or alpha == 0`, each with its own dim, so every module trains
at scale 1 (rs_lora: sqrt(dim)). Was DBS403 (adapter.alpha must be > 0; conv_alpha 0 scales the convolutions
to nothing), and a kohya block's alpha 0 (`block_alphas`) was written as 0, a scale of 0.

Each test reads the plan: every module's alpha / rank is kohya's scale, computed from kohya's per-module rule
over the module's own rank (first matching block, else the adapter's)."""

from __future__ import annotations

import pytest

from convert_kit import SD15, SDXL, errors, exact, expressible, images, kohya, out_path, plan_of  # noqa: F401
from dbspec.plan.model import AdapterPlan

from tests.unit.test_convert_kohya_blocks import planned, sd15_layers, sdxl_layers
from tests.unit.test_convert_reg_dims import BASE as FLUX_BASE
from tests.unit.test_convert_reg_dims import _flux, _modules, _planned

REASON = "alpha 0: networks.lora's modules take their rank (scale 1)"
SD_DIMS = [0, 2, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 16, 8, 8, 8, 8, 8, 8, 4, 4, 4, 2, 2, 0]
SD_CONV = [0, 1, 1, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 1, 1, 1]
SDXL_DIMS = [0, 2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 0]


def _csv(values) -> str:
    return ",".join(map(str, values))


def _sd(tmp_path, network: str, model: str = SD15, script: str = "train_network.py", module="networks.lora"):
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch {script} --pretrained_model_name_or_path={model} --train_data_dir=x "
        f"--resolution=512 --network_module={module} {network} --learning_rate=1e-4 "
        "--max_train_steps=200 --save_model_as=safetensors",
    )


def lycoris(outcome):
    """No refusal; the one DBS404 is LyCORIS 4.x's full preset on SD 1.x (its time embedding built twice)."""
    differs = [d.message for d in expressible(outcome).diagnostics if d.code == "DBS404"]
    assert all("duplicated lora name" in m for m in differs), differs
    return outcome


def _scales(a: AdapterPlan, layers) -> dict[str, float]:
    """Each adapted module's alpha / rank in the plan (a 3x3 convolution's conv_alpha / conv_rank)."""
    out = {}
    for path, _ in layers:
        rank, alpha, _ = planned(a, path)
        if rank:
            out[path] = alpha / rank
    return out


def test_the_issue_config_file_trains_at_scale_one(tmp_path):
    """The reproduction: a config_file with networks.lora, network_dim 8, network_alpha 0, conv_dim 4 and
    conv_alpha 0 (was DBS403 twice): alpha = 8 and conv_alpha = 4, each commented with why."""
    images(tmp_path / "img" / "10_sks dog", 1, (512, 512))
    (tmp_path / "c.toml").write_text(
        'pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"\ntrain_data_dir = "img"\n'
        'resolution = "512,512"\noutput_dir = "out"\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n'
        'network_alpha = 0\nnetwork_args = ["conv_dim=4", "conv_alpha=0"]\nlearning_rate = 1e-4\n'
        "max_train_steps = 10\n",
        encoding="utf-8",
    )
    outcome = exact(
        kohya(tmp_path, config_file=tmp_path / "c.toml", command="accelerate launch train_network.py")
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (8, 8.0, 4, 4.0)
    text = out_path(tmp_path).read_text(encoding="utf-8")
    assert [line for line in text.splitlines() if REASON in line] == [
        line for line in text.splitlines() if line.startswith(("alpha =", "conv_alpha ="))
    ]


def test_block_dims_at_network_alpha_zero_take_each_blocks_rank(tmp_path):
    """block_dims (and conv_dim 4 at conv_alpha 0 on every block's convolutions): get_block_dims_and_alphas
    gives every block network_alpha 0 and conv_alpha 0, which each LoRAModule reads as its own dim."""
    args = (
        f'--network_dim=8 --network_alpha=0 --network_args "block_dims={_csv(SD_DIMS)}" "conv_dim=4" '
        '"conv_alpha=0"'
    )
    a = plan_of(exact(_sd(tmp_path, args)), tmp_path).adapter
    scales = _scales(a, sd15_layers())
    assert len({planned(a, p)[0] for p in scales}) > 2, "blocks at several ranks"
    assert scales and set(scales.values()) == {1.0}
    assert (a.alpha, a.conv_alpha) == (8.0, 4.0)


def test_block_alphas_and_conv_block_alphas_of_zero_are_each_blocks_rank(tmp_path):
    """block_alphas / conv_block_alphas holding 0 beside other alphas (network_alpha 4): the blocks at 0
    train at scale 1, the others at their alpha / rank (was written as alpha 0, a scale of 0)."""
    alphas = [0 if i % 2 else d / 2 for i, d in enumerate(SD_DIMS)]
    conv_alphas = [0 if i % 3 else 0.5 for i in range(25)]
    args = (
        f'--network_dim=8 --network_alpha=4 --network_args "block_dims={_csv(SD_DIMS)}" '
        f'"block_alphas={_csv(alphas)}" "conv_block_dims={_csv(SD_CONV)}" '
        f'"conv_block_alphas={_csv(conv_alphas)}"'
    )
    a = plan_of(exact(_sd(tmp_path, args)), tmp_path).adapter
    from tests.unit.test_convert_kohya_blocks import kohya_block_index

    checked = 0
    for path, name in sd15_layers():
        idx = kohya_block_index(name, sdxl=False)
        conv = path.endswith(("conv", "conv1"))
        rank, alpha, _ = planned(a, path)
        dims, given = (SD_CONV, conv_alphas) if conv else (SD_DIMS, alphas)
        assert rank == dims[idx], path
        if rank:
            kohya_alpha = given[idx] if given[idx] else dims[idx]  # LoRAModule: alpha 0 -> lora_dim
            assert alpha / rank == pytest.approx(kohya_alpha / dims[idx]), path
            checked += given[idx] == 0
    assert checked > 5


def test_sdxl_block_dims_at_network_alpha_zero(tmp_path):
    args = (
        f'--network_dim=8 --network_alpha=0 --network_args "block_dims={_csv(SDXL_DIMS)}" '
        "--network_train_unet_only"
    )
    a = plan_of(exact(_sd(tmp_path, args, SDXL, "sdxl_train_network.py")), tmp_path).adapter
    scales = {p: s for p, s in _scales(a, sdxl_layers()).items() if not p.endswith(("conv", "conv1"))}
    assert len(scales) > 5 and set(scales.values()) == {1.0}


@pytest.mark.parametrize("module", ["networks.lora_fa", "networks.dylora"])
def test_lora_fa_and_dylora_at_alpha_zero(tmp_path, module):
    """LoRA-FA's LoRAModule and networks.dylora's DyLoRAModule (its convolutions at network_alpha, conv_dim
    = network_dim) read 0 as the rank too."""
    args = '--network_dim=8 --network_alpha=0 --network_args "conv_dim=8" "conv_alpha=0"'
    if module == "networks.dylora":
        args += ' "unit=4"'
    a = plan_of(exact(_sd(tmp_path, args, module=module)), tmp_path).adapter
    assert (a.alpha / a.rank, a.conv_alpha / a.conv_rank) == (1.0, 1.0)


@pytest.mark.parametrize(
    "algo, scale",
    [("locon", 1.0), ("loha", 1.0), ("lokr", 1.0), ("glora", 1.0), ("dylora", 1.0), ("locon-rs", 8**0.5)],
)
def test_lycoris_algos_at_alpha_zero(tmp_path, algo, scale):
    """LyCORIS's modules: alpha 0 is the dim (create_network's conv_alpha `or network_alpha` keeps the
    string "0", float 0: the conv dim); rs_lora scales that by 1 / sqrt(dim)."""
    name, _, rs = algo.partition("-")
    extra = ' "rs_lora=True"' if rs else ""
    args = (
        f'--network_dim=8 --network_alpha=0 --network_args "algo={name}" "conv_dim=4" "conv_alpha=0"{extra}'
    )
    a = plan_of(lycoris(_sd(tmp_path, args, module="lycoris.kohya")), tmp_path).adapter
    assert a.alpha / a.rank == pytest.approx(scale)
    assert a.conv_alpha / a.conv_rank == pytest.approx(2.0 if rs else 1.0)  # conv: sqrt(4)


def test_lycoris_conv_alpha_zero_beside_a_network_alpha(tmp_path):
    """conv_alpha=0 with network_alpha 2: LyCORIS's `kwargs.get("conv_alpha", network_alpha) or
    network_alpha` keeps the string "0" (truthy), so the convolutions take their dim, the linears 2 / 8."""
    args = '--network_dim=8 --network_alpha=2 --network_args "algo=locon" "conv_dim=4" "conv_alpha=0"'
    a = plan_of(lycoris(_sd(tmp_path, args, module="lycoris.kohya")), tmp_path).adapter
    assert (a.alpha / a.rank, a.conv_alpha / a.conv_rank) == (0.25, 1.0)


def test_kohya_oft_alpha_zero_stays_its_constraint(tmp_path):
    """networks.oft reads network_alpha as its constraint (alpha x width), not a LoRA alpha: 0 is kept."""
    outcome = _sd(tmp_path, "--network_dim=4 --network_alpha=0", module="networks.oft")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "diag-oft" and a.oft_constraint == 0.0


def test_flux_per_type_dims_in_dims_and_reg_dims_at_alpha_zero(tmp_path):
    """networks.lora_flux: every module (per-type ranks, in_dims, network_reg_dims, train_t5xxl's T5) built
    at network_alpha 0 takes its own dim."""
    base = FLUX_BASE.replace("--network_alpha 8", "--network_alpha 0")
    args = (
        '"network_reg_dims=single.*_modulation.*=4,img_attn=8" "img_mlp_dim=12" "txt_mlp_dim=2" '
        '"in_dims=[4,0,0,0,8]"'
    )
    plan = plan_of(exact(_flux(tmp_path, args, base=base)), tmp_path)
    scales = {}
    for _, paths in _modules():
        for path in paths:
            rank, alpha, _ = _planned(plan, path)
            if rank:
                scales[path] = (rank, alpha / rank)
    assert len({r for r, _ in scales.values()}) >= 4
    assert {s for _, s in scales.values()} == {1.0}
    embedders = [b for b in plan.adapter.blocks if "embedder" in b.pattern]
    assert embedders and {b.alpha / b.rank for b in embedders} == {1.0}


def test_flux_t5_at_alpha_zero(tmp_path):
    base = FLUX_BASE.replace("--network_alpha 8", "--network_alpha 0").replace(
        "--network_train_unet_only ", ""
    )
    base = base.replace("--cache_text_encoder_outputs ", "")
    plan = plan_of(exact(_flux(tmp_path, '"train_t5xxl=True"', base=base)), tmp_path)
    a = plan.adapter
    assert a.t5_targets and a.alpha / a.rank == 1.0
    assert all(b.alpha / b.rank == 1.0 for b in a.text_encoder_blocks if b.rank)


def test_sd3_per_type_dims_emb_dims_and_patch_at_alpha_zero(tmp_path):
    from tests.unit.test_convert_lora_sd3 import _sd3

    args = (
        '--network_args "context_attn_dim=4" "x_mlp_dim=8" "emb_dims=[8,0,0,8,0,2]" "conv_dim=2" '
        '"conv_alpha=0" --network_alpha 0'
    )
    a = plan_of(exact(_sd3(tmp_path, args)), tmp_path).adapter
    ranked = [b for b in a.blocks if b.rank]
    assert len({b.rank for b in ranked}) >= 2
    assert {b.alpha / b.rank for b in ranked} == {1.0}
    assert a.alpha / a.rank == 1.0 and a.conv_rank and a.conv_alpha / a.conv_rank == 1.0


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr", "dylora"])
def test_flux_lycoris_at_alpha_zero(tmp_path, algo):
    import convert_kit
    from convert_kit import component_file

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = convert_kit.FLUX_LYCORIS.replace("--network_alpha=1", "--network_alpha=0")
    a = plan_of(exact(kohya(tmp_path, command=f'{command}--network_args "algo={algo}"')), tmp_path).adapter
    assert a.alpha / a.rank == 1.0
    assert all(b.alpha / b.rank == 1.0 for b in a.blocks if b.rank and b.kind in ("adapter", algo))


def test_a_weights_file_saved_at_alpha_zero_runs_alphas(tmp_path, monkeypatch):
    """--network_weights at network_alpha 0: LoRAModule registers its alpha buffer after reading 0 as the
    rank, so a file kohya saved from such a run holds alpha = rank, the converted adapter's: nothing to
    ignore (no init_alpha, no DBS404); a file module at another alpha still differs from the run's 16."""
    from tests.unit import test_convert_kohya_dylora as dylora

    monkeypatch.setattr(
        dylora, "FROM_WEIGHTS", dylora.FROM_WEIGHTS.replace("network_alpha = 8", "network_alpha = 0")
    )
    same = {dylora.Q: (16, 16.0, 320, 0), dylora.TE: (16, 16.0, 768, 0)}
    (tmp_path / "same").mkdir(), (tmp_path / "other").mkdir()
    outcome = exact(dylora._from_file(tmp_path / "same", same, "networks.lora", ""))
    a = plan_of(outcome, tmp_path / "same").adapter
    assert (a.rank, a.alpha, a.init_alpha) == (16, 16.0, "match")
    other = {**same, dylora.Q: (16, 8.0, 320, 0)}
    outcome = expressible(dylora._from_file(tmp_path / "other", other, "networks.lora", ""))
    assert "not the network's 16" in "\n".join(d.message for d in outcome.diagnostics if d.code == "DBS404")
