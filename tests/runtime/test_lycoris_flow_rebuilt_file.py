"""lycoris.kohya --dim_from_weights on Flux with a Diag-OFT, GLoRA or BOFT file (issue 12;
dbspec/convert/kohya/lycoris_flow_rebuilt.py): lycoris-lora 4.1.3 writes the file (its DiagOFTModule /
GLoRAModule on tiny-flux's layers as kohya's Flux holds them, fused q/k/v and linear1 one module over the
stacked rows, every tensor moved) and rebuilds it with create_network_from_weights on a tree of kohya's
names; the converted spec, run on tiny-flux, starts every layer where LyCORIS's rebuilt modules are (same
outputs to 1e-5; the single block's linear1 at a rank and alpha (GLoRA) or a block size and rescale
(Diag-OFT) of its own: a block; the final layer without the single blocks' linear2, which stay plain
(GLoRA: a rank-0 block; Diag-OFT, BOFT: `exclude`); BOFT's modules at their own block sizes, one fused
BOFT at the hint that splits each as the file), and the run trains and resumes bit-exact. The file's CLIP-L
and T5-XXL modules (LyCORIS's lora_te1_ / lora_te2_; T5's was DBS403) start CLIP-L's and T5's layers where
LyCORIS rebuilds them (train.t5, T5's other Linears plain), train, resume bit-exact, and the export's T5
modules are LyCORIS's keys and shapes, which LyCORIS's rebuilt network loads to the trained T5 outputs."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flow_factor_file import LINEAR1, RUN, _converted, _layers, _tree
from tests.runtime.test_lycoris_flux import BASE, _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.boft import ButterflyOFTModule  # noqa: E402
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402

# kind -> (LyCORIS's class, its (lora_dim, alpha) and keywords, single block 0 linear1's own, the final layer)
KINDS = {
    # constraints that bind (DiagOFTModule's one norm over a fused Linear's blocks: the parts share it)
    "diag-oft": (
        DiagOFTModule,
        (4, 0.0, {"rescaled": True, "constraint": 0.01}),
        # linear1 (112 rows) at lora_dim 7: blocks of 7, which span its 16-row parts (they share them:
        # runtime/fused_oft.py; was DBS403)
        (7, 0.0, {"constraint": 0.02}),
        True,
    ),
    "glora": (GLoRAModule, (2, 1.5, {}), (3, 0.5, {}), True),
    # lora_dim 16 (algo=boft's network_dim): each module at its own block size (qkv 4 x 12, proj 1 x 16),
    # rebuilt at lora_dim = that size; dbspec's fused BOFT at the hint 16; linear1 at lora_dim 28 (4 x 28,
    # which the hint 16 would split as 8 x 14), another constraint and no rescale: a block over its parts
    "boft": (
        ButterflyOFTModule,
        (16, 0.0, {"rescaled": True, "constraint": 0.05}),
        (28, 0.0, {"constraint": 0.02}),
        True,
    ),
}


# CLIP-L's Linears the file also holds (lora_te1_*, LyCORIS's first encoder of kohya's [CLIP-L, T5-XXL]);
# layer 0's q_proj at the kind's own values (a text-encoder block), the others at the common ones
CLIP = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.k_proj", "encoder.layers.1.mlp.fc1")
# T5-XXL's Linears the file also holds (lora_te2_*, LyCORIS's second encoder): block 1's wo at the kind's own
# values (a text-encoder block), block 0's q at the common ones; T5's other Linears the file lacks
T5 = ("encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.1.DenseReluDense.wo")


def _module(cls, name: str, layer, values):
    dim, alpha, kwargs = values
    module = cls(name, layer, 1.0, dim, alpha, **kwargs)
    with torch.no_grad():
        for key, p in module.named_parameters():
            p.uniform_(0.8, 1.2) if key == "rescale" else p.add_(torch.randn_like(p) * 0.1)
    return {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}


def _file(tmp_path, kind: str):
    from dbspec.runtime.tiny import build_pipeline

    cls, common, own, final = KINDS[kind]
    torch.manual_seed(7)
    tensors, linears = {}, {}
    pipe = build_pipeline(BASE)
    for name, parts in _layers(pipe.transformer.float(), final).items():
        linears[name] = _fused_linear(parts)
        values = own if own and name.endswith("single_blocks_0_linear1") else common
        tensors |= _module(cls, name, linears[name], values)
    layers = dict(pipe.text_encoder.float().named_modules())
    for path in CLIP:
        name = "lora_te1_text_model_" + path.replace(".", "_")
        values = own if own and path.endswith("q_proj") else common
        tensors |= _module(cls, name, copy.deepcopy(layers[path]), values)
    t5 = dict(pipe.text_encoder_2.float().named_modules())
    for path in T5:
        values = own if own and path.endswith("wo") else common
        tensors |= _module(cls, "lora_te2_" + path.replace(".", "_"), copy.deepcopy(t5[path]), values)
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    return file, linears


def _rebuilt(tmp_path, kind: str):
    """lycoris-lora's network rebuilt from the file on kohya's Flux names and [CLIP-L, T5-XXL] (applied: the
    layers compute its modules), the layers, CLIP-L and T5-XXL."""
    from dbspec.runtime.tiny import build_pipeline

    cls = KINDS[kind][0]
    file, linears = _file(tmp_path, kind)
    pipe = build_pipeline(BASE)
    clip = pipe.text_encoder.float()
    kohya_clip = nn.Module()  # kohya's transformers (4.54.1) CLIPTextModel: its layers under text_model
    kohya_clip.add_module("text_model", clip)
    t5 = pipe.text_encoder_2.float()
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(file), None, [kohya_clip, t5], _tree(linears)
    )
    assert {type(m) for m in network.unet_loras} == {cls} and len(network.unet_loras) == len(linears)
    assert {type(m) for m in network.text_encoder_loras} == {cls}
    assert len(network.text_encoder_loras) == len(CLIP) + len(T5)
    for module in [*network.unet_loras, *network.text_encoder_loras]:
        module.apply_to()
    return network, linears, clip, t5


def _starts_where_rebuilt(plan, linears, clip, t5, final: bool) -> None:
    """The converted run's CLIP-L, T5-XXL and denoiser layers compute lycoris-lora's rebuilt modules (to
    1e-5); T5's Linears the file lacks stay plain."""
    comps, count = _loaded(plan)
    assert count == len(linears) + len(CLIP) + len(T5)
    for ours, theirs, paths in ((comps.text_encoders[0], clip, CLIP), (comps.text_encoders[1], t5, T5)):
        ours, theirs = dict(ours.float().eval().named_modules()), dict(theirs.named_modules())
        for path in paths:  # CLIP-L's and T5's layers where LyCORIS rebuilt them
            x = torch.randn(3, theirs[path].in_features)
            with torch.no_grad():
                assert not torch.allclose(ours[path](x), ours[path].base_layer(x), atol=1e-4), path
                torch.testing.assert_close(ours[path](x), theirs[path](x), rtol=0, atol=1e-5, msg=path)
    left = {p for p, m in comps.text_encoders[1].named_modules() if type(m) is nn.Linear and "layer." in p}
    adapted = {p for p, m in comps.text_encoders[1].named_modules() if hasattr(m, "base_layer")}
    assert adapted == set(T5) and len(left) > 10  # T5's other Linears plain, as LyCORIS builds none there
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval(), final).items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(ours, plain, atol=1e-4), name
            torch.testing.assert_close(ours, linears[name](x), rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
def test_negative_constraint_file_starts_where_lycoris_rebuilds_it(tmp_path, monkeypatch, kind):
    """A Diag-OFT / BOFT file whose alpha is negative (was DBS403): make_module_from_state_dict builds the
    modules at constraint = alpha < 0, which their `if constraint > 0` leaves unconstrained, as 0: the
    converted run (constraint 0) starts every layer at the rebuilt modules' outputs, blocks whose norms a
    positive constraint of that size would bind."""
    cls, (dim, alpha, kwargs), _, _ = KINDS[kind]
    monkeypatch.setitem(KINDS, kind, (cls, (dim, alpha, {**kwargs, "constraint": -0.01}), None, False))
    network, linears, clip, t5 = _rebuilt(tmp_path, kind)
    for module in network.unet_loras:
        q = module.oft_blocks - module.oft_blocks.transpose(-1, -2)
        assert module.alpha.item() == pytest.approx(-0.01) and torch.norm(q) > -module.constraint
    plan = compile_spec(_converted(tmp_path), RUN)
    assert (plan.adapter.kind, plan.adapter.oft_constraint) == (kind, 0.0)
    # no block but `exclude`'s rank-0 ones (T5's Linears the file lacks, kept to T5's component)
    assert all(b.rank == 0 and b.pattern.startswith("^text_encoder_2") for b in plan.adapter.blocks)
    _starts_where_rebuilt(plan, linears, clip, t5, False)


@pytest.mark.parametrize("kind", list(KINDS))
def test_rebuilt_file_starts_where_lycoris_rebuilds_it_trains_and_resumes(tmp_path, kind):
    cls, (dim, alpha, kwargs), own, final = KINDS[kind]
    network, linears, clip, t5 = _rebuilt(tmp_path, kind)
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    assert plan.adapter.kind == kind and plan.adapter.init_partial and plan.adapter.fused
    # the final layer (`proj_out`) without the single blocks' linear2 (their proj_out): a first rank-0 block
    # (GLoRA's) or `exclude` (Diag-OFT's, BOFT's) keeps those plain, as LyCORIS builds no module there
    zero, *blocks = plan.adapter.blocks
    assert zero.rank == 0 and re.search(zero.pattern, "single_transformer_blocks.0.proj_out")
    assert not re.search(zero.pattern, "proj_out")
    # Diag-OFT's / BOFT's `exclude` of T5's Linears the file lacks, kept to T5 (GLoRA's: a rank-0 text block)
    t5_left = [b for b in blocks if b.pattern.startswith("^text_encoder_2")]
    assert all(b.rank == 0 for b in t5_left) and bool(t5_left) == (kind != "glora")
    blocks = [b for b in blocks if b not in t5_left]
    if kind == "diag-oft":
        assert (plan.adapter.oft_block_size, plan.adapter.oft_rescaled) == (dim, True)
        assert plan.adapter.oft_constraint == pytest.approx(kwargs["constraint"])  # the file's alpha
        (block,) = blocks  # linear1's parts, all of them: blocks of 7 rows, no rescale
        assert (block.rank, block.rescaled) == (own[0], "off")
        assert block.alpha == pytest.approx(own[2]["constraint"])
        for module in network.unet_loras:  # the constraints bind: the fused norms exceed them
            q = module.oft_blocks - module.oft_blocks.transpose(1, 2)
            assert torch.norm(q) > module.constraint > 0, module.lora_name
        assert all(re.search(block.pattern, f"single_transformer_blocks.0.{p}") for p in LINEAR1)
        assert not re.search(block.pattern, "transformer_blocks.0.attn.to_q")
    elif kind == "boft":  # the hint gives every module but linear1 its file split; linear1 a block
        assert (plan.adapter.oft_block_size, plan.adapter.oft_rescaled) == (dim, True)
        assert plan.adapter.oft_constraint == pytest.approx(kwargs["constraint"])
        assert len({m.oft_blocks.shape[-1] for m in network.unet_loras}) > 2  # modules at other sizes
        (block,) = blocks
        assert (block.rank, block.rescaled) == (own[0], "off")
        assert block.alpha == pytest.approx(own[2]["constraint"])
        assert all(re.search(block.pattern, f"single_transformer_blocks.0.{p}") for p in LINEAR1)
        assert not re.search(block.pattern, "transformer_blocks.0.attn.to_q")
    else:
        assert (plan.adapter.rank, plan.adapter.alpha) == (dim, alpha)
        (block,) = blocks  # linear1's parts, all of them
        assert (block.rank, block.alpha) == own[:2]
        assert all(re.search(block.pattern, f"single_transformer_blocks.0.{p}") for p in LINEAR1)
        assert not re.search(block.pattern, "transformer_blocks.0.attn.to_q")
    assert plan.train_text_encoder and set(plan.adapter.text_encoder_targets) == set(CLIP)
    trained = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert {"text_encoder", "text_encoder_2"} <= trained and plan.adapter.t5_targets  # train.t5 (was DBS403)
    # q_proj and T5's wo at their own values (`exclude`'s rank-0 blocks are searched in the text encoders'
    # paths too; GLoRA's rank-0 block for T5's Linears the file lacks)
    (text,) = [b for b in plan.adapter.text_encoder_blocks if b.rank]  # one block: the same own values
    assert re.search(text.pattern, f"text_encoder.text_model.{CLIP[0]}")
    assert not any(re.search(text.pattern, f"text_encoder.text_model.{p}") for p in CLIP[1:])
    assert re.search(text.pattern, f"text_encoder_2.{T5[1]}") and not re.search(text.pattern, T5[0])
    _starts_where_rebuilt(plan, linears, clip, t5, final)
    theirs_clip = dict(clip.named_modules())
    whole = execute(compile_spec(spec, [*RUN, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    parts = compile_spec(spec, [*RUN, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    for a, b in [
        (whole.components.unet, second.components.unet),
        (whole.components.text_encoders[0], second.components.text_encoders[0]),
        (whole.components.text_encoders[1], second.components.text_encoders[1]),
    ]:
        ours = dict(a.named_parameters())
        for name, p in b.named_parameters():
            assert torch.equal(p, ours[name]), name
    trained_clip = dict(whole.components.text_encoders[0].float().eval().named_modules())[CLIP[1]]
    x = torch.randn(3, trained_clip.in_features)
    with torch.no_grad():  # CLIP's adapters trained too
        assert not torch.allclose(trained_clip(x), theirs_clip[CLIP[1]](x), atol=1e-7)
    unet = whole.components.unet
    assert type(unet.single_transformer_blocks[0].proj_out) is nn.Linear  # excluded: no adapter layer
    from pathlib import Path

    from safetensors.torch import load_file

    exported = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {key.split(".")[0] for key in exported}  # the final layer's module, no single block's linear2
    assert "lora_unet_final_layer_linear" in names and not any("linear2" in n for n in names), names
    # T5's modules as LyCORIS saves them (its keys and shapes), trained: LyCORIS's rebuilt network loads
    # them and computes the run's T5 outputs
    # (the network's state_dict once its apply_to registers each module under its lora_name)
    modules = {m.lora_name: m for m in network.text_encoder_loras if m.lora_name.startswith("lora_te2_")}
    state = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
    saved_t5 = {k: v for k, v in exported.items() if k.startswith("lora_te2_")}
    assert saved_t5.keys() == state.keys()
    assert all(saved_t5[k].shape == state[k].shape for k in saved_t5)
    ours_t5, theirs_t5 = (
        dict(whole.components.text_encoders[1].float().eval().named_modules()),
        dict(t5.named_modules()),
    )
    xs = {path: torch.randn(3, ours_t5[path].in_features) for path in T5}
    with torch.no_grad():
        start = {path: theirs_t5[path](x) for path, x in xs.items()}
        for name, module in modules.items():
            module.load_state_dict(
                {k.split(".", 1)[1]: v for k, v in saved_t5.items() if k.startswith(name + ".")}
            )
        for path, x in xs.items():  # T5's modules trained away from the file's, LyCORIS loads them back
            assert not torch.allclose(ours_t5[path](x), start[path], atol=1e-7), path
            torch.testing.assert_close(theirs_t5[path](x), ours_t5[path](x), rtol=0, atol=1e-5, msg=path)
    trained = _layers(unet.float().eval(), final)
    attn = trained["lora_unet_double_blocks_0_img_attn_qkv"]
    x = torch.randn(3, attn[0].base_layer.in_features)
    with torch.no_grad():
        moved = torch.cat([p(x) for p in attn], -1)
        assert not torch.allclose(moved, linears["lora_unet_double_blocks_0_img_attn_qkv"](x), atol=1e-7)
    if kind == "diag-oft":  # `dbspec sample` loads the run's adapters back, each fused layer's norm shared
        from dbspec.runtime.sample import SampleRequest, load_pipeline

        sampled = load_pipeline(SampleRequest(source=Path(whole.output), settings=None)).transformer.float()
        again = _layers(sampled.eval(), final)["lora_unet_double_blocks_0_img_attn_qkv"]
        with torch.no_grad():
            torch.testing.assert_close(torch.cat([p(x) for p in again], -1), moved, rtol=0, atol=1e-5)
        # linear1's blocks of 7 span its parts: one Parameter, trained, loaded back shared
        name = "lora_unet_single_blocks_0_linear1"
        for layers in (trained[name], _layers(sampled, final)[name]):
            assert len({id(p.lora_oft_blocks["default"]) for p in layers}) == 1
        assert exported[f"{name}.oft_blocks"].shape == (16, 7, 7)
        x = torch.randn(3, trained[name][0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in trained[name]], -1)
            assert not torch.allclose(ours, linears[name](x), atol=1e-7)
            loaded = torch.cat([p(x) for p in _layers(sampled, final)[name]], -1)
            torch.testing.assert_close(loaded, ours, rtol=0, atol=1e-5)
