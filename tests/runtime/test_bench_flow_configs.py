"""The public configs tests/bench/bench_flow_activations.py builds its transformers from give the published
parameter counts (the registry's, dbspec/families.py), counted on the meta device."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from dbspec.families import family_spec
from tests.bench import bench_flow_activations as bench


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("flux", family_spec("flux").public_params["unet"]),
        ("sd35l", family_spec("sd3").public_params["unet"]),
        ("sd35m", family_spec("sd3").hub_params["stabilityai/stable-diffusion-3.5-medium"]["unet"]),
    ],
)
def test_the_bench_configs_are_the_public_models(model: str, expected: int):
    family, config, _, _ = bench.MODELS[model]
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    with torch.device("meta"):
        net = cls(**config)
    assert sum(p.numel() for p in net.parameters()) == expected
    variants = {params for params, _, _ in family_spec(family).token_activation.variants}
    assert expected in variants  # the estimate's constants are keyed by these counts
