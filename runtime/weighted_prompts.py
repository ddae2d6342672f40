"""Weighted captions (`model.weighted_captions`, kohya's `--weighted_captions`): A1111 attention syntax in a
caption scales the text encoder's hidden states of the tokens it covers.

Syntax: `(words)` multiplies by 1.1, `[words]` divides by 1.1, `(words:1.5)` multiplies by 1.5; brackets nest
(their factors multiply); `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters; an unclosed bracket
applies to the rest of the caption and an unmatched closing one is plain text.

As kohya sd-scripts trains (its SD/SDXL text-encoding strategies): each span of one weight is tokenized on its
own and the tokens joined (BOS, tokens, EOS, pads, cut at the plan's token count), framed into CLIP windows as
unweighted prompts are (runtime/text.py), encoded, and each position's hidden state multiplied by its token's
weight (BOS, EOS and pads keep 1). No renormalisation follows: that was kohya's older
`get_weighted_text_embeddings`, which its training scripts no longer call. Caption processing (shuffle, drop,
...) runs on the raw caption first, so the syntax is parsed in the processed caption, as kohya does.

The weights are a function of the caption, so text caches (keyed by caption and `model.weighted_captions`)
keep working.
"""

from __future__ import annotations

import re

import torch

from dbspec.runtime.text import WINDOW, frame_windows

UP = 1.1  # factor of (words)
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:([+-]?[.\d]+)\)|\)|\]|[^\\()\[\]:]+|:")


def parse(text: str) -> list[tuple[str, float]]:
    """The caption as (text, weight) spans, neighbours of equal weight merged; [("", 1.0)] when empty."""
    spans: list[list] = []
    rounds: list[int] = []  # where each open "(" started, in spans
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for span in spans[start:]:
            span[1] *= factor

    for match in _TOKEN.finditer(text):
        part, number = match.group(0), match.group(1)
        if part.startswith("\\"):
            spans.append([part[1:], 1.0])
        elif part == "(":
            rounds.append(len(spans))
        elif part == "[":
            squares.append(len(spans))
        elif number is not None and rounds:
            scale(rounds.pop(), _number(number))
        elif part == ")" and rounds:
            scale(rounds.pop(), UP)
        elif part == "]" and squares:
            scale(squares.pop(), 1 / UP)
        else:
            spans.append([part, 1.0])
    for start in rounds:
        scale(start, UP)
    for start in squares:
        scale(start, 1 / UP)
    merged: list[list] = []
    for span in spans or [["", 1.0]]:
        if merged and merged[-1][1] == span[1]:
            merged[-1][0] += span[0]
        else:
            merged.append(list(span))
    return [(t, w) for t, w in merged]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "1.2.3": kohya stops with Python's error; a weight of 1 here
        return 1.0


def tokenize(tokenizer, prompts: list[str], max_tokens: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids framed as runtime/text.py's `tokenize` frames them ((B, 77) or (B, n, 77)) and each joined
    position's weight (B, 77) or (B, 2 + 75·n), in the order `join_windows` returns the hidden states."""
    one_window = max_tokens <= tokenizer.model_max_length - 2
    length = tokenizer.model_max_length if one_window else max_tokens + 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    all_ids, all_weights = [], []
    for prompt in prompts:
        ids: list[int] = []
        weights: list[float] = []
        for text, weight in parse(prompt):
            tokens = tokenizer(text).input_ids[1:-1]
            ids += tokens
            weights += [weight] * len(tokens)
        ids, weights = ids[: length - 2], weights[: length - 2]
        all_ids.append([bos, *ids, eos] + [pad] * (length - 2 - len(ids)))
        all_weights.append([1.0, *weights] + [1.0] * (length - 1 - len(weights)))
    ids_t = torch.tensor(all_ids, dtype=torch.long)
    if not one_window:
        ids_t = frame_windows(tokenizer, ids_t, max_tokens)
    return ids_t, torch.tensor(all_weights, dtype=torch.float32)


def apply(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Joined hidden states (B, T, D) scaled by their positions' weights (B, T), in the states' dtype."""
    return hidden * weights.to(hidden.device, hidden.dtype).unsqueeze(-1)


def encode_options(model) -> dict:
    """encode_prompts' keyword for the plan's model: {"weighted": True} with `model.weighted_captions`, else
    nothing (the families without CLIP windows take no such keyword; the compiler refuses them, DBS352)."""
    return {"weighted": True} if model.weighted_captions else {}
