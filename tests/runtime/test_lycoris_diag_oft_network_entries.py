"""A Diag-OFT network's preset-file entries of other algorithms (issue 12; was DBS403), as a BOFT network's
(tests/runtime/test_lycoris_boft_network_entries.py): lycoris-lora 4.1.3's network `algo` only names the
algorithm of the layers no map entry sets, every module getting the same root kwargs, so algo=diag-oft with
LoCon / LoHa entries builds what algo=locon builds with the Diag-OFT layers as entries; the converter writes
that network (oft_entries.oft_network_host): a lora adapter, its LoHa entries' blocks, the Diag-OFT layers
blocks of kind "diag-oft" at the network's dim (their block size) and constraint (their alpha). Checked
against lycoris-lora's create_network(algo="diag-oft") from the same file on tiny SD 1.x with module_dropout:
every module's class, our export loading strictly into it, training outputs and the generator state after
each of three training forwards, and every trained tensor's gradient; also with rank_dropout (which
DiagOFTModule draws in its default forward, LoConModule and LohaModule in theirs), and in bypass_mode with a
binding constraint given by its deprecated name `constrain` (no tiny run)."""

from __future__ import annotations

import pytest

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_boft_network_entries import oft_network_entries_alike

pytest.importorskip("lycoris.kohya")


@pytest.mark.parametrize(
    "extra",
    [{}, {"rank_dropout": "0.2"}, {"bypass_mode": "True", "constrain": "0.0001"}],
    ids=["default", "rank_dropout", "bypass_constrain"],
)
def test_diag_oft_network_beside_locon_loha_entries_is_lycoris(pipe, tmp_path, monkeypatch, extra):  # noqa: F811
    """The network's module_dropout; with its rank_dropout; and with its bypass_mode (the Diag-OFT layers'
    rotation of the output, the LoCon / LoHa layers' bypass forward their default one) and a binding
    constraint (the blocks' alpha) under LyCORIS's deprecated name."""
    constraint = float(extra.get("constrain", 0.0))
    made = oft_network_entries_alike(pipe, tmp_path, monkeypatch, "diag-oft", extra, constraint)
    oft = [m for m in made.unet_loras if type(m).__name__ == "DiagOFTModule"]
    assert oft and all(m.constraint == pytest.approx(constraint * m.dim) for m in oft)  # `constrain` was read
