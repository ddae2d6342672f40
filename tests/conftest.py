import os
import sys

# Tests never reach a model hub: everything loads from folders the tests create.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores shared by pytest-xdist workers: one intra-op thread each avoids oversubscription, which slows
# the tiny models' CPU kernels by an order of magnitude under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Bytecode caches on, where the environment turns them off (PYTHONDONTWRITEBYTECODE): otherwise every process
# the tests start (the CLI, torchrun's workers) compiles dbspec's ~300 modules again, ~1 s each.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Property tests check values, not speed: under a loaded machine Hypothesis's timing health checks and
# deadlines fail runs whose properties hold, so the suite's default profile turns them off.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dbspec", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dbspec")


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def writes_without_fsync():
    """os.fsync (durability against a power loss, which no test can see) costs ~5 ms a file on CI's disk and
    a tiny run with checkpoints fsyncs about twenty: tests run without it. The writes stay atomic (a
    temporary file, then os.replace), which tests do check. DBSPEC_TEST_FSYNC=1 keeps the real fsync."""
    if os.environ.get("DBSPEC_TEST_FSYNC") == "1":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        yield


def pytest_collection_finish(session):
    """Everything alive once the tests are collected (torch, diffusers, transformers, peft and the test
    modules: ~550k objects) lives to the end, so it leaves the garbage collector's view (gc.freeze). Each
    full collection walked it all again: ~0.3 s a pass, triggered every few tiny runs and by lycoris-lora's
    own gc.collect() in each TLoraModule it builds; 16 s of a 57 s sample of runtime tests, 3 s after the
    freeze. Objects made by the tests themselves are collected as before."""
    import gc

    gc.freeze()
