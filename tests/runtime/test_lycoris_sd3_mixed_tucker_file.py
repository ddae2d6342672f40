"""lycoris.kohya --dim_from_weights on SD3 with a file of several kinds whose patch convolution's module is in
LyCORIS's Tucker form (issue 12; was DBS403 / a spec's DBS596): lycoris-lora 4.1.3 writes a LohaModule /
LoConModule / LokrModule with use_tucker on tiny-sd3's patch convolution beside modules of other kinds on the
fused x-block q/k/v and its attention output, and rebuilds them with create_network_from_weights on a tree
of kohya's names. The converted run (a block over `pos_embed.proj` of the patch module's kind, `tucker =
"on"`: the patch module's kind another than the adapter's, or the adapter's own) starts every layer at
LyCORIS's outputs (1e-5); the LoHa one beside LoKr trains, resumes bit-exact, and its kohya_lora export's
patch module is what lycoris-lora's LohaModule with use_tucker loads, computing the trained layer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.runtime.runspec import compile_spec, spec_whole_and_resumed
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd3_patch_file import RUN, _converted, _copy

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

PATCH, QKV, PROJ = (
    "lora_unet_x_embedder_proj",
    "lora_unet_joint_blocks_0_x_block_attn_qkv",
    "lora_unet_joint_blocks_0_x_block_attn_proj",
)
TUCKER = {"use_tucker": True}
BOTH = {"decompose_both": True}
# {kohya name: (class, rank, alpha, options)}; the adapter's kind is LoKr's where the file has LoKr modules,
# else LoHa's: the patch module of another kind (LoHa, LoCon beside LoKr) or of the adapter's own
CASES = {
    "loha beside lokr": {
        PATCH: (LohaModule, 2, 1.0, TUCKER),
        QKV: (LokrModule, 1, 1.5, BOTH),
        PROJ: (LokrModule, 1, 1.5, BOTH),
    },
    "locon beside lokr": {
        PATCH: (LoConModule, 2, 1.0, TUCKER),
        QKV: (LokrModule, 1, 1.5, BOTH),
        PROJ: (LokrModule, 1, 1.5, BOTH),
    },
    "lokr beside locon": {
        PATCH: (LokrModule, 1, 1.0, {**TUCKER, **BOTH}),
        QKV: (LoConModule, 3, 1.5, {}),
        PROJ: (LokrModule, 1, 1.0, BOTH),
    },
    "loha beside locon": {
        PATCH: (LohaModule, 2, 1.0, TUCKER),
        QKV: (LoConModule, 3, 1.5, {}),
        PROJ: (LohaModule, 2, 1.0, {}),
    },
}
CORES = {LohaModule: "hada_t1", LoConModule: "lora_mid.weight", LokrModule: "lokr_t2"}
KINDS = {LohaModule: "loha", LoConModule: "lora", LokrModule: "lokr"}


def _layers(model) -> dict[str, tuple]:
    attn = model.transformer_blocks[0].attn
    return {PATCH: (model.pos_embed.proj,), QKV: (attn.to_q, attn.to_k, attn.to_v), PROJ: (attn.to_out[0],)}


def _file(tmp_path, case: str) -> dict[str, nn.Module]:
    """lycoris-lora's modules of `case` (every tensor random) saved as its network saves them, and kohya's
    layers as --dim_from_weights leaves them (create_network_from_weights on a tree of kohya's names,
    apply_to, train_network.py's load_weights)."""
    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(11)
    tensors, layers = {}, {}
    for name, parts in _layers(build_pipeline("builtin:tiny-sd3").transformer.float()).items():
        cls, rank, alpha, options = CASES[case][name]
        layers[name] = _copy(parts) if name != PROJ else copy.deepcopy(parts[0])
        module = cls(name, layers[name], 1.0, rank, alpha, **options)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    assert CORES[CASES[case][PATCH][0]] in {k.removeprefix(PATCH + ".") for k in tensors}
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    tree = nn.Module()
    tree.x_embedder = nn.Module()
    tree.x_embedder.proj = layers[PATCH]
    tree.joint_blocks = nn.ModuleList([nn.Module()])
    tree.joint_blocks[0].x_block = nn.Module()
    tree.joint_blocks[0].x_block.attn = nn.Module()
    tree.joint_blocks[0].x_block.attn.qkv = layers[QKV]
    tree.joint_blocks[0].x_block.attn.proj = layers[PROJ]
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(tmp_path / "prev.safetensors"), None, None, tree
    )
    built = {m.lora_name: type(m) for m in network.unet_loras}
    assert built == {name: cls for name, (cls, *_) in CASES[case].items()}
    assert network.unet_loras[[m.lora_name for m in network.unet_loras].index(PATCH)].tucker
    network.apply_to(None, tree, apply_text_encoder=False, apply_unet=True)
    network.load_weights(str(tmp_path / "prev.safetensors"))
    return layers


def _inputs(base: nn.Module) -> torch.Tensor:
    return torch.randn(2, base.in_channels, 8, 8) if isinstance(base, nn.Conv2d) else torch.randn(3, 16)


@pytest.mark.parametrize("case", list(CASES))
def test_mixed_file_with_a_tucker_patch_convolution_starts_where_lycoris_rebuilds_it(tmp_path, case):
    layers = _file(tmp_path, case)
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    a = plan.adapter
    patch_kind = KINDS[CASES[case][PATCH][0]]
    (block,) = [b for b in a.blocks if b.pattern == r"^(pos_embed\.proj)$"]
    assert (block.tucker, block.kind if block.kind != "adapter" else a.kind) == ("on", patch_kind)
    assert not a.tucker and a.conv_targets == ("pos_embed.proj",) and len(a.fused) == 1
    comps, count = _loaded(plan)
    assert count == 3
    for name, parts in _layers(comps.unet.float().eval()).items():
        x = _inputs(parts[0].base_layer)
        dim = 1 if x.dim() == 4 else -1
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=dim)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=dim)
            assert not torch.allclose(ours, plain, atol=1e-4), name
            torch.testing.assert_close(ours, layers[name](x), rtol=0, atol=1e-5, msg=name)
    if case != "loha beside lokr":  # one run: each kind's layers are built alike (mixed_kinds.kind_adapter)
        return
    plan, whole = spec_whole_and_resumed(spec, [*RUN, "checkpoints.every=1"], tmp_path)
    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    own = {k.removeprefix(PATCH + "."): v for k, v in tensors.items() if k.startswith(PATCH + ".")}
    cls, rank, _, options = CASES[case][PATCH]
    assert CORES[cls] in own
    layer = whole.components.unet.float().eval().pos_embed.proj
    module = cls(PATCH, copy.deepcopy(layer.get_base_layer()), 1.0, rank, own["alpha"].item(), **options)
    module.load_state_dict(own)
    module.apply_to()
    x = _inputs(layer.get_base_layer())
    with torch.no_grad():
        trained = layer(x)
        assert not torch.allclose(trained, layer.get_base_layer()(x), atol=1e-4)
        torch.testing.assert_close(module.eval()(x), trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("block_kind", "rank"), [("lokr", 1), ("loha", 2)])
def test_a_lokr_or_loha_patch_block_beside_locon_starts_as_lycoris_module(tmp_path, block_kind, rank):
    """A preset file's PatchEmbed entry algo=lokr / loha with use_tucker on a LoCon network (its block's
    `tucker = "on"`, fused_projections on the Linears): the patch convolution's layer is lycoris-lora's
    LokrModule / LohaModule with use_tucker at that dim (shapes, Tucker core, scale, the base output), the
    fused Linears LoRA."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.runspec import make_plan
    from tests.runtime.test_lycoris_sd3 import BASE, LOKR
    from tests.runtime.test_lycoris_sd3_patch import _check_start

    adapter, checkpoints = LOKR.replace('kind = "lokr"', 'kind = "lora"').split("\n\n[checkpoints]")
    block = (
        '\n[[adapter.blocks]]\npattern = "(?:^|\\\\.)(?:pos_embed\\\\.proj)$"\n'
        f'kind = "{block_kind}"\nrank = 2\nalpha = 1.5\nconv_rank = {rank}\nconv_alpha = 1\ntucker = "on"\n'
    )
    patch = 'conv_rank = 4\nconv_alpha = 1\nconv_targets = ["pos_embed.proj"]\n'
    plan = make_plan(
        tmp_path, base=BASE, steps=1, extra=f"{adapter}\n{patch}{block}\n[checkpoints]{checkpoints}"
    )
    assert not plan.adapter.tucker and plan.adapter.blocks[0].tucker == "on"
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    unet = comps.unet.float().eval()
    _check_start(block_kind, unet.pos_embed.proj, rank)
    assert hasattr(unet.transformer_blocks[0].attn.to_q, "lora_A")
