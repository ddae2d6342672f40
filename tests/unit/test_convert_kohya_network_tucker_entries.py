"""The network's `use_tucker` on a DyLoRA / GLoRA network beside its preset file's LoCon / LoHa / LoKr entries
(issue 12; was DBS403): DyLoraModule and GLoRAModule never read it, lycoris-lora 4.1.3's create_network hands
it to every module and the entries' modules build their Tucker form on k x k convolutions, so it is those
entries' blocks' `tucker = "on"` (lycoris_maps.network_tucker, as on a full / IA^3 network), an entry's own
use_tucker = false keeping its block off, Linear-only entries untouched; the key is mapped, not DBS405. On
SD3 the patch convolution's entry alike (a full / IA^3 network's too); on Flux (no k x k convolution) it is
unread (a full / IA^3 network's was DBS403 there).
tests/runtime/test_lycoris_network_tucker_entries.py compares the layers with lycoris-lora's modules."""

from __future__ import annotations

import re

import pytest
from convert_kit import codes, expressible, fate, plan_of
from test_convert_kohya_whole_main_mixed import MIXED, _convert


@pytest.mark.parametrize("key", ["use_tucker", "use_cp"])  # LyCORIS's older name too (lycoris_tucker)
@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_the_networks_use_tucker_reaches_the_entries_blocks(tmp_path, algo, key):
    preset = MIXED.replace('algo = "lora"\n', 'algo = "lora"\nuse_tucker = false\n', 1)
    outcome = expressible(_convert(tmp_path, algo, f'"{key}=True"', preset))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo
    tucker = {(b.kind, b.rank, b.tucker) for b in a.blocks if b.kind != "adapter"}
    # the ResNets' LoCon (3x3 convolutions: conv_rank 4) on; conv_in's own off (the adapter's: none); the
    # MLPs' LoHa (Linears) untouched
    assert tucker == {("lora", 4, "on"), ("lora", 8, "adapter"), ("loha", 2, "adapter")}
    assert [b.kind for b in a.text_encoder_blocks] == ["loha"]  # CLIP's: no convolution, no `tucker`
    assert fate(outcome, f"network_args {key}") == "mapped"
    assert "DBS405" not in {d.code for d in outcome.diagnostics if key in d.message}


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_the_networks_use_tucker_beside_linear_entries_alone_is_unread(tmp_path, algo):
    """No entry on a k x k convolution: no module reads it (DBS405), no block takes it."""
    preset = MIXED.replace('"ResnetBlock2D", ', "").replace('[name_algo_map.conv_in]\nalgo = "lora"\n', "")
    outcome = expressible(_convert(tmp_path, algo, '"use_tucker=True"', preset))
    a = plan_of(outcome, tmp_path).adapter
    assert {b.kind for b in a.blocks if b.kind != "adapter"} == {"loha"}
    assert all(b.tucker == "adapter" for b in a.blocks)
    assert "DBS405" in codes(outcome) and fate(outcome, "network_args use_tucker") != "mapped"


@pytest.mark.parametrize(
    ("algo", "entry"),
    [(a, e) for a in ("dylora", "glora") for e in ("locon", "loha", "lokr", "full")]
    # a full / IA^3 network's too (on Flux it was DBS403): FullModule / IA3Module never read it
    + [(a, e) for a in ("full", "ia3") for e in ("locon", "lokr")],
)
def test_sd3_network_tucker_reaches_the_patch_entry(tmp_path, algo, entry):
    """On SD3 the one k x k convolution LyCORIS adapts is the patch convolution: a LoCon / LoHa / LoKr
    PatchEmbed entry's block takes the network's use_tucker (mapped; lycoris_flux._mixed_patch_tucker), a
    full entry's FullModule never reads it (DBS405); on Flux (no k x k convolution) it is unread (DBS405)."""
    from test_convert_lycoris_flow_preset_file import MIXED as FLUX_MIXED
    from test_convert_lycoris_flow_preset_file import _flux, _sd3

    preset = "unet_target_module = ['PatchEmbed', 'SingleDiTBlock']\n\n"
    preset += f"[module_algo_map.PatchEmbed]\nalgo = '{entry}'\ndim = 4\nalpha = 1\n"
    outcome = expressible(_sd3(tmp_path, preset, f'"algo={algo}" "use_tucker=True"'))
    a = plan_of(outcome, tmp_path).adapter
    (patch,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
    kind = {"locon": "lora"}.get(entry, entry)
    assert (a.kind, patch.kind, patch.tucker) == (algo, kind, "adapter" if entry == "full" else "on")
    assert all(b.tucker == "adapter" for b in a.blocks if b is not patch)
    told = fate(outcome, "network_args use_tucker")
    assert told != "mapped" and "DBS405" in codes(outcome) if entry == "full" else told == "mapped"
    if entry == "locon":
        flux = expressible(_flux(tmp_path / "flux", FLUX_MIXED, f'"algo={algo}" "use_tucker=True"'))
        assert fate(flux, "network_args use_tucker") in ("inert", "ignored")
