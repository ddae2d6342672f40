"""kohya's LoRA scripts at unet_lr 0 (convert/kohya/held_unet.py; issue 12): apply_to builds the U-Net's
modules whatever the rate, prepare_optimizer_params leaves their group out ("NO LR skipping!") and the clip
counts their gradients, added up uncleared; a --network_weights file's U-Net modules load into them and the
U-Net predicts through them. Under a clip, or with such a file, a LoRA / LoHa / LoKr / DyLoRA / GLoRA /
Diag-OFT / BOFT adapter converts to the denoiser carrying the adapter held whole at lr_scale 0; without
either, plain train.denoiser = false (the same run); full and IA^3 adapters alike, by a ScaleBlock (a
pattern and an lr_scale)."""

from __future__ import annotations

import numpy as np
import pytest
from convert_kit import (
    SD15,
    codes,
    component_file,
    errors,
    fate,
    images,
    kohya,
    kohya_lora,
    plan_at,
    plan_of,
)
from rich.console import Console
from safetensors.numpy import save_file

from dbspec.plan.model import denoiser_held
from dbspec.plan.summary import render_summary

ZERO = "--unet_lr 0 --text_encoder_lr 5e-5"
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
NETWORK = f"train_network.py --pretrained_model_name_or_path {SD15} --train_data_dir d --resolution 512 "
NETWORK += "--max_train_steps 300 --learning_rate 1e-4"


def _held(outcome, tmp_path):
    """The plan of a conversion held whole: the denoiser carries the adapter, every block held, one over
    every module; optimizer.lr is the text encoder's rate."""
    assert outcome.exit_code == 0 and not codes(outcome) & {"DBS403", "DBS404"}, errors(outcome)
    assert fate(outcome, "unet_lr") == "mapped"
    assert "held at lr_scale 0" in outcome.conversion.reports["unet_lr"].note
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.train_text_encoder and denoiser_held(plan.adapter.blocks)
    assert all(b.lr_scale == 0 and not b.lr and not b.group for b in plan.adapter.blocks)
    assert plan.adapter.blocks[-1].pattern == ""
    assert plan.optimizer.lr == pytest.approx(5e-5) and plan.optimizer.text_encoder_lr == pytest.approx(5e-5)
    return plan


def _lora_file(path, up: float = 1.0) -> None:
    save_file(
        {
            f"{Q}.lora_down.weight": np.ones((4, 320), np.float16),
            f"{Q}.lora_up.weight": np.full((320, 4), up, np.float16),
            f"{Q}.alpha": np.array(1.0, np.float32),
        },
        str(path),
    )


def test_fresh_modules_under_the_default_clip_are_held(tmp_path):
    """kohya's default max_grad_norm 1.0 clips the held modules' gradients with the text encoder's."""
    plan = _held(kohya_lora(tmp_path, ZERO), tmp_path)
    block = plan.adapter.blocks[-1]
    assert (plan.adapter.rank, block.rank, block.alpha, block.conv_rank) == (4, 4, 1.0, 0)
    assert not plan.adapter.init_weights


def test_without_a_clip_fresh_modules_leave_the_denoiser_plain(tmp_path):
    outcome = kohya_lora(tmp_path, ZERO + " --max_grad_norm 0")
    assert outcome.exit_code == 0 and not codes(outcome) & {"DBS403", "DBS404"}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and not plan.adapter.blocks


def test_a_files_unet_modules_are_held_clip_or_not(tmp_path):
    """A --network_weights file's U-Net modules change kohya's prediction: held and loaded (init_weights)
    without a clip too (was plain train.denoiser = false, dropping them)."""
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    _lora_file(tmp_path / "prev.safetensors")
    for clip in ("", " --max_grad_norm 0"):
        command = f"{NETWORK} --network_module networks.lora {ZERO}{clip} --network_weights prev.safetensors"
        outcome = kohya(tmp_path, command=command)
        plan = _held(outcome, tmp_path)
        assert plan.adapter.init_weights.endswith("prev.safetensors")


def test_a_file_of_text_modules_alone_without_a_clip_stays_plain(tmp_path):
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file(
        {
            f"{te}.lora_down.weight": np.zeros((4, 768), np.float16),
            f"{te}.lora_up.weight": np.zeros((768, 4), np.float16),
            f"{te}.alpha": np.array(1.0, np.float32),
        },
        str(tmp_path / "text.safetensors"),
    )
    command = f"{NETWORK} --network_module networks.lora {ZERO} --max_grad_norm 0"
    command += " --network_weights text.safetensors"
    plan = plan_of(kohya(tmp_path, command=command), tmp_path)
    assert not plan.train_denoiser


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        ("--network_module lycoris.kohya --network_args algo=loha", "loha"),
        ("--network_module lycoris.kohya --network_args algo=lokr factor=4", "lokr"),
        ("--network_module lycoris.kohya --network_args algo=locon conv_dim=4 conv_alpha=2", "lora"),
        ("--network_args conv_dim=4 conv_alpha=2", "lora"),
    ],
)
def test_lycoris_kinds_and_convolutions_are_held_alike(tmp_path, args, kind):
    """The block over every module carries the adapter's conv_rank / conv_alpha: the 3x3 convolutions'
    modules are held too."""
    base = NETWORK if "network_module" in args else NETWORK + " --network_module networks.lora"
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    outcome = kohya(tmp_path, command=f"{base} {args} {ZERO}")
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
    assert "unet_lr" not in {d.path for d in outcome.diagnostics}
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == kind and plan.train_denoiser and denoiser_held(plan.adapter.blocks)
    block = plan.adapter.blocks[-1]
    assert (block.conv_rank, block.conv_alpha) == (plan.adapter.conv_rank, plan.adapter.conv_alpha)
    if "conv_dim" in args:
        assert block.conv_rank == 4 and block.conv_alpha == 2


def test_block_dims_blocks_are_held_too(tmp_path):
    """networks.lora's block_dims blocks (and up_lr_weight's scales, which read no rate at unet_lr 0)
    all at lr_scale 0, the last block at network_dim."""
    dims = ",".join(["2"] * 4 + ["4"] * 21)
    args = f"--network_dim 8 --network_args block_dims={dims} up_lr_weight=cosine"
    plan = _held(kohya_lora(tmp_path, f"{args} {ZERO}"), tmp_path)
    assert len(plan.adapter.blocks) > 1 and plan.adapter.blocks[-1].rank == 8
    assert {b.rank for b in plan.adapter.blocks[:-1]} >= {2, 4}


def test_text_encoder_only_and_lora_fa_are_not_held(tmp_path):
    """network_train_text_encoder_only builds no U-Net module; networks.lora_fa keeps the U-Net's group
    in the optimizer (rate_zero.py)."""
    only = kohya_lora(tmp_path / "only", ZERO + " --network_train_text_encoder_only")
    assert not plan_of(only, tmp_path / "only").train_denoiser
    fa = kohya_lora(tmp_path / "fa", ZERO + " --network_module networks.lora_fa")
    assert not denoiser_held(plan_of(fa, tmp_path / "fa").adapter.blocks)


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        ("--network_module networks.dylora --network_args unit=2", "dylora"),
        ("--network_module networks.dylora --network_args unit=2 conv_dim=4", "dylora"),
        ("--network_module lycoris.kohya --network_args algo=dylora block_size=2 preset=attn-mlp", "dylora"),
        ("--network_module lycoris.kohya --network_args algo=glora preset=attn-mlp", "glora"),
        ("--network_module lycoris.kohya --network_args algo=diag-oft preset=attn-mlp", "diag-oft"),
        ("--network_module lycoris.kohya --network_args algo=boft preset=attn-mlp", "boft"),
    ],
)
def test_dylora_glora_and_oft_are_held_by_their_own_blocks(tmp_path, args, kind):
    """DyLoRA, GLoRA, Diag-OFT and BOFT blocks take an lr_scale (DyloraBlock, GloraBlock, OftBlock): held
    whole as LoRA is (were plain with a DBS404), the block over every module at the adapter's sizes (an
    OFT's: its block size, the constraint the adapter's)."""
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    plan = _held(kohya(tmp_path, command=f"{NETWORK} {args} {ZERO}"), tmp_path)
    a, block = plan.adapter, plan.adapter.blocks[-1]
    assert a.kind == kind and block.kind == "adapter"
    console = Console(record=True, width=200)
    render_summary(plan, console)
    assert "lora, held: nothing of it trains" in console.export_text()  # the component trains an adapter
    plain = plan_at(tmp_path / "specs" / "converted.toml", ["adapter.blocks=[]"])
    assert plan.memory.optimizer < plain.memory.optimizer  # no optimizer state for the held denoiser
    if kind in ("diag-oft", "boft"):
        assert (block.rank, block.alpha) == (a.oft_block_size, a.oft_constraint) == (4, 0.0)
    else:
        assert (block.rank, block.alpha, block.conv_rank) == (a.rank, a.alpha, a.conv_rank)
        assert block.conv_rank == (4 if "conv_dim" in args else 0)
        assert not block.conv_rank or block.conv_alpha == a.conv_alpha
    assert fate(
        kohya(tmp_path / "plain", command=f"{NETWORK} {args} {ZERO} --max_grad_norm 0"), "unet_lr"
    ) == ("mapped")


def test_a_dylora_files_unet_modules_are_held(tmp_path):
    """networks.dylora's --network_weights U-Net modules load into the held DyLoRA (were dropped: DBS403)."""
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    _lora_file(tmp_path / "prev.safetensors")
    command = f"{NETWORK} --network_module networks.dylora --network_args unit=2 {ZERO} --max_grad_norm 0"
    plan = _held(kohya(tmp_path, command=command + " --network_weights prev.safetensors"), tmp_path)
    assert plan.adapter.kind == "dylora" and plan.adapter.init_weights.endswith("prev.safetensors")


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_full_and_ia3_are_held_by_their_scale_blocks(tmp_path, algo):
    """LyCORIS full and IA^3 adapters are held by a ScaleBlock over every module at lr_scale 0 (were plain
    with a DBS404, a file's U-Net modules DBS403): their layers built as the adapter's (no size in the
    block), out of the optimizer; without a clip fresh modules stay plain, a file's U-Net modules are held
    and loaded."""
    args = f"--network_module lycoris.kohya --network_args algo={algo} preset=attn-mlp"
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    plan = _held(kohya(tmp_path, command=f"{NETWORK} {args} {ZERO}"), tmp_path)
    assert plan.adapter.kind == algo and len(plan.adapter.blocks) == 1
    block = plan.adapter.blocks[0]
    assert (block.pattern, block.kind, block.rank, block.conv_rank, block.lr_scale) == (
        "",
        "adapter",
        1,
        1,
        0,
    )
    spec = (tmp_path / "specs" / "converted.toml").read_text()
    assert '[[adapter.blocks]]\npattern = ""' in spec and "rank" not in spec.split("[[adapter.blocks]]")[1]
    console = Console(record=True, width=200)
    render_summary(plan, console)
    text = console.export_text()
    assert "lora, held: nothing of it trains" in text and "block (every module)" in text
    plain_plan = plan_at(tmp_path / "specs" / "converted.toml", ["adapter.blocks=[]"])
    assert plan.memory.optimizer < plain_plan.memory.optimizer  # no optimizer state for the held denoiser
    images(tmp_path / "plain" / "d" / "10_sks dog", 3, (512, 512))
    plain = kohya(tmp_path / "plain", command=f"{NETWORK} {args} {ZERO} --max_grad_norm 0")
    assert fate(plain, "unet_lr") == "mapped" and not plan_of(plain, tmp_path / "plain").train_denoiser
    key = f"{Q}.diff" if algo == "full" else f"{Q}.weight"
    save_file(
        {key: np.zeros((320, 320) if algo == "full" else (320,), np.float16)}, str(tmp_path / "f.safetensors")
    )
    command = f"{NETWORK} {args} {ZERO} --max_grad_norm 0 --network_weights f.safetensors"
    plan = _held(kohya(tmp_path, command=command), tmp_path)
    assert plan.adapter.init_weights.endswith("f.safetensors")


def test_excluded_layers_stay_ahead_of_the_held_block(tmp_path):
    """A full adapter's `exclude` (a preset file leaving layers out) stays rank-0 blocks ahead of the held
    ScaleBlock: the excluded layers get no copy, the rest are held."""
    from dbspec.compiler.adapters import adapter_plan
    from dbspec.spec.model import FullAdapter, ScaleBlock

    adapter = FullAdapter(
        kind="full",
        exclude=["attn2"],
        blocks=[ScaleBlock(pattern="up_", lr_scale=0.5), ScaleBlock(pattern="")],
    )
    plan = adapter_plan(adapter, "sd1", ())
    assert [(b.pattern, b.rank, b.lr_scale) for b in plan.blocks] == [
        ("attn2", 0, 1.0),
        ("up_", 1, 0.5),
        ("", 1, 1.0),
    ]
    assert not denoiser_held(plan.blocks)
    held = adapter_plan(
        FullAdapter(kind="full", exclude=["attn2"], blocks=[ScaleBlock(pattern="", lr_scale=0)]), "sd1", ()
    )
    assert denoiser_held(held.blocks)


def test_the_plan_says_the_denoiser_is_held_and_counts_no_optimizer_state(tmp_path):
    outcome = kohya_lora(tmp_path, ZERO)
    plan = _held(outcome, tmp_path)
    console = Console(record=True, width=200)
    render_summary(plan, console)
    text = console.export_text()
    assert "block (every module)" in text and "lora, held: nothing of it trains" in text
    plain = plan_at(tmp_path / "specs" / "converted.toml", ["adapter.blocks=[]"])
    # the same adapter trained: the held denoiser's parameters carry gradients but no optimizer state
    assert plan.memory.gradients == plain.memory.gradients
    assert plan.memory.optimizer < plain.memory.optimizer


def test_flux_and_sd3_hold_their_transformer_modules(tmp_path):
    """lora_flux / lora_sd3 at unet_lr 0 with CLIP training: the transformer's modules held alike."""
    flux = tmp_path / "flux"
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(flux / name)
    images(flux / "x" / "10_ohwx dog", 2, (512, 512))
    command = (
        "flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --clip_l "
        "clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors --train_data_dir x --resolution "
        "512 --network_module networks.lora_flux --network_dim 4 --mixed_precision bf16 "
        f"--max_train_steps 10 --learning_rate 1e-4 {ZERO}"
    )
    plan = _held(kohya(flux, command=command), flux)
    assert plan.model.family == "flux"
    sd3 = tmp_path / "sd3"
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl.safetensors"):
        component_file(sd3 / name)
    images(sd3 / "x" / "10_ohwx dog", 2, (512, 512))
    command = (
        "sd3_train_network.py --pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-large "
        "--clip_l clip_l.safetensors --clip_g clip_g.safetensors --t5xxl t5xxl.safetensors --train_data_dir "
        "x --resolution 512 --network_module networks.lora_sd3 --network_dim 16 --max_train_steps 10 "
        f"--learning_rate 1e-4 {ZERO}"
    )
    plan = _held(kohya(sd3, command=command), sd3)
    assert plan.model.family == "sd3" and plan.adapter.blocks[-1].rank == 16


def test_preset_blocks_are_held_other_kinds_in_a_map_too(tmp_path):
    """A LyCORIS preset's map entries (LoCon / LoRA blocks, and a block of another kind: full, whose
    `lora_full` weights runtime/blocks.py holds alike; was plain with a DBS404) are held with the rest."""
    from test_convert_kohya_lycoris_algo_maps import FULL, RESNETS_LOW, _convert

    (tmp_path / "held").mkdir()
    (tmp_path / "mixed").mkdir()
    held = _convert(tmp_path / "held", RESNETS_LOW, args=ZERO)
    plan = _held(held, tmp_path / "held")
    assert len(plan.adapter.blocks) > 1 and plan.adapter.blocks[-1].conv_rank == 8
    mixed = FULL + '[module_algo_map]\n  [module_algo_map.FeedForward]\n    algo = "full"\n'
    plan = _held(_convert(tmp_path / "mixed", mixed, args=ZERO), tmp_path / "mixed")
    assert "full" in {b.kind for b in plan.adapter.blocks} and plan.adapter.blocks[-1].kind == "adapter"


def test_lora_flux_ggpo_perturbs_the_held_modules_too(tmp_path):
    """lora_flux's LoRA-GGPO at unet_lr 0: kohya's update_grad_norms / update_norms walk every module, the
    held transformer's too (their gradients the uncleared, clipped sums), and each training forward perturbs
    them; dbspec's GGPO (runtime/ggpo.py) wraps every plain LoRA Linear, held or not, and reads the same
    gradients after the clip: the held conversion keeps ggpo_sigma / ggpo_beta."""
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    command = (
        "flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --clip_l "
        "clip_l.safetensors --t5xxl t5xxl.safetensors --ae ae.safetensors --train_data_dir x --resolution "
        "512 --network_module networks.lora_flux --network_dim 4 --mixed_precision bf16 "
        f"--max_train_steps 10 --learning_rate 1e-4 {ZERO} --network_args ggpo_sigma=0.03 ggpo_beta=0.01"
    )
    plan = _held(kohya(tmp_path, command=command), tmp_path)
    assert (plan.adapter.ggpo_sigma, plan.adapter.ggpo_beta) == (0.03, 0.01)


@pytest.mark.parametrize("module", ["networks.lora", "networks.dylora"])
def test_cyclic_lists_of_a_held_unet_bound_the_text_encoders_groups(tmp_path, module):
    """At unet_lr 0 kohya's optimizer keeps the text encoder's group and its LoRA+ plus group: CyclicLR's
    two-value lists bound those, and the held denoiser has no group of its own (it was required: DBS416)."""
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    command = (
        f"{NETWORK} --network_module {module} --network_args loraplus_lr_ratio=4 {ZERO} "
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=[1e-6,4e-6] max_lr=[5e-5,2e-4] "
        "step_size_up=50"
    )
    plan = _held(kohya(tmp_path, command=command), tmp_path)
    bounds = {g.name: (g.base_lr, g.max_lr) for g in plan.schedule.torch.groups}
    assert bounds == {"text_encoder": (1e-6, 5e-5), "text_encoder_lora_up": (4e-6, 2e-4)}


def test_the_catch_all_block_reads_the_kinds_defaults():
    """The block over every module takes the converted adapter's sizes, its kind's defaults where the spec
    leaves them out: GLoRA's alpha and conv_alpha default to the rank and conv_rank (attrs factories), an
    OFT's block size its default (its constraint the block's -1: the adapter's)."""
    from dbspec.convert.common.core import Conversion
    from dbspec.convert.kohya.held_unet import _catch_all

    conv = Conversion(tool="kohya")
    conv.values[("adapter", "kind")] = ("glora", None)
    conv.values[("adapter", "rank")] = (8, None)
    assert _catch_all(conv) == {"pattern": "", "rank": 8, "alpha": 8.0}
    conv.values[("adapter", "conv_rank")] = (4, None)
    assert _catch_all(conv) == {"pattern": "", "rank": 8, "alpha": 8.0, "conv_rank": 4, "conv_alpha": 4.0}
    conv.values[("adapter", "kind")] = ("boft", None)
    assert _catch_all(conv) == {"pattern": "", "block_size": 4}
