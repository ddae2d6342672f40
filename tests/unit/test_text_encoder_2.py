"""train.text_encoder_2: SDXL's second text encoder frozen while the first trains (kohya's sdxl_train.py
with learning_rate_te2 = 0); settled in the per-component plan,
resolved at plan time on one-encoder models."""

from __future__ import annotations

from pathlib import Path


from tests.unit.hubspecs import GPU, SD15, SDXL, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture
from dbspec.spec.model import Train


def _planned(tmp_path: Path, train: str, base: str = SDXL):
    return plan_hub_spec(tmp_path, f"[train]\n{train}\n", base)


def _trainable(plan) -> dict[str, str]:
    return {c.name: c.trainable for c in plan.precision.components}


def test_text_encoder_2_derives_from_text_encoder():
    assert Train(text_encoder=True).text_encoder_2 and not Train().text_encoder_2


def test_second_text_encoder_frozen_while_the_first_trains(tmp_path):
    planned = _planned(tmp_path, "text_encoder = true\ntext_encoder_2 = false")
    plan = planned.plan
    assert plan is not None, [d.message for d in planned.diagnostics]
    assert plan.train_text_encoder  # any text encoder trains
    assert _trainable(plan) == {
        "unet": "full",
        "text_encoder": "full",
        "text_encoder_2": "frozen",
        "vae": "frozen",
    }
    both = _planned(tmp_path, "text_encoder = true").plan
    assert _trainable(both)["text_encoder_2"] == "full"
    # the frozen encoder is held in the mixed dtype and needs no optimizer state: a smaller estimate
    assert plan.memory.total < both.memory.total


def test_text_encoder_2_on_a_one_encoder_model_warns(tmp_path):
    planned = _planned(tmp_path, "text_encoder = true\ntext_encoder_2 = false", base=SD15)
    assert planned.plan is not None
    assert [d.code for d in planned.diagnostics if d.code == "DBS263"] == ["DBS263"]
    assert _trainable(planned.plan)["text_encoder"] == "full"


def test_text_encoder_2_alone_trains_the_second_encoder_with_the_first_frozen(tmp_path):
    """kohya sdxl_train.py with learning_rate_te1 = 0: train_text_encoder1 is false, the second trains."""
    planned = _planned(
        tmp_path, "denoiser = true\ntext_encoder_2 = true\n[optimizer]\ntext_encoder_lr = 1e-6"
    )
    plan = planned.plan
    assert plan is not None and plan.train_text_encoder
    assert not [d.code for d in planned.diagnostics if d.code in ("DBS206", "DBS263")]
    assert _trainable(plan) == {
        "unet": "full",
        "text_encoder": "frozen",
        "text_encoder_2": "full",
        "vae": "frozen",
    }
    assert plan.optimizer.text_encoder_lr == 1e-6 and plan.optimizer.text_encoder_2_lr is None
    assert plan.cache.text_embeddings is False  # a trained encoder's outputs change: never cached


def test_text_encoder_2_alone_on_a_one_encoder_model_warns_and_trains_no_encoder(tmp_path):
    planned = _planned(tmp_path, "denoiser = true\ntext_encoder_2 = true", base=SD15)
    assert planned.plan is not None and not planned.plan.train_text_encoder
    assert "DBS263" in [d.code for d in planned.diagnostics]
    assert _trainable(planned.plan)["text_encoder"] == "frozen"


def test_second_text_encoder_rate_while_frozen_warns_and_is_not_planned(tmp_path):
    planned = _planned(
        tmp_path, "text_encoder = true\ntext_encoder_2 = false\n[optimizer]\ntext_encoder_2_lr = 5e-7"
    )
    assert planned.plan is not None and planned.plan.optimizer.text_encoder_2_lr is None
    assert "DBS264" in [d.code for d in planned.diagnostics]
