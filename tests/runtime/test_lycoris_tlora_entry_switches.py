"""An algo=tlora network's `use_scalar`, `factor`, `decompose_both`, `full_matrix` and
`unbalanced_factorization` beside its preset file's LoCon / LoHa / LoKr entries, and those entries' own
(issue 12; each was DBS403): TLoraModule reads none of them, LoConModule / LohaModule / LokrModule
use_scalar, LokrModule the rest, so they are those entries' blocks' `scalar`, `factor` and switches (spec
TloraBlock; the T-LoRA adapter has none). The plan's U-Net built as a run builds it and lycoris-lora 4.1.3's
network from the same network_args and file on tiny SD 1.x: the modules training a scalar and every LoKr
factor's shape alike, our export loading into that network (a factor shape LyCORIS lacks fails the load), eval
and training-mode outputs and the generator state after each forward equal (module_dropout). No gradient
comparison: the export folds a trained scalar into a factor, whose gradient then differs by it."""

from __future__ import annotations

import pytest
from torch import nn

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped
from tests.runtime.test_lycoris_tlora_mixed_opts import _built
from tests.runtime.test_lycoris_whole_main_own_opts import _lokr_shapes, _scaled, _their_lokr_shapes

pytest.importorskip("lycoris.kohya")

# id: (the feed-forwards' entry algo, its own options, network_args, whether its layers train a scalar)
CASES = {
    "lokr_network_switches": (
        "lokr",
        "",
        {"use_scalar": "True", "factor": "4", "decompose_both": "True"},
        True,
    ),
    "lokr_network_full_matrix": (
        "lokr",
        "",
        {"full_matrix": "True", "unbalanced_factorization": "True"},
        False,
    ),
    "lokr_own": ("lokr", "factor = 4\nunbalanced_factorization = true\nuse_scalar = true", {}, True),
    "loha_network_scalar": ("loha", "", {"use_scalar": "True"}, True),
    "locon_own_scalar_off": ("locon", "use_scalar = false", {"use_scalar": "True"}, False),
}
CLASSES = {"lokr": "LokrModule", "loha": "LohaModule", "locon": "LoConModule"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tlora_network_entries_switches_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, extra, args, scalar = CASES[case]
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, algo, extra, args)
    assert plan.adapter.kind == "tlora"
    assert {type(m).__name__ for m in made.unet_loras} == {"TLoraModule", CLASSES[algo]}
    scaled = {m.lora_name for m in made.unet_loras if isinstance(getattr(m, "scalar", None), nn.Parameter)}
    assert bool(scaled) == scalar and _scaled(ours, "lora_unet_") == scaled
    shapes = _their_lokr_shapes(made)
    assert bool(shapes) == (algo == "lokr") and _lokr_shapes(ours, "lora_unet_") == shapes
    calm_then_dropped(ours, theirs, made, pipe.unet)
