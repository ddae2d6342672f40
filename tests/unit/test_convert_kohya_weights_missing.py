"""A --network_weights file the conversion reads (the ranks of --dim_from_weights, DyLoRA's alphas) that is
not on this machine is reported unreadable (DBS401, "convert where the file is") by every reader, as
networks.oft's is (issue 12; was DBS403 "cannot be used: No such file"); a file that is here but of a
layout dbspec cannot use stays DBS403."""

from __future__ import annotations

import numpy as np
import pytest
from convert_kit import (
    FLUX_LYCORIS,
    KOHYA_LORA,
    codes,
    component_file,
    errors,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
)
from safetensors.numpy import save_file

DYLORA = KOHYA_LORA.replace("networks.lora", "networks.dylora")
LYCORIS = KOHYA_LORA.replace("networks.lora", "lycoris.kohya")


def _unreadable(outcome) -> str:
    """The DBS401 message, after checking that nothing was refused and the file's key is unreadable."""
    assert not outcome.written
    assert "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "unreadable"
    return messages(outcome, "DBS401")


@pytest.mark.parametrize(
    ("base", "args"),
    [
        (KOHYA_LORA, ""),  # networks.lora: network.py
        (LYCORIS, '--network_args "algo=locon"'),  # LyCORIS's create_network_from_weights on SD 1.x
        (DYLORA, '--network_args "unit=4"'),  # networks.dylora's: dylora.py
    ],
)
def test_sd_dim_from_weights_file_not_here_is_unreadable(tmp_path, base, args):
    outcome = kohya_lora(tmp_path, f"--network_weights prev/gone.safetensors --dim_from_weights {args}", base)
    said = _unreadable(outcome)
    assert "gone.safetensors" in said and "not on this machine" in said and "ranks" in said


def test_windows_path_is_unreadable_too(tmp_path):
    outcome = kohya_lora(tmp_path, r"--network_weights 'C:\loras\prev.safetensors' --dim_from_weights")
    assert "a Windows path" in _unreadable(outcome)


@pytest.mark.parametrize("module", ["lycoris.kohya", "networks.lora_flux"])
def test_flux_dim_from_weights_file_not_here_is_unreadable(tmp_path, module):
    """model.py's Flux / SD3 reader (LyCORIS or networks.lora_flux on Flux) says the same."""
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = FLUX_LYCORIS.replace("lycoris.kohya", module)
    outcome = kohya(tmp_path, command=f"{command}--network_weights gone.safetensors --dim_from_weights")
    said = _unreadable(outcome)
    assert "not on this machine" in said and "ranks" in said


def test_a_file_of_another_layout_stays_refused(tmp_path):
    """The file is here and read: what it holds decides, not DBS401. It has no `lora_down` tensor, so
    networks/lora.py create_network_from_weights builds no module and kohya's optimizer raises ValueError
    (an empty parameter list): DBS402 (was DBS403)."""
    (tmp_path / "prev").mkdir()
    save_file(
        {"model.diffusion_model.foo.weight": np.zeros((2, 2), np.float16)},
        str(tmp_path / "prev/x.safetensors"),
    )
    outcome = kohya_lora(tmp_path, "--network_weights prev/x.safetensors --dim_from_weights")
    assert "DBS401" not in codes(outcome) and fate(outcome, "network_weights") != "unreadable"
    assert "DBS402" in codes(outcome) and fate(outcome, "dim_from_weights") == "invalid"
    said = errors(outcome)[0]
    assert "`x.safetensors`" in said and "no `lora_down` tensor" in said and "empty parameter list" in said


def test_lycoris_dylora_alphas_file_not_here_is_unreadable(tmp_path):
    """LyCORIS's DyLoRA loads only the file's alphas, which the conversion reads (dylora.py)."""
    outcome = kohya_lora(
        tmp_path, '--network_weights prev/gone.safetensors --network_args "algo=dylora"', LYCORIS
    )
    assert "DyLoRA alphas" in _unreadable(outcome)
