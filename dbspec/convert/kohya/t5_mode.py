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
    --gradient_checkpointing, T5 trains) where T5-XXL encodes at every step; nothing otherwise."""
    if text_outputs_cached(a) is not None:
        return  # T5's outputs come from the cache, encoded in eval mode
    grad = a["gradient_checkpointing"]
    t5_trains = bool(conv.values.get(("train", "t5"), (False, ""))[0])
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
