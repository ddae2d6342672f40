"""The fault harness's rank-targeted actions (runtime/faults.py) and the per-process shares (data.own_share)
that the multi-process tests rely on."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime import faults
from dbspec.runtime.data import own_share


@pytest.fixture(autouse=True)
def fresh_arrivals(monkeypatch):
    monkeypatch.setattr(faults, "_arrivals", {})


def test_raise_fires_at_the_nth_arrival_of_the_named_point_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "micro_batch@2:RAISE")
    faults.reached("micro_batch")  # first arrival: nothing
    faults.reached("loss")  # another point: nothing
    with pytest.raises(faults.InjectedFault, match="micro_batch"):
        faults.reached("micro_batch")
    faults.reached("micro_batch")  # third: nothing


def test_a_rank_filter_keeps_other_processes_untouched(monkeypatch):
    monkeypatch.setenv(faults.ENV, "micro_batch:RAISE")
    monkeypatch.setenv(faults.RANK_ENV, "1")
    monkeypatch.setenv("RANK", "0")
    faults.reached("micro_batch")  # process 0: untouched
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(faults.InjectedFault):
        faults.reached("micro_batch")


def test_nan_poisons_the_loss_tensor_keeping_its_graph(monkeypatch):
    weight = torch.ones(2, requires_grad=True)
    loss = (weight * 3).sum()
    assert faults.poisoned("loss", loss) is loss  # no harness: the same tensor
    monkeypatch.setenv(faults.ENV, "loss:NAN")
    poisoned = faults.poisoned("loss", loss)
    assert torch.isnan(poisoned) and poisoned.requires_grad


def test_shares_cover_every_item_once_whatever_the_process_count():
    items = list(range(11))
    for processes in (1, 2, 3, 4, 16):
        shares = [own_share(items, (rank, processes)) for rank in range(processes)]
        assert sorted(i for share in shares for i in share) == items
    assert own_share(items, (1, 2)) == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="rank"):
        own_share(items, (2, 2))
