"""The blocks' rank bound (issue 12): a block of any kind but LoKr trains a pair (or more) at its rank, up to
100000 (DBS105, tests/golden/check/range_block_rank); a LoKr block (its `kind`, or the adapter's) goes past
it, as a LyCORIS preset file's full-matrix `dim = 10000000000000`, whose factors stop at the layer's width and
whose rank sets only a full layer's rs_lora scale (spec/check.py block_rank_bound)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbspec.compiler.target import parse_target
from dbspec.frontend import check_spec, plan_spec

ROOT = Path(__file__).resolve().parents[2]
HUGE = 10**13
SPEC = f"""spec_version = 2
[model]
base = "builtin:tiny-sd1"
[[datasets]]
name = "toy"
path = {json.dumps(str(ROOT / "specs" / "data" / "toy"))}
prompt = "a photo of ohwx toy"
resolution = 64
[buckets]
step = 16
[optimizer]
lr = 1e-4
[schedule]
steps = 2
[output]
dir = "out"
[adapter]
"""


def _diagnostics(tmp_path: Path, adapter: str) -> list[tuple[str, str, str]]:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC + adapter, encoding="utf-8")
    return [(d.code, d.path, d.message) for d in check_spec(path).diagnostics if d.severity == "error"]


@pytest.mark.parametrize(
    "adapter",
    [
        f'kind = "lokr"\nrank_stabilized = true\nconv_rank = 4\n'
        f'[[adapter.blocks]]\npattern = "ff"\nrank = {HUGE}\nalpha = 1.0\n'
        f'conv_rank = {HUGE}\n[[adapter.text_encoder_blocks]]\npattern = "fc1"\nrank = {HUGE}\nalpha = 1.0\n',
        f'kind = "lora"\n[[adapter.blocks]]\npattern = "ff"\nkind = "lokr"\nrank = {HUGE}\nalpha = 1.0\n',
        f'kind = "full"\n[[adapter.blocks]]\npattern = "ff"\nkind = "lokr"\nrank = {HUGE}\n',
    ],
    ids=["lokr-adapter", "lokr-block-on-lora", "lokr-block-on-full"],
)
def test_lokr_blocks_go_past_the_pairs_bound(tmp_path, adapter):
    assert _diagnostics(tmp_path, adapter) == []
    planned = plan_spec(tmp_path / "spec.toml", parse_target("cpu"))
    assert planned.plan is not None, [f"{d.code} {d.path}: {d.message}" for d in planned.diagnostics]
    assert max(b.rank for b in planned.plan.adapter.blocks) == HUGE


@pytest.mark.parametrize(
    ("adapter", "path"),
    [
        ('kind = "lora"\n[[adapter.blocks]]\npattern = "ff"\nrank = 200000\nalpha = 1.0\n', "rank"),
        (
            'kind = "lokr"\n[[adapter.blocks]]\npattern = "ff"\nkind = "loha"\nrank = 4\nalpha = 1.0\n'
            "conv_rank = 200000\n",
            "conv_rank",
        ),
        (
            'kind = "lokr"\n[[adapter.text_encoder_blocks]]\npattern = "fc1"\nkind = "lora"\nrank = 200000\n'
            "alpha = 1.0\n",
            "rank",
        ),
    ],
    ids=["lora-adapter", "loha-block-on-lokr", "lora-text-block-on-lokr"],
)
def test_other_kinds_keep_the_pairs_bound(tmp_path, adapter, path):
    ((code, where, message),) = _diagnostics(tmp_path, adapter)
    assert code == "DBS105" and where.endswith(f"[0].{path}") and "<= 100000; found 200000" in message
