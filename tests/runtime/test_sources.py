"""A run reads every source file once before step 1 and reports every changed or undecodable one at once."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from dbspec.runtime.execute import RunError, execute
from tests.runtime.runspec import compile_spec, write_spec


def break_pixels(path: Path) -> None:
    """Damage a PNG's compressed pixel data but keep its header, chunk layout and IEND intact: `dbspec plan`
    (headers only) accepts it, a decoder does not."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    for offset in range(2, min(length, 64)):
        data[start + offset] ^= 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(data[start : start + length]))


def test_pixel_corrupt_images_are_all_reported_before_training(tmp_path):
    spec = write_spec(tmp_path, steps=2)
    images = [Path(img.path) for img in compile_spec(spec).datasets[0].images]
    for victim in images[:2]:
        break_pixels(victim)
    plan = compile_spec(spec)  # the damage passes the plan's header checks
    assert {Path(img.path) for img in plan.datasets[0].images} >= set(images[:2])
    with pytest.raises(RunError) as info:
        execute(plan)
    message = info.value.message
    assert f"{images[0]}`: does not decode" in message and f"{images[1]}` does not decode" in message, message
    assert "fix or replace them" in message
    assert not (tmp_path / "output" / "checkpoints").exists()
