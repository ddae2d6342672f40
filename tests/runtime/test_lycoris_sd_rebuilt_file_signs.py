"""lycoris.kohya --dim_from_weights from a LyCORIS GLoRA file with negative alphas on SD 1.x (issue 12, was
DBS403): lycoris-lora 4.1.3's make_module_from_state_dict builds each GLoRAModule with float(alpha), which
keeps its sign (scale alpha / rank, 0 the rank), so those layers start and train with their update flipped;
the converted plan's glora layers (the adapter's alpha, or a block's, negative) alike. kohya's steps
(create_network_from_weights, apply_to, load_weights) and dbspec's converted run build the same layers and
start them alike (tensors equal, outputs to 1e-5: test_lycoris_sd_rebuilt_file._same_start). No tiny run."""

from __future__ import annotations

import pytest
import torch

from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_lycoris_sd_rebuilt_file import _same_start, _state
from tests.runtime.test_lycoris_sd_rebuilt_file import pipe  # noqa: F401 (a fixture)

pytest.importorskip("lycoris.kohya")


@pytest.mark.parametrize("most", [False, True])
def test_glora_file_negative_alphas_build_as_lycoris(pipe, tmp_path, monkeypatch, most):  # noqa: F811
    """Every third module's alpha -3 x its own (their blocks' negative), or every other module's (the
    adapter's alpha negative, the third ones' blocks positive)."""
    from dbspec.runtime.lycoris_glora import GloraLayer

    state = _state(pipe, tmp_path, monkeypatch, 4, algo="glora", conv_dim="4", conv_alpha="2")
    names = sorted({k.split(".")[0] for k in state})
    flipped = set(names) - set(names[::3]) if most else set(names[::3])
    for name in flipped:
        state[f"{name}.alpha"] = -3 * state[f"{name}.alpha"]
    path = kit.save_state(state, tmp_path, drop=6)
    seen = set()

    def check(name, layer, lyco):
        assert (float(lyco.alpha) < 0) == (name in flipped), name
        seen.add(float(lyco.alpha) < 0)
        for part in ("a1", "a2", "b1", "b2"):
            mine = getattr(layer, f"lora_glora_{part}")["default"]
            torch.testing.assert_close(mine, getattr(lyco, part).weight, rtol=0, atol=0, msg=name)

    _same_start(pipe, tmp_path, path, "glora", GloraLayer, check)
    assert seen == {True, False}
    plan = kit.converted_plan(tmp_path, "--dim_from_weights")
    assert (plan.adapter.alpha < 0) == most, plan.adapter.alpha
