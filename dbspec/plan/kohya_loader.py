"""kohya's validation loader order: which held-out images its first N validation batches hold.

A pure function of the held-out images (in kohya's split order), their kohya dataset, bucket and repeats and
each dataset's batch size, so the compiler (which writes `evaluation.scored_order`) and the tests (which check
it against kohya's own dataset code, tests/unit/kohya_loader.json) share it.

What kohya does (sd-scripts library/config_util.py generate_dataset_group_by_blueprint, library/train_util.py
BaseDataset.make_buckets / shuffle_buckets, train_network.py): each `[[datasets]]` with a `validation_split`
is a validation dataset holding its subsets' validation parts, in subset order, each part in split order, each
image `num_repeats` times. `make_buckets` puts the images in their buckets (the buckets in sorted resolution
order), cuts each bucket into batches of the dataset's batch size, and shuffles: `random.seed(seed + epoch)`,
with the dataset's seed still 0 and its epoch 0 (set_seed comes after make_buckets), then the list of batches,
then each bucket's images, in bucket order, from the same stream. The validation DataLoader walks the datasets
one after another (a ConcatDataset, shuffle=False, batch_size=1), one bucket batch per step, and
`max_validation_steps` stops after N of them. The validation datasets are never reshuffled in the main
process (its collator sets the epoch of the training datasets only); with `max_data_loader_n_workers` > 0
each worker's copy is reshuffled by its collator with a seed drawn from the global `random` at dataset
creation, after the item was fetched, which this order does not follow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

KOHYA_BUCKET_SEED = 0  # BaseDataset.seed (0) + current_epoch (0) when make_buckets shuffles


def loader_batches(
    datasets: Sequence[int],
    buckets: Sequence[tuple[int, int]],
    repeats: Sequence[int],
    batch_sizes: dict[int, int],
) -> list[list[int]]:
    """kohya's validation batches in loader order, each a list of indices into the held-out images.

    `datasets[i]`, `buckets[i]` and `repeats[i]`: held-out image i's kohya dataset (any key; datasets are
    walked in order of first appearance), bucket resolution (width, height) and repeats; `batch_sizes`: each
    kohya dataset's batch size."""
    out: list[list[int]] = []
    for dataset in dict.fromkeys(datasets):
        filled: dict[tuple[int, int], list[int]] = {}
        for i, (d, bucket, count) in enumerate(zip(datasets, buckets, repeats)):
            if d == dataset:
                filled.setdefault(tuple(bucket), []).extend([i] * count)
        images = [filled[reso] for reso in sorted(filled)]  # BucketManager.sort: by resolution
        size = batch_sizes[dataset]
        index = [(b, k) for b, bucket in enumerate(images) for k in range(math.ceil(len(bucket) / size))]
        rng = random.Random(KOHYA_BUCKET_SEED)
        rng.shuffle(index)
        for bucket in images:
            rng.shuffle(bucket)
        out.extend(images[b][k * size : (k + 1) * size] for b, k in index)
    return out


def first_batches(batches: list[list[int]], count: int) -> tuple[int, ...]:
    """The held-out images the first `count` batches score, in order (0: every batch)."""
    chosen = batches[:count] if count else batches
    return tuple(i for batch in chosen for i in batch)
