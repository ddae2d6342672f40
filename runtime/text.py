"""Tokenizing prompts for CLIP text encoders, in one window or several (the families'
encode_prompts build on it).

CLIP sees 77 positions: BOS, 75 prompt tokens, and a last EOS/pad. A longer prompt (`model.max_tokens` 150 or
225) is cut into 75-token windows, each framed as its own 77-token sequence and encoded separately; the hidden
states are then joined back into one sequence of 2 + 75·n positions: the first window's BOS, every window's 75
inner positions, and the last window's final position. This is kohya sd-scripts' `max_token_length` encoding,
window framing included (tokenizers whose pad is not EOS get an EOS closing each window, and an empty window
starts BOS, EOS).
"""

from __future__ import annotations

import torch

WINDOW = 75  # prompt tokens per CLIP window (77 positions less BOS and the last)


def tokenize(tokenizer, prompts: list[str], max_tokens: int = WINDOW) -> torch.Tensor:
    """Token ids: (B, 77) for one window, (B, n, 77) for n = max_tokens // 75 windows."""
    length = tokenizer.model_max_length
    if max_tokens <= length - 2:
        return _ids(tokenizer, prompts, length)
    return frame_windows(tokenizer, _ids(tokenizer, prompts, max_tokens + 2), max_tokens)


def frame_windows(tokenizer, ids: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """(B, max_tokens + 2) ids, one BOS ... EOS/pad sequence each -> (B, n, 77) framed windows."""
    body, eos, pad = tokenizer.model_max_length - 2, tokenizer.eos_token_id, tokenizer.pad_token_id
    windows = []
    for start in range(1, max_tokens + 1, body):
        window = torch.cat([ids[:, :1], ids[:, start : start + body], ids[:, -1:]], dim=1)
        if pad != eos:
            before_last = window[:, -2]
            window[:, -1] = torch.where((before_last != eos) & (before_last != pad), eos, window[:, -1])
            window[:, 1] = torch.where(window[:, 1] == pad, eos, window[:, 1])
        windows.append(window)
    return torch.stack(windows, dim=1)


def _ids(tokenizer, prompts: list[str], length: int) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


def flatten(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, n, 77) -> (B·n, 77) and n; (B, 77) stays, with n = 1."""
    if ids.ndim == 2:
        return ids, 1
    return ids.reshape(-1, ids.shape[-1]), ids.shape[1]


def join_windows(hidden: torch.Tensor, windows: int) -> torch.Tensor:
    """(B·n, 77, D) per-window hidden states -> (B, 2 + 75·n, D); one window is returned as it is."""
    if windows == 1:
        return hidden
    length = hidden.shape[1]
    per_prompt = hidden.reshape(-1, windows * length, hidden.shape[-1])
    parts = [per_prompt[:, :1]]
    parts += [per_prompt[:, k * length + 1 : k * length + length - 1] for k in range(windows)]
    parts.append(per_prompt[:, -1:])
    return torch.cat(parts, dim=1)
