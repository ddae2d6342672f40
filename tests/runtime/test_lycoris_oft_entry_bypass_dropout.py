"""Why a Diag-OFT preset-file entry in bypass_mode beside the network's `dropout` stays refused, now DBS402
(issue 12; was DBS403): lycoris.kohya's create_single_module hands every module the network's dropout, and
lycoris-lora 4.1.3's DiagOFTModule._bypass_forward multiplies its (blocks, size, size) rotations by a dropout
mask shaped like the layer's output (..., blocks, size) in training mode, so kohya's first training forward
raises (convert/kohya/lycoris_maps.py _oft_bypass_dropout). On the layers the refusals audit's cases reach
(tiny-flux's and FLUX.1's fused image q/k/v, a Linear over tokens) and a batch of vectors."""

from __future__ import annotations

import pytest
import torch

diag_oft = pytest.importorskip("lycoris.modules.diag_oft")


@pytest.mark.parametrize(
    ("out_features", "in_features", "dim", "shape"),
    [
        (48, 16, 4, (1, 5, 16)),
        (9216, 3072, 4, (1, 16, 3072)),
        (9216, 3072, 96, (1, 16, 3072)),
        (64, 8, 4, (2, 8)),
    ],
)
def test_diag_oft_bypass_dropout_raises_in_lycoris(out_features, in_features, dim, shape):
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features)
    module = diag_oft.DiagOFTModule("x", layer, 1.0, dim, 1.0, dropout=0.1, bypass_mode=True)
    module.apply_to()
    x = torch.randn(*shape)
    with torch.no_grad():
        module.eval()
        layer(x)  # outside training its bypass forward runs
        module.train()
        with pytest.raises(RuntimeError):
            layer(x)
