"""tools/lycoris_sweep.py runs (a few of its combinations: the whole sweep takes minutes per shape) and
reports a refusal it is given."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def sweep():
    path = Path(__file__).parents[2] / "tools" / "lycoris_sweep.py"
    spec = importlib.util.spec_from_file_location("lycoris_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", ["sd", "flux", "te", "resnet", "sd3"])
def test_every_shape_converts_a_case(sweep, shape, monkeypatch):
    monkeypatch.setattr(sweep, "ALGOS", ["locon", "loha"])
    monkeypatch.setattr(sweep, "ARGS", ['"use_scalar=True"'])
    monkeypatch.setattr(sweep, "OPTIONS", ["dim = 8"])
    assert sweep.main(shape) == {}


def test_a_refusal_is_grouped(sweep, monkeypatch):
    """The audit's one expressible-in-principle refusal left: a LoCon entry at dim 200000 (past a block's
    rank bound)."""
    monkeypatch.setattr(sweep, "ALGOS", ["locon"])
    monkeypatch.setattr(sweep, "ARGS", [])
    monkeypatch.setattr(sweep, "OPTIONS", ["dim = 200000"])
    assert list(sweep.main("sd", "options").values()) == [["locon network, locon entry, - / dim = 200000"]]
