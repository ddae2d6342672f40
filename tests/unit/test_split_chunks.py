"""optimizer.split's chunks equal kohya's sdxl_train.py --fused_optimizer_groups loop on realistic counts.

The expectation is kohya's loop written again here from its description (walk the tensors of each
{"params", "lr"} entry in order; start a new chunk when the rate differs from the open chunk's; close a chunk
when it holds ceil(total / N) tensors, its rate then forgotten), not dbspec's function."""

from __future__ import annotations

import math

import pytest

from dbspec.plan.split import split_chunks

# kohya's parameter lists of an SDXL fine-tune: U-Net (1,680 tensors), CLIP ViT-L (196), OpenCLIP bigG (517)
UNET, TE1, TE2 = 1680, 196, 517


def kohya_chunks(entries: list[tuple[int, float]], n: int) -> list[list[int]]:
    """kohya's loop over (tensor count, lr) entries: chunks as lists of global tensor indices."""
    total = sum(count for count, _ in entries)
    per_group = math.ceil(total / n)
    chunks, current, current_lr, index = [], [], -1.0, 0
    for count, lr in entries:
        for _ in range(count):
            if lr != current_lr:
                if current:
                    chunks.append(current)
                    current = []
                current_lr = lr
            current.append(index)
            index += 1
            if len(current) == per_group:
                chunks.append(current)
                current, current_lr = [], -1.0
    if current:
        chunks.append(current)
    return chunks


def lrs_of(entries: list[tuple[int, float]]) -> list[float]:
    return [lr for count, lr in entries for _ in range(count)]


CASES = {
    "unet alone": [(UNET, 1e-5)],
    "unet and both encoders at one rate": [(UNET, 1e-5), (TE1, 1e-5), (TE2, 1e-5)],
    "encoders at their own rates": [(UNET, 1e-5), (TE1, 5e-6), (TE2, 2e-6)],
    "prodigy, encoders at half": [(UNET, 1.0), (TE1, 0.5), (TE2, 0.5)],
    "first encoder alone": [(UNET, 1e-5), (TE1, 3e-6)],
    "block rates": [(1, 1e-5), (150, 2e-5), (150, 2e-5), (600, 1e-5), (779, 3e-5), (TE1, 1e-5)],
}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 16, 100, 2393, 5000])
@pytest.mark.parametrize("case", list(CASES))
def test_chunks_equal_kohyas_loop(case, n):
    entries = CASES[case]
    expected = kohya_chunks(entries, n)
    got = [list(chunk) for chunk in split_chunks(lrs_of(entries), n)]
    assert got == expected
    assert [i for chunk in got for i in chunk] == list(range(sum(c for c, _ in entries)))  # all, in order


def test_a_rate_change_adds_a_chunk():
    """kohya's 4 optimizers become 5 when the text encoders' rate starts inside the third chunk: 2,393
    tensors in chunks of 599, the U-Net's last 482 alone, then the encoders' 713 as 599 + 114."""
    chunks = split_chunks(lrs_of([(UNET, 1.0), (TE1, 0.5), (TE2, 0.5)]), 4)
    assert [len(c) for c in chunks] == [599, 599, 482, 599, 114]


def test_split_one_is_one_chunk_per_rate():
    assert split_chunks([1.0, 1.0, 0.5], 1) == [range(0, 2), range(2, 3)]
    assert split_chunks([], 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        split_chunks([1.0], 0)
