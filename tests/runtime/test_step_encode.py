"""Without a latent cache, a micro-batch goes through the VAE in one call, with each image's own posterior."""

from __future__ import annotations

import torch

from dbspec.runtime.data import Sample
from dbspec.runtime.step import Parts, posteriors
from dbspec.runtime.tiny import build_pipeline

from tests.runtime.runspec import make_plan


def _parts(plan, vae) -> Parts:
    return Parts(
        plan=plan,
        unet=None,
        vae=vae,
        text_encoders=[],
        tokenizers=[],
        noise_scheduler=None,
        latent_cache=None,
        text_cache=None,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )


def test_uncached_batch_is_encoded_in_one_call_and_equals_one_by_one(tmp_path):
    plan = make_plan(tmp_path, dataset_extra="flip = true")
    images = plan.datasets[0].images
    by_bucket: dict = {}
    for i, img in enumerate(images):
        by_bucket.setdefault(img.bucket, []).append((i, img))
    rows = max(by_bucket.values(), key=len)[:2]
    assert len(rows) == 2, "the toy dataset has two images in one bucket"
    batch = [
        Sample(dataset=0, image=i, role="instance", flip=flip, aug_seed=7, img=img)
        for (i, img), flip in zip(rows, (False, True))
    ]
    vae = build_pipeline("builtin:tiny-sd1").vae
    calls = []
    vae.encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))

    together = posteriors(_parts(plan, vae), batch)
    alone = [posteriors(_parts(plan, vae), [s])[0] for s in batch]

    assert calls == [2, 1, 1]
    for (a, _), (b, _) in zip(together, alone):
        torch.testing.assert_close(a["mean"], b["mean"], rtol=0, atol=1e-5)
        torch.testing.assert_close(a["std"], b["std"], rtol=0, atol=1e-5)
    assert not torch.equal(together[0][0]["mean"], together[1][0]["mean"])  # flipped: another posterior
