"""Reference runs made once per test session, however many pytest-xdist workers ask for them, and set-ups
several test files build alike."""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """A folder that `make(folder)` fills once per test session, however many test workers ask for it.

    A module or session fixture runs once per pytest-xdist worker that needs it, so a reference run (a
    launch of two processes: 10-20 s) ran on both workers whenever its tests were split between them. Here
    the first worker to ask makes it, under a file lock in the session's temporary folder (the parent of each
    worker's own, `.../pytest-N/popen-gwK`); the others wait for it and read the same files. Only readers
    share it: no test writes into the folder. A `make` that fails leaves no mark, so the next asker retries
    (and fails with its own message)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers, and by no other session
    folder, done = root / f"once-{name}", root / f"once-{name}.done"
    with (root / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt's leftovers
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


_MADE: dict[str, tuple[Path, object]] = {}


def copy_of_run(
    tmp_path: Path, folder: Path, key: str, make: Callable[[Path], object]
) -> tuple[Path, object]:
    """`make(into)` (a run into the folder `into`, returning what the caller keeps of it) done once per test
    process for `key`, its folder copied to `folder` for each caller, with a deep copy of what it returned.

    For the first runs several tests start from (a run whose export starts a second run): the same spec gives
    the same run, bit for bit, so each test got its own identical copy by paying for a whole run. The copy is
    the test's own: it may write into it (the made folder, under the worker's temporary folder, is read by
    copying only). Kept objects (a run's trained components) are deep-copied alike. Per process, not per
    session: the kept objects cannot cross processes."""
    if key not in _MADE:
        # in the worker's base temporary folder, beside the tests' own
        made = tmp_path.parent / f"once-{key}"
        shutil.rmtree(made, ignore_errors=True)  # a failed attempt's leftovers
        made.mkdir()
        _MADE[key] = (made, make(made))
    made, kept = _MADE[key]
    shutil.copytree(made, folder)
    return folder, copy.deepcopy(kept)


def moved_components(plan, text_encoder: bool = False, seed: int = 4):
    """The plan's components as its run builds them (runtime/prepare.py configure_models, on the CPU), every
    trainable tensor of the denoiser (`text_encoder`: and of the first text encoder) drawn at random (x 0.05,
    from `seed`), so that no update is 0: for checks of the built layers against a reference without a run."""
    import torch

    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (comps.unet, *comps.text_encoders[: int(text_encoder)]):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comps


def resumes_bit_exact(spec: Path, base: list[str], whole) -> list[str]:
    """The spec's run (`base` overrides) stopped after one step and resumed: its losses are those of the
    uninterrupted `whole` run and every file it saves is bit-identical; the files' paths."""
    import torch
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec

    split = compile_spec(spec, [*base, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    for name in files:
        x, y = load_file(str(Path(whole.final) / name)), load_file(str(Path(resumed.final) / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    return files


def reloads_as_trained(plan, whole):
    """`dbspec sample`'s reload of the run's adapter folders (runtime/sample.py load_pipeline): its U-Net's
    output on fixed inputs is the trained one's (`whole`, run with keep_models); the reloaded U-Net."""
    import torch

    from dbspec.runtime.sample import SampleRequest, load_pipeline

    trained = whole.components.unet
    again = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation)).unet
    again = again.to(trained.device, trained.dtype)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, trained.config.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 7, trained.config.cross_attention_dim, generator=g)
    trained.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(sample, 500, context).sample, trained(sample, 500, context).sample)
    return again


# LycorisNetworkKohya's class attributes that lycoris-lora's create_network (apply_preset) sets
NETWORK_ATTRS = (
    "ENABLE_CONV",
    "UNET_TARGET_REPLACE_MODULE",
    "UNET_TARGET_REPLACE_NAME",
    "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    "TEXT_ENCODER_TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)


def kept_lycoris_presets(monkeypatch):
    """lycoris-lora's LycorisNetworkKohya with the class attributes a preset sets restored after the test
    (through `monkeypatch`): create_network's apply_preset changes the class itself, so a later test would
    build another network."""
    from lycoris import kohya

    network = kohya.LycorisNetworkKohya
    for attr in NETWORK_ATTRS:
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    return network
