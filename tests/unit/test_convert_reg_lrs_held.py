"""kohya's networks.lora_flux `network_reg_lrs` groups at rate 0 (issue 12; were DBS403). assemble_params
leaves a group whose rate is 0 out of the optimizer (`continue`): a regex at rate 0, and the default groups at
`unet_lr` 0, whose modules kohya still builds, saves and runs. dbspec holds such modules in blocks at
`lr_scale = 0` (no optimizer group, gradients kept for the clip norm). The expectations are computed here from
kohya's rules (the first regex `re.search` finds in the kohya name wins; its rate, else the denoiser's), not
read back from the converter."""

from __future__ import annotations

import re

from convert_kit import codes, errors, fate, images, kohya, messages, plan_of, write
from test_convert_reg_dims import BASE, _first, _flux, _modules, _pairs

FLUX = "black-forest-labs/FLUX.1-dev"


def _block(plan, path: str):
    return next((b for b in plan.adapter.blocks if re.search(b.pattern, path)), None)


def _expect(plan, lrs: str, unet_rate: float, rank: int = 16) -> int:
    """Every module kohya builds (rank `rank`) has kohya's rate in the plan: a positive rate as the block's
    own lr (or the denoiser's, optimizer.lr, where no regex matches); rate 0 as a block held at lr_scale 0."""
    reg = _pairs(lrs, float)
    checked = 0
    for name, paths in _modules():
        rate = _first(reg, name)
        rate = unet_rate if rate is None else rate
        for path in paths:
            block = _block(plan, path)
            got_rank = block.rank if block is not None else plan.adapter.rank
            assert got_rank == rank, (name, path)
            if rate == 0:
                assert block is not None and (block.lr, block.lr_scale) == (0.0, 0.0), (name, path, block)
            elif _first(reg, name) is not None:
                assert block is not None and (block.lr, block.lr_scale) == (rate, 1.0), (name, path, block)
            else:
                assert block is None or (block.lr, block.lr_scale) == (0.0, 1.0), (name, path, block)
                assert plan.optimizer.lr == rate
            checked += 1
    return checked


def test_a_regex_at_rate_zero_holds_its_modules(tmp_path):
    lrs = r"img_attn=0,single_blocks_(1|2)_=2e-4,double_blocks_3_=0"
    outcome = _flux(tmp_path, f'"network_reg_lrs={lrs}"', "--unet_lr 3.3e-4")
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.optimizer.lr == 3.3e-4
    assert _expect(plan, lrs, 3.3e-4) == 19 * 14 + 38 * 6


def test_unet_lr_zero_holds_the_modules_no_regex_trains(tmp_path):
    """`--unet_lr 0`: kohya leaves the default group out; the regexes' groups train at their own rates. Every
    module kohya builds is in a block, so optimizer.lr (kohya's learning_rate, the optimizer's own lr) reads
    no denoiser module."""
    lrs = r"double_blocks_(0|1)_img=1e-4,single_blocks_3[0-7]_=5e-5"
    outcome = _flux(tmp_path, f'"network_reg_lrs={lrs}"', "--unet_lr 0")
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "unet_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and not plan.train_text_encoder
    assert _expect(plan, lrs, 0.0) == 19 * 14 + 38 * 6
    assert _block(plan, "proj_out").rank == 0  # the final layer stays out, as kohya does not scan it


def test_unet_lr_zero_with_reg_dims_and_the_text_encoder(tmp_path):
    """A config file: per-regex ranks with kohya's other rank rules, unet_lr 0 and the text encoder training
    at its own rate (optimizer.lr: its rate; CLIP-L's modules are matched by no regex)."""
    images(tmp_path / "img" / "10_ohwx dog", 2, (512, 512))
    from convert_kit import component_file

    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    config = f"""\
pretrained_model_name_or_path = "{FLUX}"
clip_l = "clip_l.safetensors"
t5xxl = "t5xxl_fp16.safetensors"
ae = "ae.safetensors"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "networks.lora_flux"
network_dim = 16
network_alpha = 8
network_args = ["network_reg_dims=single_blocks_(0|1)_=4,lora_unet_double_blocks_2_=0", "img_mlp_dim=12", \
"network_reg_lrs=single_blocks_0_=0,single_blocks_1_=2e-4,img_mlp=7e-5"]
learning_rate = 1e-4
unet_lr = 0.0
text_encoder_lr = 5e-5
optimizer_type = "AdamW"
max_train_steps = 200
mixed_precision = "bf16"
timestep_sampling = "shift"
discrete_flow_shift = 3.1582
model_prediction_type = "raw"
guidance_scale = 1.0
"""
    write(tmp_path / "cfg.toml", config)
    outcome = kohya(
        tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch flux_train_network.py"
    )
    assert "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.train_text_encoder
    assert plan.optimizer.text_encoder_lr == 5e-5
    dims = _pairs("single_blocks_(0|1)_=4,lora_unet_double_blocks_2_=0", int)
    reg = _pairs("single_blocks_0_=0,single_blocks_1_=2e-4,img_mlp=7e-5", float)
    for name, paths in _modules():
        rank = _first(dims, name)
        rank = (12 if "img_mlp" in name else 16) if rank is None else rank
        rate = _first(reg, name)
        rate = 0.0 if rate is None else rate
        for path in paths:
            block = _block(plan, path)
            assert block is not None and block.rank == rank, (name, path, block)
            if rank:
                assert (block.lr, block.lr_scale) == ((rate, 1.0) if rate else (0.0, 0.0)), (name, block)


def test_unet_lr_zero_where_no_regex_trains_holds_or_freezes_the_denoiser(tmp_path):
    """No built module at a positive rate: nothing of the denoiser trains. Under kohya's clip (default 1.0)
    the built modules' gradients count in it: the denoiser carries the adapter held whole (every block at
    lr_scale 0, the last over every module: convert/kohya/held_unet.py); without a clip train.denoiser =
    false, as before, and no held blocks are written."""
    base = BASE.replace("--network_train_unet_only", "").replace("--cache_text_encoder_outputs", "")
    args = "--unet_lr 0 --text_encoder_lr 1e-5"
    outcome = _flux(tmp_path, '"network_reg_lrs=img_attn=0"', args, base)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.train_text_encoder and plan.adapter.blocks[-1].pattern == ""
    assert all((b.lr, b.lr_scale) == (0.0, 0.0) for b in plan.adapter.blocks)
    outcome = _flux(tmp_path / "plain", '"network_reg_lrs=img_attn=0"', args + " --max_grad_norm 0", base)
    plan = plan_of(outcome, tmp_path / "plain")
    assert not plan.train_denoiser and plan.train_text_encoder
    assert not any(b.lr or not b.lr_scale for b in plan.adapter.blocks)


def test_learning_rate_zero_too_reads_no_group(tmp_path):
    """learning_rate 0 as well, with no text encoder (was DBS403): kohya's optimizer default rate, which no
    group reads (assemble_params gives every group its own rate and leaves those at 0 out). dbspec's
    optimizer.lr must be positive: the first regex block's rate, and every module kohya builds is in a block
    (its own rate, or held at lr_scale 0), so no group trains at optimizer.lr."""
    lrs = r"single_blocks_3[0-7]_=5e-5,double_blocks_(0|1)_img=1e-4"
    both = _flux(tmp_path, f'"network_reg_lrs={lrs}"', "--unet_lr 0", BASE.replace("3e-4", "0"))
    assert "DBS403" not in codes(both) and fate(both, "learning_rate") == "mapped", errors(both)
    plan = plan_of(both, tmp_path)
    assert plan.train_denoiser and not plan.train_text_encoder
    assert plan.optimizer.lr == next(b.lr for b in plan.adapter.blocks if b.lr)  # the first regex block's
    assert _expect(plan, lrs, 0.0) == 19 * 14 + 38 * 6  # no module left to the denoiser's own group
    # the only positive rates in the plan are the regexes' own
    assert {b.lr for b in plan.adapter.blocks if b.lr_scale} - {0.0} == {5e-5, 1e-4}


def test_learning_rate_zero_under_polynomial_stays_refused(tmp_path):
    """transformers' polynomial schedule reads kohya's default rate, 0: it raises (DBS402)."""
    extra = "--unet_lr 0 --lr_scheduler polynomial"
    stops = _flux(tmp_path, '"network_reg_lrs=img_attn=1e-4"', extra, BASE.replace("3e-4", "0"))
    assert not stops.written and "lr_end" in messages(stops, "DBS402")


def test_what_stays_refused(tmp_path):
    """A negative rate. (A regex on CLIP-L's modules while it trains converts: test_convert_reg_lrs_text.)"""
    negative = _flux(tmp_path, '"network_reg_lrs=img_attn=-1e-4"')
    assert not negative.written and "rate -0.0001" in messages(negative, "DBS403")
