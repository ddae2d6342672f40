import os

# Tests never reach a model hub: everything loads from folders the tests create.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores shared by pytest-xdist workers: one intra-op thread each avoids oversubscription, which slows
# the tiny models' CPU kernels by an order of magnitude under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
