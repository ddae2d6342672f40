"""lycoris.kohya algo=glora / diag-oft / boft / dylora with preset=attn-only on sd3_train_network.py (issue
12): LyCORIS's attn-only matches no module of kohya's MMDiT, so the run trains CLIP-L's and CLIP-G's attention
Linears alone (what the converter writes: train.denoiser = false, text_encoder_targets q/k/v/out_proj). Such a
run trains on tiny-sd3 (GLoRA's resumes bit-exact), and its kohya_lora export, LyCORIS's modules under kohya's
SD3 names (lora_te1_* CLIP-L, lora_te2_* CLIP-G), is what lycoris-lora 4.1.3's create_network_from_weights
rebuilds on the untrained encoders [CLIP-L, CLIP-G, T5-XXL] (the list sd3_train_network.py gives it): their
hidden states are the trained encoders'. The same kinds on FLUX.1's CLIP-L alone (a hand-written spec: Flux's
attn-only reaches the double blocks too) export and load alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.boft import ButterflyOFTModule  # noqa: E402
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402

BASE = "builtin:tiny-sd3"
ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
# the converter's [adapter] for `--network_args algo=<kind> preset=attn-only` at a tiny network_dim
KINDS = {
    "glora": ('kind = "glora"\nrank = 2\nalpha = 1.5\n', GLoRAModule),
    "diag-oft": ('kind = "diag-oft"\nblock_size = 4\n', DiagOFTModule),
    "boft": ('kind = "boft"\nblock_size = 4\n', ButterflyOFTModule),
    # LyCORIS's DyLoRA file is lora_down / lora_up at every rank: create_network_from_weights builds LoCon
    "dylora": ('kind = "dylora"\nrank = 4\nalpha = 2\nunit = 2\ndylora_form = "lycoris"\n', LoConModule),
}


def _extra(adapter: str) -> str:
    targets = ", ".join(f'"{t}"' for t in ATTN)
    return (
        f"[adapter]\n{adapter}text_encoder_targets = [{targets}]\n\n"
        "[train]\ndenoiser = false\ntext_encoder = true\n\n"
        '[checkpoints]\nevery = 1\nexports = ["kohya_lora"]\n'
    )


def _hidden(encoders, ids) -> list[torch.Tensor]:
    with torch.no_grad():
        return [te.float().eval()(ids).last_hidden_state for te in encoders[:2]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_attn_only_export_is_what_lycoris_loads_on_the_clip_encoders(tmp_path, kind):
    from dbspec.runtime.tiny import build_pipeline

    adapter, cls = KINDS[kind]
    plan = make_plan(tmp_path / "whole", base=BASE, steps=2, extra=_extra(adapter))
    assert plan.adapter.kind == kind and not plan.train_denoiser and plan.train_text_encoder
    assert plan.checkpoints.exports == ("kohya_lora",) and not plan.adapter.fused
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    if kind == "glora":  # resume bit-exact: the same losses and the same export
        parts = make_plan(tmp_path / "parts", base=BASE, steps=2, extra=_extra(adapter))
        first = execute(parts, stop_after=1)
        assert first.status == "interrupted" and first.steps == 1
        second = execute(parts, resume=True)
        assert second.status == "finished" and first.losses + second.losses == whole.losses
        (again,) = Path(second.final).glob("*.kohya.safetensors")
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    if kind == "glora":
        resumed = load_file(str(again))
        assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    names = {k.split(".")[0] for k in tensors}
    assert all(n.startswith(("lora_te1_", "lora_te2_")) for n in names)  # no MMDiT, no T5 module
    layers = 3  # tiny CLIP-L's and CLIP-G's encoder layers
    assert len(names) == 2 * layers * len(ATTN)
    assert "lora_te2_text_model_encoder_layers_2_self_attn_out_proj" in names

    pipe = build_pipeline(BASE)
    base = [pipe.text_encoder.float().eval(), pipe.text_encoder_2.float().eval(), pipe.text_encoder_3.float()]
    ids = torch.arange(1, 10).unsqueeze(0)
    plain = _hidden(base, ids)
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, base, nn.Module(), for_inference=True
    )
    assert len(network.text_encoder_loras) == len(names) and not network.unet_loras
    assert all(type(m) is cls for m in network.text_encoder_loras)
    network.apply_to(base, nn.Module(), apply_text_encoder=True, apply_unet=False)
    network.load_weights(str(export))
    theirs = _hidden(base, ids)
    ours = _hidden(whole.components.text_encoders, ids)
    for p, o, t in zip(plain, ours, theirs, strict=True):
        assert (o - p).abs().max() > 1e-4  # the encoder trained
        torch.testing.assert_close(t, o, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_flux_clip_l_alone_export_is_what_lycoris_loads(tmp_path, kind):
    from dbspec.runtime.tiny import build_pipeline

    adapter, cls = KINDS[kind]
    plan = make_plan(tmp_path, base="builtin:tiny-flux", steps=2, extra=_extra(adapter))
    assert plan.checkpoints.exports == ("kohya_lora",) and not plan.train_denoiser
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    (export,) = Path(result.final).glob("*.kohya.safetensors")
    names = {k.split(".")[0] for k in load_file(str(export))}
    assert len(names) == 3 * len(ATTN) and all(n.startswith("lora_te1_text_model_") for n in names)
    pipe = build_pipeline("builtin:tiny-flux")
    clip = pipe.text_encoder.float().eval()
    ids = torch.arange(1, 10).unsqueeze(0)
    (plain,) = _hidden([clip], ids)
    # kohya's transformers (4.54.1) holds CLIPTextModel's layers under `text_model`, as the export names them
    tree = clip if hasattr(clip, "text_model") else nn.Module()
    tree.text_model = tree.text_model if tree is clip else clip
    encoders = [tree, pipe.text_encoder_2.float()]
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(export), None, encoders, nn.Module(), for_inference=True
    )
    assert len(network.text_encoder_loras) == len(names)
    assert all(type(m) is cls for m in network.text_encoder_loras)
    network.apply_to(encoders, nn.Module(), apply_text_encoder=True, apply_unet=False)
    ((theirs,), (ours,)) = _hidden([clip], ids), _hidden(result.components.text_encoders[:1], ids)
    assert (ours - plain).abs().max() > 1e-4
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
