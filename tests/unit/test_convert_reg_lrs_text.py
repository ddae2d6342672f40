"""kohya's networks.lora_flux `network_reg_dims` / `network_reg_lrs` on the text encoders' modules (issue 12;
were DBS403). create_modules applies the rank regexes to every module it builds, CLIP-L's (`lora_te1_`) and,
with train_t5xxl=True, T5-XXL's (`lora_te3_`) too (network_alpha with a matched rank, else network_dim);
assemble_params gives each text encoder's module the first matching regex's group `reg_lr_<i>` at that
absolute rate (none at rate 0: held), the others its encoder's text_encoder_lr value. The expectations are
computed here from those rules over module lists written out independently, not read from the converter."""

from __future__ import annotations

import re

from convert_kit import codes, errors, fate, messages, plan_of
from test_convert_reg_dims import BASE, _first, _flux, _pairs

# the text encoders train: no network_train_unet_only, no cached outputs (T5 cannot train with them)
TEXT = BASE.replace("--network_train_unet_only", "").replace("--cache_text_encoder_outputs", "")
CLIP = {f"self_attn_{p}_proj": f"self_attn.{p}_proj" for p in "qkv"} | {
    "self_attn_out_proj": "self_attn.out_proj"
}
CLIP |= {"mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
T5 = {f"layer_0_SelfAttention_{p}": f"layer.0.SelfAttention.{p}" for p in "qkvo"}
T5 |= {f"layer_1_DenseReluDense_{p}": f"layer.1.DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wo")}


def _text_modules(t5: bool):
    """(kohya name, the path a text-encoder block's pattern is searched in) of each Linear kohya builds."""
    for i in range(12):
        for child, path in CLIP.items():
            yield (
                f"lora_te1_text_model_encoder_layers_{i}_{child}",
                f"text_encoder.text_model.encoder.layers.{i}.{path}",
            )
    for i in range(24 if t5 else 0):
        for child, path in T5.items():
            yield f"lora_te3_encoder_block_{i}_{child}", f"text_encoder_2.encoder.block.{i}.{path}"


def _text_planned(plan, path: str) -> tuple[int, float, float | None]:
    """(rank, alpha, rate) the plan gives a text-encoder module (rate None: held, out of the optimizer)."""
    a, o = plan.adapter, plan.optimizer
    block = next((b for b in a.text_encoder_blocks if re.search(b.pattern, path)), None)
    encoder = o.text_encoder_lr
    if path.startswith("text_encoder_2.") and o.text_encoder_2_lr is not None:
        encoder = o.text_encoder_2_lr
    if block is None:
        return a.rank, a.alpha, encoder
    if block.lr:
        return block.rank, block.alpha, block.lr
    return block.rank, block.alpha, encoder * block.lr_scale if block.lr_scale else None


def _expect(plan, dims: str, lrs: str, rates: tuple[float, float], t5: bool) -> int:
    reg_dims, reg_lrs = _pairs(dims, int), _pairs(lrs, float)
    checked = 0
    for name, path in _text_modules(t5):
        rank = _first(reg_dims, name)
        rank, alpha = (16, 8.0) if rank is None else (rank, 8.0)  # network_dim / network_alpha
        if not rank:
            assert _text_planned(plan, path)[0] == 0, (name, path)
            continue
        rate = _first(reg_lrs, name)
        rate = rates[name.startswith("lora_te3_")] if rate is None else rate
        assert _text_planned(plan, path) == (rank, alpha, rate or None), (name, path)
        checked += 1
    return checked


def test_clip_l_regexes_give_ranks_and_rates(tmp_path):
    dims = r"layers_(0|1)_self_attn=4,layers_11_=0"
    lrs = r"layers_[0-3]_mlp=2e-4,layers_5_=0,img_attn=1e-3"
    outcome = _flux(
        tmp_path, f'"network_reg_dims={dims}" "network_reg_lrs={lrs}"', "--text_encoder_lr 1e-5", TEXT
    )
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 1e-5
    assert _expect(plan, dims, lrs, (1e-5, 1e-5), t5=False) == 11 * 6
    # the denoiser's regex still decides the denoiser alone
    assert any(b.lr == 1e-3 for b in plan.adapter.blocks)


def test_t5_regexes_with_its_own_rate(tmp_path):
    """train_t5xxl=True with text_encoder_lr [CLIP-L, T5]: T5's modules take the regexes too; those no regex
    matches train at T5's own rate (optimizer.text_encoder_2_lr)."""
    dims = r"block_(0|1)_layer_0=8"
    lrs = r"block_[0-9]_layer_1=3e-5,block_2[0-3]_=0,encoder_layers_0_=7e-5"
    extra = "--text_encoder_lr 1e-5 5e-5"
    args = f'"train_t5xxl=True" "network_reg_dims={dims}" "network_reg_lrs={lrs}"'
    outcome = _flux(tmp_path, args, extra, TEXT)
    assert "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.t5_targets and plan.optimizer.text_encoder_2_lr == 5e-5
    assert _expect(plan, dims, lrs, (1e-5, 5e-5), t5=True) == 12 * 6 + 24 * 7


def test_the_plan_shows_the_text_encoder_blocks_rates(tmp_path):
    import io

    from rich.console import Console

    from dbspec.plan.summary import render_summary

    outcome = _flux(tmp_path, '"network_reg_lrs=layers_0_=2e-4,layers_1_=0"', "--text_encoder_lr 1e-5", TEXT)
    console = Console(file=io.StringIO(), width=300)
    render_summary(plan_of(outcome, tmp_path), console)
    shown = console.file.getvalue()
    assert "text-encoder block" in shown and "lr 0.0002" in shown and "held at init" in shown


def test_a_regex_training_clip_l_modules_at_its_rate_0_holds_the_others(tmp_path):
    """CLIP-L at text_encoder_lr 0 (was DBS403): kohya builds every CLIP-L module, assemble_params gives
    those a regex matches at a positive rate their `reg_lr_<i>` group and leaves the default group at 0 out
    ("NO LR skipping!"), so CLIP-L trains with its other modules out of the optimizer (their gradients
    uncleared, clipped): train.text_encoder with those modules held in blocks at lr_scale 0, the regexes'
    modules at their rates, a regex at rate 0 held alike; optimizer.text_encoder_lr reads no module."""
    dims = r"layers_2_self_attn=0"
    lrs = r"layers_1_=1e-4,layers_3_mlp=0"
    outcome = _flux(
        tmp_path, f'"network_reg_dims={dims}" "network_reg_lrs={lrs}"', "--text_encoder_lr 0", TEXT
    )
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    assert "count in the total norm" not in messages(outcome, "DBS404")  # no idle-encoder warning
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.idle_text_encoders == ()
    assert _expect(plan, dims, lrs, (0.0, 0.0), t5=False) == 12 * 6 - 4
    trained = [b for b in plan.adapter.text_encoder_blocks if b.lr]
    assert trained and all(b.lr == 1e-4 and r"layers\.(1)\." in b.pattern for b in trained), trained
    # nothing trains at the encoder's own rate, so no group of it at 0 to hold (no DBS229 warning)
    assert not any("DBS229" in w for w in plan.warnings), plan.warnings
    assert plan.optimizer.text_encoder_lr == plan.optimizer.lr


def test_what_stays_refused(tmp_path):
    """A negative rate on a text-encoder module. (A regex training T5-XXL modules at T5's rate 0 converts:
    test_convert_reg_lrs_t5.py.)"""
    negative = _flux(tmp_path, '"network_reg_lrs=layers_1_=-1e-4"', "--text_encoder_lr 1e-5", TEXT)
    assert not negative.written and "rate -0.0001" in messages(negative, "DBS403")
