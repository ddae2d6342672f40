"""kohya's text-encoder module mode on Flux and SD3: train.text_encoder_mode where it changes T5-XXL.

train_network.py (which flux_train_network.py and sd3_train_network.py inherit) puts every text encoder in
train() mode under --gradient_checkpointing and in eval() mode without it, trained or frozen (the LoRA
network trains either way: it is a module of its own). Only T5-XXL has dropout (dropout_rate 0.1), so the
mode matters where T5 encodes at every step: its outputs not cached (--cache_text_encoder_outputs builds the
cache before, with T5 in eval mode, and kohya refuses train_t5xxl with it). dbspec's default ("trained")
puts T5 in train mode exactly when it trains, so the mode is written only where the two differ.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.train import text_outputs_cached

Args = dict[str, Legacy]


def map_text_encoder_mode(a: Args, conv: Conversion) -> None:
    """train.text_encoder_mode = "train" (--gradient_checkpointing, T5 frozen) or "eval" (no
    --gradient_checkpointing, T5 trains or is idle) where T5-XXL encodes at every step; nothing otherwise."""
    if text_outputs_cached(a) is not None:
        return  # T5's outputs come from the cache, encoded in eval mode
    grad = a["gradient_checkpointing"]
    t5_trains = bool(conv.values.get(("train", "t5"), (False, ""))[0])
    # an idle T5-XXL (train.t5_idle) runs as a trained one: dbspec's "trained" puts it in train mode too
    t5_trains = t5_trains or conv.values.get(("train", "t5_idle"), ("none", ""))[0] == "kohya"
    if grad.value and not t5_trains:
        conv.put(
            ("train", "text_encoder_mode"),
            "train",
            conv.comment(grad, "train_network.py puts every text encoder in train mode: T5-XXL's dropout"),
        )
    elif not grad.value and t5_trains:
        conv.put(
            ("train", "text_encoder_mode"),
            "eval",
            conv.comment(grad, "train_network.py puts every text encoder in eval mode, a trained T5-XXL too"),
        )


def map_validation_text_mode(a: Args, conv: Conversion) -> None:
    """validation.text_encoder_mode = "training" where T5-XXL is in train mode in training steps
    (--gradient_checkpointing, its outputs not cached) and the run validates: train_network.py's validation
    loss puts only its network in eval mode, and flux_train_utils / sd3_train_utils sample_images switch no
    mode, so both encode with T5's dropout (kohya's validation seed, or each sample prompt's seed, seeds its
    draws). Without validation images or a scored split there is nothing to encode."""
    if text_outputs_cached(a) is not None or not a["gradient_checkpointing"].value:
        return
    prompts = conv.values.get(("validation", "prompts"), ([], ""))[0]
    scored = ("evaluation", "split") in conv.values and conv.values.get(("evaluation", "score"), (True, ""))[
        0
    ] is not False
    if prompts or scored:
        conv.put(
            ("validation", "text_encoder_mode"),
            "training",
            conv.comment(
                a["gradient_checkpointing"],
                "kohya validates and samples with T5-XXL in train mode too (its network alone in eval mode)",
            ),
        )
