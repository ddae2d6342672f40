"""lycoris.kohya --dim_from_weights on Flux with a file holding NormModules on CLIP-L's LayerNorms beside
Diag-OFT or LoCon modules on the denoiser (issue 12; dbspec/convert/kohya/lycoris_flow_norms.py):
lycoris-lora 4.1.3 writes the file (its modules on tiny-flux's layers as kohya's Flux holds them, NormModule
offsets random) and rebuilds it with create_network_from_weights on kohya's names and encoder list
[CLIP-L, T5-XXL]; the converted run starts CLIP-L where LyCORIS's NormModules put it (same outputs to 1e-4)
and the denoiser's layers where its modules are (1e-5), trains both and resumes bit-exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flow_factor_file import RUN, _converted, _layers, _tree
from tests.runtime.test_lycoris_flux import BASE, _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.norms import NormModule  # noqa: E402

NORMS = ("text_model.encoder.layers.0.layer_norm1", "text_model.encoder.layers.1.layer_norm2")
KINDS = {"diag-oft": (DiagOFTModule, (4, 0.0)), "lora": (LoConModule, (2, 1.0))}


def _named(clip) -> torch.nn.Module:
    named = torch.nn.Module()
    named.text_model = clip  # kohya's CLIP names its modules text_model.* (this transformers drops it)
    return named


def _file(tmp_path, kind: str):
    cls, (dim, alpha) = KINDS[kind]
    pipe = build_pipeline(BASE)
    torch.manual_seed(11)
    tensors, linears = {}, {}
    for name, parts in _layers(pipe.transformer.float()).items():
        linears[name] = _fused_linear(parts)
        module = cls(name, linears[name], 1.0, dim, alpha)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    clip = _named(pipe.text_encoder.float())
    for path in NORMS:
        name = "lora_te1_" + path.replace(".", "_")
        module = NormModule(name, clip.get_submodule(path), 1.0)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    return file, linears


@pytest.mark.parametrize("kind", list(KINDS))
def test_norm_file_starts_clip_where_lycoris_rebuilds_it_trains_and_resumes(tmp_path, kind):
    file, linears = _file(tmp_path, kind)
    base_clip = build_pipeline(BASE).text_encoder.float().eval()
    encoders = [_named(base_clip), torch.nn.Module()]  # kohya's list: CLIP-L lora_te1_, T5-XXL lora_te2_
    network, weights = lycoris_kohya.create_network_from_weights(
        1.0, str(file), None, encoders, _tree(linears)
    )
    assert {type(m) for m in network.text_encoder_loras} == {NormModule}
    assert len(network.text_encoder_loras) == len(NORMS) and len(network.unet_loras) == len(linears)
    for module in [*network.unet_loras, *network.text_encoder_loras]:
        module.apply_to()
    network.load_state_dict(weights, strict=False)  # train_network.py's load_weights

    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    assert plan.adapter.kind == kind and plan.adapter.init_partial and plan.train_text_encoder
    assert plan.adapter.text_encoder_norms == ("layers.0.layer_norm1", "layers.1.layer_norm2")
    assert plan.adapter.text_encoder_targets == ()  # the file has no CLIP Linear module
    comps, _ = _loaded(plan)
    ids = torch.arange(7).unsqueeze(0) % base_clip.config.vocab_size
    with torch.no_grad():
        plain = build_pipeline(BASE).text_encoder.float().eval()(ids).last_hidden_state
        theirs = base_clip(ids).last_hidden_state
        ours = comps.text_encoders[0].float().eval()(ids).last_hidden_state
    assert (theirs - plain).abs().max() > 1e-2  # the file's offsets move CLIP-L
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval()).items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            mine = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(mine, linears[name](x), rtol=0, atol=1e-5, msg=name)

    whole = execute(compile_spec(spec, [*RUN, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    parts = compile_spec(spec, [*RUN, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    for model in ("unet", "text_encoders"):
        mine = getattr(whole.components, model)
        again = getattr(second.components, model)
        pairs = [(mine, again)] if model == "unet" else [(mine[0], again[0])]
        for a, b in pairs:
            ref = dict(a.named_parameters())
            for name, p in b.named_parameters():
                assert torch.equal(p, ref[name]), name
    trained = whole.components.text_encoders[0].float().eval()
    with torch.no_grad():
        moved = trained(ids).last_hidden_state
    assert not torch.allclose(moved, theirs, atol=1e-6)  # the offsets trained on
