"""How many times the denoiser compiles under automatic dynamic shapes, as `dbspec plan` says it."""

from __future__ import annotations

from dbspec.plan.compiled import expected_compiles


def test_one_shape_compiles_once():
    assert expected_compiles({(2, 64, 64)}) == 1
    assert expected_compiles(set()) == 1


def test_each_kind_of_change_recompiles_once():
    assert expected_compiles({(2, 64, 64), (2, 48, 80), (2, 80, 48)}) == 2  # sizes become symbolic once
    assert expected_compiles({(4, 64, 64), (2, 64, 64), (3, 64, 64)}) == 2  # batch becomes symbolic once
    assert expected_compiles({(2, 64, 64), (1, 64, 64)}) == 2  # a batch of one is specialised: its own
    assert expected_compiles({(2, 64, 64), (1, 48, 80), (3, 80, 48)}) == 4
