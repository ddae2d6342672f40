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
