"""kohya's networks.lora_flux `network_reg_lrs` training T5-XXL modules while T5's own rate is 0 (issue 12;
was DBS403). With train_t5xxl=True create_modules builds every T5 module (`lora_te3_...`) and
prepare_optimizer_params_with_multiple_te_lrs assembles T5's groups at text_encoder_lr's second value (Flux;
Chroma's one text encoder alike): the modules a regex matches first sit in its `reg_lr_<i>` group at that
rate, the default group at 0 is left out ("NO LR skipping!"), a regex at rate 0 too. T5 encodes under grad
every step and every module's parameters are in get_trainable_params, so the left-out ones take gradients
that zero_grad never clears and max_grad_norm's clip counts. Run in-process (sd-scripts 48d368fa, stub
modules, text_encoder_lr [1e-5, 0], `block_1_=1e-4,block_2_=0`), kohya gave CLIP-L's default groups, T5's
`reg_lr_0` (and plus) alone, and the transformer's. dbspec: `train.t5` with the regexes' modules at their
rates and the others held in [[adapter.text_encoder_blocks]] at lr_scale 0, as CLIP-L's at its rate 0
(test_convert_reg_lrs_text.py). The expectations are computed here from kohya's rules over module lists
written out independently (test_convert_reg_lrs_text._expect), not read from the converter."""

from __future__ import annotations

import re

from convert_kit import codes, errors, fate, messages, plan_of
from test_convert_kohya_chroma import _chroma
from test_convert_reg_dims import _first, _flux, _pairs
from test_convert_reg_lrs_text import T5, TEXT, _expect


def _held_and_trained(plan, component: str) -> tuple[set[str], set[tuple[str, float]]]:
    """The T5 module paths (`component.encoder.block.N.<child>`) the plan holds (lr_scale 0), and those it
    trains with their rate, over T5-XXL's 24 blocks."""
    held, trained = set(), set()
    for i in range(24):
        for child in T5.values():
            path = f"{component}.encoder.block.{i}.{child}"
            block = next((b for b in plan.adapter.text_encoder_blocks if re.search(b.pattern, path)), None)
            assert block is not None, path  # every T5 module is in a block: T5's own rate reads none
            if block.lr:
                trained.add((path, block.lr))
            else:
                assert block.lr_scale == 0.0 and block.rank, (path, block)
                held.add(path)
    return held, trained


def test_a_regex_training_t5_modules_at_its_rate_0_holds_the_others(tmp_path):
    """text_encoder_lr [1e-5, 0]: CLIP-L trains at 1e-5 (layer 0 at its regex's 2e-4), T5 trains blocks 1 and
    2's attention at 1e-4 and holds every other module (block 3's at its regex's rate 0 alike, block 0's
    attention at a matched rank 4); T5's rate 0 reads no module, so no text_encoder_2_lr is written."""
    dims = r"block_0_layer_0=4"
    lrs = r"block_(1|2)_layer_0=1e-4,block_3_=0,layers_0_=2e-4,img_attn=5e-4"
    args = f'"train_t5xxl=True" "network_reg_dims={dims}" "network_reg_lrs={lrs}"'
    outcome = _flux(tmp_path, args, "--text_encoder_lr 1e-5 0 --max_grad_norm 1.0", TEXT)
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_args train_t5xxl") == "mapped"
    assert "t5_idle" not in outcome.text and "t5 = true" in outcome.text
    assert "first text_encoder_lr" not in outcome.text  # lora_flux reads T5's rate from the second value
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.t5_targets and plan.train_text_encoder and plan.idle_text_encoders == ()
    assert plan.optimizer.text_encoder_lr == 1e-5 and plan.optimizer.text_encoder_2_lr is None
    assert _expect(plan, dims, lrs, (1e-5, 0.0), t5=True) == 12 * 6 + 24 * 7
    held, trained = _held_and_trained(plan, "text_encoder_2")
    expected = {
        (f"text_encoder_2.encoder.block.{i}.{c}", 1e-4) for i in (1, 2) for c in T5.values() if "Self" in c
    }
    assert trained == expected and len(held) == 24 * 7 - 8
    # nothing trains at T5's rate 0: no group at 0 to warn about
    assert not any("DBS229" in w for w in plan.warnings), plan.warnings
    # the denoiser's regex still decides the denoiser alone
    assert any(b.lr == 5e-4 for b in plan.adapter.blocks)


def test_both_encoders_at_rate_0_with_a_regex_on_t5_alone(tmp_path):
    """One text_encoder_lr 0 (CLIP-L and T5 both at 0) and a regex reaching T5 alone: CLIP-L's modules are
    idle under the clip (train.text_encoder_idle, as before), T5 trains its matched modules at their rate,
    the rest held; the text encoders' rate reads no module (optimizer.text_encoder_lr follows lr). Without a
    clip CLIP-L's fresh modules change nothing: train.text_encoder = false alone, T5 still trains."""
    lrs = r"block_2[0-3]_layer_1=3e-5"
    args = f'"train_t5xxl=True" "network_reg_lrs={lrs}"'
    for clip, idle in (("1.0", ("text_encoder",)), ("0", ())):
        where = tmp_path / f"clip{clip}"
        outcome = _flux(where, args, f"--text_encoder_lr 0 --max_grad_norm {clip}", TEXT)
        assert "DBS403" not in codes(outcome), errors(outcome)
        assert fate(outcome, "text_encoder_lr") == "mapped"
        plan = plan_of(outcome, where)
        assert plan.adapter.t5_targets and plan.idle_text_encoders == idle, clip
        assert "text_encoder = false" in outcome.text
        o = plan.optimizer
        assert o.text_encoder_lr == o.lr == 3e-4 and o.text_encoder_2_lr is None
        held, trained = _held_and_trained(plan, "text_encoder_2")
        reg = _pairs(lrs, float)
        for i in range(24):
            for kohya_child, child in T5.items():
                rate = _first(reg, f"lora_te3_encoder_block_{i}_{kohya_child}")
                path = f"text_encoder_2.encoder.block.{i}.{child}"
                assert ((path, rate) in trained) if rate else (path in held), path
        assert len(trained) == 4 * 3
        # CLIP-L's modules take no block: idle or untrained, at their rank
        assert not any(b.pattern.startswith("^text_encoder\\.") for b in plan.adapter.text_encoder_blocks)
        assert not any("DBS229" in w for w in plan.warnings), plan.warnings


def test_unet_lr_0_with_regexes_training_t5_and_the_transformer(tmp_path):
    """unet_lr 0 and text_encoder_lr 0: the regexes train some transformer and T5 modules and every other
    built module is held, so no optimizer rate reads a module; optimizer.lr is kohya's learning_rate (the
    optimizer's own `lr`), not dbspec's full fine-tune default (no DBS215)."""
    lrs = r"block_1_=1e-4,single_blocks_(0|1)_=5e-5"
    args = f'"train_t5xxl=True" "network_reg_lrs={lrs}"'
    outcome = _flux(tmp_path, args, "--unet_lr 0 --text_encoder_lr 0", TEXT)
    assert not codes(outcome) & {"DBS403", "DBS215"}, errors(outcome)
    assert fate(outcome, "learning_rate") == "mapped" and fate(outcome, "unet_lr") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.adapter.t5_targets
    assert plan.optimizer.lr == 3e-4
    held, trained = _held_and_trained(plan, "text_encoder_2")
    assert {p for p, _ in trained} == {f"text_encoder_2.encoder.block.1.{c}" for c in T5.values()}
    assert {r for _, r in trained} == {1e-4} and len(held) == 23 * 7
    assert any(b.lr == 5e-5 for b in plan.adapter.blocks)


def test_chroma_t5_at_rate_0_trains_the_regexes_modules(tmp_path):
    """Chroma: T5-XXL is the one text encoder (component `text_encoder`, its rate optimizer.text_encoder_lr):
    at text_encoder_lr 0 a regex training some of its modules trains T5 with the others held, and the rate,
    reading no module, is not written as 0 (no DBS229)."""
    lrs = r"block_(0|5)_layer_0_SelfAttention_(q|v)=2e-4,block_6_=0"
    outcome = _chroma(
        tmp_path,
        f'--network_args "train_t5xxl=True" "network_reg_lrs={lrs}" --text_encoder_lr 0',
        cached="",
    )
    assert fate(outcome, "network_args") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "chroma" and plan.adapter.t5_targets and plan.train_text_encoder
    assert plan.optimizer.text_encoder_lr == plan.optimizer.lr == 1e-4
    held, trained = _held_and_trained(plan, "text_encoder")
    assert trained == {
        (f"text_encoder.encoder.block.{i}.layer.0.SelfAttention.{p}", 2e-4) for i in (0, 5) for p in "qv"
    }
    assert len(held) == 24 * 7 - 4
    assert not any("DBS229" in w for w in plan.warnings), plan.warnings
    assert "T5-XXL module" not in messages(outcome, "DBS403")
