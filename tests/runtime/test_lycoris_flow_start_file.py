"""lycoris.kohya --network_weights on Flux with use_scalar (LoCon, LoHa, LoKr, GLoRA) and with Diag-OFT and
GLoRA files (issue 12; runtime/init_weights.py, flow_init.py, lycoris_init.py, lycoris_whole_init.py):
lycoris-lora 4.1.3's modules on tiny-flux's layers as kohya's Flux holds them (a fused q/k/v or linear1 one
module over the stacked rows), every tensor moved at random (use_scalar's scalar too, which the saved factors
hold folded in), saved as its network saves them; a fresh module of the same kind loads the file
(load_state_dict(strict=False), as kohya's load_weights: its load hook sets use_scalar's scalar to 1). The
converted kohya command starts dbspec's run from the file: every scalar 1 (a fused layer's one shared
scalar), every file layer computing what LyCORIS's loaded module computes (to 1e-5); a tiny run from the
file trains and resumes bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flow_factor_file import RUN, _layers
from tests.runtime.test_lycoris_flux import BASE, _fused_linear

pytest.importorskip("lycoris.kohya")
from lycoris.modules.boft import ButterflyOFTModule  # noqa: E402
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

# algo -> (LyCORIS's module, its keyword arguments at --network_dim 4 --network_alpha 2, network_args)
ALGOS = {
    "locon": (LoConModule, {"lora_dim": 4, "alpha": 2.0}, "use_scalar=True"),
    "loha": (LohaModule, {"lora_dim": 4, "alpha": 2.0}, "use_scalar=True"),
    "lokr": (LokrModule, {"lora_dim": 4, "alpha": 2.0}, "use_scalar=True"),
    "glora": (GLoRAModule, {"lora_dim": 4, "alpha": 2.0}, "use_scalar=True"),
    "glora-plain": (GLoRAModule, {"lora_dim": 4, "alpha": 2.0}, ""),
    "diag-oft": (DiagOFTModule, {"lora_dim": 4, "alpha": 0.0, "rescaled": True}, "rescaled=True"),
}


def _module(algo: str, name: str, parts):
    cls, kwargs, args = ALGOS[algo]
    scalar = {"use_scalar": True} if "use_scalar" in args else {}
    return cls(name, _fused_linear(parts), 1.0, **kwargs, **scalar)


def _file(tmp_path, algo: str) -> dict[str, torch.nn.Module]:
    """LyCORIS's modules on the fused Linears, every tensor moved, saved as its network saves them; fresh
    modules loading the file as kohya's load_weights loads them (kohya name -> module)."""
    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(11)
    tensors, theirs = {}, {}
    for name, parts in _layers(build_pipeline(BASE).transformer.float()).items():
        module = _module(algo, name, parts)
        with torch.no_grad():
            for key, p in module.named_parameters():
                if key == "scalar":  # a trained scalar, folded into the saved factors
                    p.uniform_(0.5, 1.5)
                elif key == "rescale":
                    p.uniform_(0.8, 1.2)
                else:
                    p.add_(torch.randn_like(p) * 0.1)
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        assert not any("scalar" in k for k in state)
        tensors |= {f"{name}.{k}": v for k, v in state.items()}
        fresh = _module(algo, name, parts)
        fresh.load_state_dict(state, strict=False)
        if "use_scalar" in ALGOS[algo][2]:
            assert float(fresh.scalar.detach()) == 1.0  # the load hook's
        fresh.apply_to()
        theirs[name] = fresh.eval()
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    return theirs


def _converted(tmp_path, algo: str):
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f"--network_dim 4 --network_alpha 2 --network_args algo={algo.removesuffix('-plain')} "
        f"preset=unet-only {ALGOS[algo][2]} --network_weights prev.safetensors --learning_rate=1e-3 "
        "--max_train_steps=3 --save_every_n_steps 2 --save_model_as=safetensors --output_dir=out "
        "--model_prediction_type raw --guidance_scale 1.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


def _scalars(unet) -> list[float]:
    from dbspec.runtime.lycoris_switches import layer_scalar

    out = []
    for layer in unet.modules():
        glora = layer._modules.get("lora_glora_scalar")
        scalar = glora["default"] if glora is not None and "default" in glora else layer_scalar(layer)
        if scalar is not None:
            out.append(float(scalar.detach()))
    return out


@pytest.mark.parametrize("algo", list(ALGOS))
def test_file_starts_where_lycoris_loads_it_trains_and_resumes(tmp_path, algo):
    theirs = _file(tmp_path, algo)
    spec = _converted(tmp_path, algo)
    plan = compile_spec(spec, RUN)
    assert plan.adapter.init_partial and plan.adapter.fused
    assert getattr(plan.adapter, "scalar", False) == ("use_scalar" in ALGOS[algo][2])
    comps, count = _loaded(plan)
    assert count == 5  # img_in: no layer of LyCORIS's unet-only preset (strict=False ignores it)
    if plan.adapter.scalar:
        scalars = _scalars(comps.unet)
        assert scalars and set(scalars) == {1.0}  # every layer's, those the file lacks too
    torch.manual_seed(0)
    layers = _layers(comps.unet.float().eval())
    assert not hasattr(layers.pop("lora_unet_img_in")[0], "base_layer")
    for name, parts in layers.items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(ours, plain, atol=1e-4), name
            torch.testing.assert_close(ours, theirs[name](x), rtol=0, atol=1e-5, msg=name)
    if algo not in ("lokr", "glora", "diag-oft"):
        return  # one fused LoRA / LoHa start trains like the others
    whole = execute(compile_spec(spec, [*RUN, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    parts = compile_spec(spec, [*RUN, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        assert torch.equal(p, ours[name]), name
    trained = _layers(whole.components.unet.float().eval())
    attn = trained["lora_unet_double_blocks_0_img_attn_qkv"]
    x = torch.randn(3, attn[0].base_layer.in_features)
    with torch.no_grad():
        moved = torch.cat([p(x) for p in attn], -1)
        assert not torch.allclose(moved, theirs["lora_unet_double_blocks_0_img_attn_qkv"](x), atol=1e-7)


# SD3 (a hand-written spec as the converter writes it for sd3_train_network.py preset=full-lin, the file's
# modules partial): kohya's fused q/k/v, the MLP, the timestep embedder and the last block's context
# modulation, whose rows kohya holds as (shift, scale)
SD3_ALGOS = {
    "glora": (GLoRAModule, {"lora_dim": 2, "alpha": 1.5, "use_scalar": True}, "scalar = true\n"),
    "diag-oft": (DiagOFTModule, {"lora_dim": 4, "alpha": 0.0, "rescaled": True}, "rescaled = true\n"),
    "lokr": (LokrModule, {"lora_dim": 2, "alpha": 1.5, "use_scalar": True}, "scalar = true\n"),
    # ButterflyOFTModule at lora_dim 8 (its blocks over the stacked 48 rows: 6 x 8, 4 stages)
    "boft": (ButterflyOFTModule, {"lora_dim": 8, "rescaled": True}, "rescaled = true\n"),
}


PATCH = "lora_unet_x_embedder_proj"  # SD3's patch convolution (presets full / unet-only), at conv_dim 4 / 2


def _moved(module) -> dict[str, torch.Tensor]:
    """`module`'s state as LyCORIS saves it, after every parameter moved (a scalar / rescale near 1)."""
    with torch.no_grad():
        for key, p in module.named_parameters():
            p.uniform_(0.5, 1.5) if key in ("scalar", "rescale") else p.add_(torch.randn_like(p) * 0.1)
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("algo", list(SD3_ALGOS))
def test_sd3_file_starts_where_lycoris_loads_it(tmp_path, algo):
    import copy

    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import make_plan
    from tests.runtime.test_lycoris_sd3 import BASE as SD3, LOKR, _kohya_linear, _layers as sd3_layers
    from tests.runtime.test_lycoris_sd3 import _same_outputs

    cls, kwargs, fields = SD3_ALGOS[algo]
    torch.manual_seed(13)
    tensors, theirs = {}, {}
    transformer = build_pipeline(SD3).transformer.float()
    for name, parts, order in sd3_layers(transformer):
        state = _moved(cls(name, _kohya_linear(parts, order), 1.0, **kwargs))
        tensors |= {f"{name}.{k}": v for k, v in state.items()}
        fresh = cls(name, _kohya_linear(parts, order), 1.0, **kwargs)
        fresh.apply_to()
        fresh.load_state_dict(state, strict=False)  # kohya's load_weights (its hook: scalar 1)
        theirs[name] = fresh
    conv = algo != "lokr"  # the patch convolution too (Diag-OFT at its lora_dim, GLoRA at conv_dim)
    if conv:
        state = _moved(cls(PATCH, copy.deepcopy(transformer.pos_embed.proj), 1.0, **kwargs))
        tensors |= {f"{PATCH}.{k}": v for k, v in state.items()}
        theirs[PATCH] = cls(PATCH, copy.deepcopy(transformer.pos_embed.proj), 1.0, **kwargs)
        theirs[PATCH].apply_to()
        theirs[PATCH].load_state_dict(state, strict=False)
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    head = 'kind = "lokr"\nrank = 2\nalpha = 1.5'
    own = 'kind = "diag-oft"\nblock_size = 4' if algo == "diag-oft" else head.replace("lokr", algo)
    own = 'kind = "boft"\nblock_size = 8' if algo == "boft" else own
    own += '\nconv_targets = ["pos_embed.proj"]' if conv else ""
    own += "\nconv_rank = 2\nconv_alpha = 1.5" if algo == "glora" else ""
    init = f'fused_projections = true\ninit_weights = "{file}"\ninit_partial = true\n{fields}'
    extra = LOKR.replace(head, own).replace("fused_projections = true\n", init)
    comps, count = _loaded(make_plan(tmp_path / "run", base=SD3, steps=1, extra=extra))
    assert count == 5 + conv
    if fields.startswith("scalar"):
        assert set(_scalars(comps.unet)) == {1.0}
    torch.manual_seed(0)
    for name, parts, order in sd3_layers(comps.unet.float().eval()):
        _same_outputs(theirs[name], parts, order, name)
    if conv:
        layer = comps.unet.pos_embed.proj
        x = torch.randn(1, layer.base_layer.in_channels, 8, 8)
        with torch.no_grad():
            assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-3)
            torch.testing.assert_close(layer(x), theirs[PATCH].eval()(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("algo", "key"), [("diag-oft", "oft_blocks"), ("glora-plain", "b1.weight")])
def test_a_tensor_of_another_shape_is_named(tmp_path, algo, key):
    """Blocks of another split or a b1 of other rows: kohya stops (size mismatch), dbspec's run names the
    tensor when it loads the file."""
    from safetensors.torch import load_file

    _file(tmp_path, algo)
    path = tmp_path / "prev.safetensors"
    tensors = load_file(str(path))
    name = f"lora_unet_double_blocks_0_img_attn_qkv.{key}"
    tensors[name] = tensors[name][: tensors[name].shape[0] // 2].contiguous()
    save_file(tensors, str(path))
    plan = compile_spec(_converted(tmp_path, algo), RUN)
    with pytest.raises(ValueError, match=f"tensor `{name}` has shape"):
        _loaded(plan)


def test_a_block_scalar_starts_at_one_too(tmp_path):
    """A LyCORIS map entry's own use_scalar (a block's `scalar = "on"`, the adapter's off): LyCORIS's load
    hook sets those modules' scalar to 1 as well, so the block's fused layers compute the loaded modules."""
    import attrs

    from dbspec.plan.model import BlockPlan

    theirs = _file(tmp_path, "lokr")
    plan = compile_spec(_converted(tmp_path, "lokr"), RUN)
    block = BlockPlan(pattern=r"^transformer_blocks\.0\.attn\.", rank=4, alpha=2.0, scalar="on")
    adapter = attrs.evolve(plan.adapter, scalar=False, blocks=(block, *plan.adapter.blocks))
    comps, _ = _loaded(attrs.evolve(plan, adapter=adapter))
    attn = comps.unet.transformer_blocks[0].attn
    assert set(_scalars(attn)) == {1.0} and not _scalars(comps.unet.single_transformer_blocks)
    torch.manual_seed(0)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    parts = _layers(comps.unet.float().eval())[name]
    x = torch.randn(3, parts[0].base_layer.in_features)
    with torch.no_grad():
        ours = torch.cat([p(x) for p in parts], dim=-1)
        torch.testing.assert_close(ours, theirs[name](x), rtol=0, atol=1e-5)
