import os

# Tests never reach a model hub: everything loads from folders the tests create.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores shared by pytest-xdist workers: one intra-op thread each avoids oversubscription, which slows
# the tiny models' CPU kernels by an order of magnitude under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests check values, not speed: under a loaded machine Hypothesis's timing health checks and
# deadlines fail runs whose properties hold, so the suite's default profile turns them off.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dbspec", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dbspec")
