"""LyCORIS's lycoris.kohya algo=lokr / loha with sd3_train_network.py (convert/kohya/lycoris_sd3.py): the spec
it converts to (networks.lora_sd3's joint-block Linears and the timestep embedder's, one Kronecker / Hadamard
update per fused q/k/v) trains on tiny-sd3, resumes bit-exact, and its kohya_lora export, under kohya's SD3
names (lora_unet_joint_blocks_*, CLIP-L lora_te1_*, CLIP-G lora_te2_*), is what lycoris-lora's own modules,
built on each fused Linear (the parts' base weights stacked, as kohya's MMDiT holds them) and loaded from the
file, compute; the last block's context modulation in kohya's (shift, scale) row order. (A scratch run of
lycoris-lora's create_network_from_weights on kohya's library/sd3_models.py joint blocks and timestep
embedder at this width loaded every module of the LoKr, LoHa and LoCon files, each update within 1.3e-7.)"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest

import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.diag_oft import DiagOFTModule
from lycoris.modules.ia3 import IA3Module
from lycoris.modules.lokr import LokrModule
from safetensors.torch import load_file, save_file

from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan

BASE = "builtin:tiny-sd3"
# what the converter writes for `--network_args algo=lokr preset=full-lin` (network_dim 2, alpha 1.5)
TARGETS = [
    *("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    *("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
    *("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    *("norm1.linear", "norm1_context.linear", "timestep_embedder.linear_1", "timestep_embedder.linear_2"),
]
LOKR = (
    '[adapter]\nkind = "lokr"\nrank = 2\nalpha = 1.5\nfused_projections = true\ndenoiser_targets = ['
    + ", ".join(f'"{t}"' for t in TARGETS)
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)
# the full-lin preset's CLIP-L and CLIP-G modules (lora_te1_*, lora_te2_*)
TEXT = (
    'text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]\n\n'
    "[train]\ntext_encoder = true\n"
)


def _with_text(spec: str) -> str:
    return spec.replace("\n\n[checkpoints]", "\n" + TEXT + "\n[checkpoints]")


def _module(cls, tensors, name: str, parts, rows=None):
    """lycoris-lora's LokrModule / LohaModule on the fused Linear (kohya's layer), loaded from the file."""
    base = [p.base_layer for p in parts]
    fused = torch.nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        weight, bias = torch.cat([b.weight for b in base]), torch.cat([b.bias for b in base])
        if rows is not None:  # kohya's row order
            weight, bias = weight[rows], bias[rows]
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    if cls is DiagOFTModule:  # its blocks over the stacked rows (block size <= sqrt(rows): lora_dim is it)
        module = DiagOFTModule(name, fused, 1.0, lora_dim=own["oft_blocks"].shape[-1])
        module.load_state_dict(own)
        module.apply_to()
        return module.eval()
    if cls is IA3Module:  # one scale per output row of the fused weight
        module = IA3Module(name, fused, 1.0)
        module.load_state_dict(own)
        module.apply_to()
        return module.eval()
    rank = own["lokr_w2_a"].shape[1] if "lokr_w2_a" in own else own.get("hada_w1_b", torch.empty(2)).shape[0]
    wd = {"weight_decompose": True} if "dora_scale" in own else {}
    module = cls(name, fused, 1.0, rank, own["alpha"].item(), **wd)
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def _layers(transformer):
    first, last = transformer.transformer_blocks[0], transformer.transformer_blocks[-1]
    a, n = first.attn, len(transformer.transformer_blocks) - 1
    return [
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", (a.to_q, a.to_k, a.to_v), None),
        ("lora_unet_joint_blocks_0_context_block_attn_qkv", (a.add_q_proj, a.add_k_proj, a.add_v_proj), None),
        ("lora_unet_joint_blocks_0_x_block_mlp_fc1", (first.ff.net[0].proj,), None),
        ("lora_unet_t_embedder_mlp_0", (transformer.time_text_embed.timestep_embedder.linear_1,), None),
        (
            f"lora_unet_joint_blocks_{n}_context_block_adaLN_modulation_1",
            (last.norm1_context.linear,),
            "swap",
        ),
    ]


# the full / unet-only presets' patch convolution (PatchEmbed) at conv_dim 2 / conv_alpha 1 (LoKr: both
# factors full on its 16 x 16 x 2 x 2 weight, scale 1)
PATCH = 'fused_projections = true\nconv_rank = 2\nconv_alpha = 1\nconv_targets = ["pos_embed.proj"]\n'
# use_tucker there (LoKr at conv_dim 1: its second factor low-rank, with LyCORIS's `lokr_t2`)
TUCKER = PATCH.replace("conv_rank = 2", "conv_rank = 1") + "tucker = true\n"


def _check_patch(tensors, transformer, cls) -> None:
    """The patch convolution's export is what lycoris-lora's module on the 2x2 Conv2d loads (same output)."""
    conv = transformer.pos_embed.proj
    own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("lora_unet_x_embedder_proj.")}
    base = copy.deepcopy(conv.base_layer)
    tucker = "lokr_t2" in own or "hada_t1" in own
    rank = own["lokr_t2"].shape[0] if "lokr_t2" in own else 2
    module = cls("x_embedder_proj", base, 1.0, rank, own["alpha"].item(), use_tucker=tucker)
    module.load_state_dict(own)
    module.apply_to()
    x = torch.randn(2, base.in_channels, 8, 8)
    with torch.no_grad():
        trained, theirs = conv(x), module.eval()(x)
        assert not torch.allclose(trained, conv.base_layer(x), atol=1e-7)  # it trained
    torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)


def _check_export(plan, result, cls, text: bool = True):
    transformer = result.components.unet.float().eval()
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    if plan.adapter.conv_targets and cls in (LokrModule, LohaModule):  # the others' own tests check theirs
        _check_patch(tensors, transformer, cls)
        cores = [
            k for k in tensors if k.startswith("lora_unet_x_embedder_proj.") and k[-3:] in ("_t1", "_t2")
        ]
        assert bool(cores) == plan.adapter.tucker  # LyCORIS's Tucker cores
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "final_layer" in n or "context_embedder" in n for n in names)
    if text:
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
        assert "lora_te2_text_model_encoder_layers_0_mlp_fc1" in names
    torch.manual_seed(0)
    for name, parts, order in _layers(transformer):
        x = torch.randn(3, parts[0].base_layer.in_features)
        rows = None
        if order:  # diffusers' AdaLayerNormContinuous holds (scale, shift), kohya's Linear (shift, scale)
            half = parts[0].base_layer.out_features // 2
            rows = torch.cat([torch.arange(half, 2 * half), torch.arange(half)])
        with torch.no_grad():
            trained = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            theirs = _module(cls, tensors, name, parts, rows)(x)
        if rows is not None:
            trained, plain = trained[:, rows], plain[:, rows]
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the module trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)


def test_lokr_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    # preset=full use_tucker=True conv_dim=1: the patch convolution too, in the Tucker form
    extra = LOKR.replace("fused_projections = true\n", TUCKER)
    plan = make_plan(tmp_path / "whole", base=BASE, steps=4, extra=extra)
    assert [f.name for f in plan.adapter.fused] == [
        "x_block_attn_qkv",
        "context_block_attn_qkv",
        "x_block_attn2_qkv",
    ]
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts = make_plan(tmp_path / "parts", base=BASE, steps=4, extra=extra)
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name
    _check_export(plan, whole, LokrModule, text=False)


def test_loha_export_is_what_lycoris_loads(tmp_path):
    extra = _with_text(
        LOKR.replace('kind = "lokr"', 'kind = "loha"').replace(
            "fused_projections = true\n", PATCH + "tucker = true\n"
        )
    )
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    _check_export(plan, result, LohaModule)


def test_diag_oft_export_is_what_lycoris_loads(tmp_path):
    """algo=diag-oft preset=full-lin (convert/kohya/lycoris_flow_oft.py): each fused q/k/v's blocks are the
    parts' stacked (one block split of the stacked rows), the last context modulation's blocks swapped to
    kohya's (shift, scale) rows; lycoris-lora's DiagOFTModule on kohya's layers computes the trained parts."""
    extra = LOKR.replace('kind = "lokr"\nrank = 2\nalpha = 1.5', 'kind = "diag-oft"\nblock_size = 4')
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    assert plan.adapter.kind == "diag-oft" and plan.adapter.fused
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    _check_export(plan, result, DiagOFTModule, text=False)


def test_ia3_full_preset_export_is_what_lycoris_loads(tmp_path):
    """algo=ia3 preset=full (convert/kohya/lycoris_flux.py `_ia3`): the fused q/k/v's scales are the parts'
    rows concatenated, the last context modulation's halves swapped, the patch convolution (1, out, 1, 1)."""
    extra = _with_text(
        LOKR.replace('kind = "lokr"\nrank = 2\nalpha = 1.5\nfused_projections = true', 'kind = "ia3"')
    ).replace("\n\n[train]", '\nconv_targets = ["pos_embed.proj"]\n\n[train]')
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    assert plan.adapter.kind == "ia3"
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    _check_export(plan, result, IA3Module)
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    layer = result.components.unet.float().eval().pos_embed.proj
    conv = torch.nn.Conv2d(layer.base_layer.in_channels, layer.base_layer.out_channels, 2, 2)
    conv.load_state_dict(layer.base_layer.state_dict())
    name = "lora_unet_x_embedder_proj"
    theirs = IA3Module(name, conv, 1.0)
    theirs.load_state_dict({k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name)})
    theirs.apply_to()
    x = torch.randn(1, conv.in_channels, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-7)
        torch.testing.assert_close(conv(x), layer(x), rtol=0, atol=1e-5)


def test_locon_full_preset_dora_max_norm_resume_and_export_as_lycoris(tmp_path):
    """preset full's LoCon on the patch convolution (conv_dim 3, conv_alpha 1), in kohya's lora_sd3 layout
    beside the fused Linears', with dora_wd and --scale_weight_norms (LyCORIS's max norm, its fixed scalars
    folded into lora_up by the lora_sd3 writer; the parts' dora_scale rows stacked, the last context
    modulation's swapped): resumes bit-exact, and lycoris-lora's LoConModule (weight_decompose) on each
    kohya Linear and on kohya's x_embedder.proj (a 2x2 stride-2 Conv2d) loaded from the file computes the
    trained layer."""
    conv = 'conv_rank = 3\nconv_alpha = 1\nconv_targets = ["pos_embed.proj"]\n'
    conv += 'max_norm = 1e-3\nmax_norm_form = "lycoris"\ndora = true\ndora_form = "lycoris"\n'
    extra = LOKR.replace('kind = "lokr"', 'kind = "lora"').replace(
        "\n\n[checkpoints]", "\n" + conv + "\n[checkpoints]"
    )
    extra = extra.replace("every = 2", "every = 1") + "\n[logging]\nevery = 1\n"
    plan = make_plan(tmp_path / "whole", base=BASE, steps=2, extra=extra)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    parts = make_plan(tmp_path / "parts", base=BASE, steps=2, extra=extra)
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == result.losses
    ours = dict(result.components.unet.named_parameters())
    for key, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[key]), key
    metrics = next((tmp_path / "whole").rglob("metrics.jsonl")).read_text().splitlines()
    assert all(json.loads(r)["max_norm/keys_scaled"] > 0 for r in metrics if "loss" in json.loads(r))
    _check_export(plan, result, LoConModule, text=False)
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    width = result.components.unet.transformer_blocks[0].attn.to_q.base_layer.out_features
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.dora_scale"].shape == (3 * width, 1)
    name = "lora_unet_x_embedder_proj"
    assert tensors[f"{name}.lora_down.weight"].shape == (3, 16, 2, 2)
    layer = result.components.unet.float().eval().pos_embed.proj
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    base = layer.base_layer
    org = torch.nn.Conv2d(base.in_channels, base.out_channels, base.kernel_size, base.stride)
    with torch.no_grad():
        org.weight.copy_(base.weight)
        org.bias.copy_(base.bias)
    module = LoConModule(name, org, 1.0, 3, own["alpha"].item(), weight_decompose="dora_scale" in own)
    module.load_state_dict(own)
    module.apply_to()
    torch.manual_seed(0)
    x = torch.randn(2, base.in_channels, 8, 8)
    with torch.no_grad():
        trained, plain = layer(x), base(x)
        theirs = module.eval()(x)
    assert not torch.allclose(trained, plain, atol=1e-7)  # the LoCon trained
    torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)


def _kohya_rows(parts, order):
    """kohya's row order of the stacked parts: the context modulation's halves (shift, scale)."""
    if not order:
        return None
    half = parts[0].out_features // 2
    return torch.cat([torch.arange(half, 2 * half), torch.arange(half)])


def _kohya_linear(parts, order) -> torch.nn.Linear:
    """kohya's Linear of the (plain) parts: their weights and biases stacked, in kohya's row order."""
    fused = torch.nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    rows = _kohya_rows(parts, order)
    with torch.no_grad():
        weight, bias = torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts])
        fused.weight.copy_(weight if rows is None else weight[rows])
        fused.bias.copy_(bias if rows is None else bias[rows])
    return fused


_CLASSES = {"locon": LoConModule, "lokr": LokrModule, "loha": LohaModule}


@functools.cache
def _base_transformer() -> torch.nn.Module:
    """tiny-sd3's transformer (float), built once per test process: only read (its layers copied)."""
    from dbspec.runtime.tiny import build_pipeline

    return build_pipeline(BASE).transformer.float()


def _sd3_file(tmp: Path, algo: str, more: str = "", options: dict | None = None):
    """lycoris-lora's modules of `algo` (network_dim 2, alpha 1.5, every tensor random) on _layers' kohya
    Linears, saved as lycoris.kohya saves them: (tensors, the LOKR spec of its kind started from the file
    with kohya's strict=False, the other layers keeping their init)."""
    torch.manual_seed(5)
    tensors = {}
    for name, parts, order in _layers(_base_transformer()):
        module = _CLASSES[algo](name, _kohya_linear(parts, order), 1.0, 2, 1.5, **(options or {}))
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp / "prev.safetensors"
    save_file(tensors, str(file))
    init = f'fused_projections = true\ninit_weights = "{file}"\ninit_partial = true\n{more}'
    kind = "lora" if algo == "locon" else algo
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"').replace("fused_projections = true\n", init)
    return tensors, extra


def _theirs(algo: str, tensors, name: str, parts, order, options: dict | None = None):
    """lycoris-lora's module built at kohya's network_dim / network_alpha on the kohya Linear of `parts`'
    base layers, applied, then loaded from the file as lycoris.kohya's load_weights loads it."""
    base = _kohya_linear([p.base_layer for p in parts], order)
    theirs = _CLASSES[algo](name, base, 1.0, 2, 1.5, **(options or {}))
    theirs.apply_to()
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    theirs.load_state_dict(own, strict=False)
    return theirs


def _same_outputs(theirs, parts, order, name: str, changed: bool = True) -> None:
    base = [p.base_layer for p in parts]
    x = torch.randn(3, base[0].in_features)
    rows = _kohya_rows(base, order)
    with torch.no_grad():
        ours = torch.cat([p(x) for p in parts], dim=-1)
        before = torch.cat([b(x) for b in base], dim=-1)
        if rows is not None:
            ours, before = ours[:, rows], before[:, rows]
        if changed:
            assert not torch.allclose(ours, before, atol=1e-3), name
        torch.testing.assert_close(theirs.eval()(x), ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("algo", "dora"),
    [("locon", False), ("lokr", False), ("loha", False), ("locon", True), ("lokr", True), ("loha", True)],
)
def test_network_weights_load_as_lycoris_loads_them(tmp_path, algo, dora):
    """--network_weights with algo=locon / lokr / loha (network_dim 2, alpha 1.5): a file of lycoris-lora's
    LoConModules / LokrModules / LohaModules (every tensor random) on kohya's fused q/k/v Linears, the MLP's,
    the timestep embedder's and the last block's context modulation (kohya's (shift, scale) rows), loaded by
    dbspec (a LoCon's by runtime/flow_init.py, the factors by runtime/lycoris_init.py, the modulation's rows
    swapped back) and by LyCORIS's load_state_dict(strict=False) into modules built at kohya's network_dim /
    network_alpha after apply_to: the same outputs; with dora_wd (LyCORIS's weight_decompose) each
    module's random `dora_scale` too, its rows into the parts' magnitudes."""
    from tests.runtime.test_flow_init import _loaded

    options = {"weight_decompose": True} if dora else {}
    form = 'dora_form = "lycoris"\n' if algo == "locon" else ""  # the converter's LoCon dora_wd
    tensors, extra = _sd3_file(tmp_path, algo, "dora = true\n" + form if dora else "", options)
    if dora:
        assert "lora_unet_joint_blocks_0_x_block_attn_qkv.dora_scale" in tensors
    comps, count = _loaded(make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra))
    assert count == 5
    for name, parts, order in _layers(comps.unet.float().eval()):
        _same_outputs(_theirs(algo, tensors, name, parts, order, options), parts, order, name)


@pytest.mark.parametrize("cls", [LokrModule, LohaModule, LoConModule])
def test_network_weights_of_the_tucker_patch_convolution_load_as_lycoris(tmp_path, cls):
    """--network_weights with algo=lokr / loha / locon use_tucker=True preset=full: the patch convolution's
    module (lycoris-lora's, with `lokr_t2` / `hada_t1`, `hada_t2` / `lora_mid`, every tensor random) loaded
    by dbspec (runtime/lycoris_init.py; a LoCon's by runtime/flow_init.py) and by LyCORIS's
    load_state_dict(strict=False) into the module built at kohya's conv_dim / conv_alpha after apply_to: the
    same outputs."""
    from tests.runtime.test_flow_init import _loaded

    rank = 1 if cls is LokrModule else 2
    conv = _base_transformer().pos_embed.proj  # copied below
    torch.manual_seed(5)
    module = cls("lora_unet_x_embedder_proj", copy.deepcopy(conv), 1.0, rank, 1.0, use_tucker=True)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    tensors = {f"lora_unet_x_embedder_proj.{k}": v.contiguous() for k, v in module.state_dict().items()}
    assert any(k[-3:] in ("_t1", "_t2") or "lora_mid" in k for k in tensors)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    init = f'init_weights = "{tmp_path / "prev.safetensors"}"\ninit_partial = true\n'
    patch = TUCKER.replace("conv_rank = 1", f"conv_rank = {rank}") + init
    kind = {LokrModule: "lokr", LohaModule: "loha", LoConModule: "lora"}[cls]
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"').replace("fused_projections = true\n", patch)
    comps, count = _loaded(make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra))
    assert count == 1
    ours = comps.unet.float().eval().pos_embed.proj
    theirs = cls("x", copy.deepcopy(ours.base_layer), 1.0, rank, 1.0, use_tucker=True)
    theirs.apply_to()
    theirs.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items()}, strict=False)
    x = torch.randn(2, ours.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(ours(x), ours.base_layer(x), atol=1e-3)
        torch.testing.assert_close(theirs.eval()(x), ours(x), rtol=0, atol=1e-5)


def test_max_norm_of_a_fused_locon_is_lycoris_modules(tmp_path):
    """--scale_weight_norms with algo=locon on SD3 (max_norm_form "lycoris"): one norm and scalar per kohya
    Linear (a fused q/k/v's parts joined): what lycoris.kohya's apply_max_norm_regularization does to the
    LoConModules loaded from the same file (the context modulation's row order changes no norm)."""
    from types import SimpleNamespace

    from lycoris.kohya import LycorisNetworkKohya

    from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
    from tests.runtime.test_flow_init import _loaded

    tensors, extra = _sd3_file(tmp_path, "locon", 'max_norm = 1.0\nmax_norm_form = "lycoris"\n')
    plan = make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra)
    assert (plan.adapter.max_norm, plan.adapter.max_norm_form) == (1.0, "lycoris")
    comps, _ = _loaded(plan)
    layers = _layers(comps.unet.float().eval())
    theirs = {name: _theirs("locon", tensors, name, parts, order) for name, parts, order in layers}
    modules = [m for m in lycoris_norm_modules(comps.unet, [], plan.adapter.fused)]
    with torch.no_grad():
        file_norms = sorted(float(lycoris_update(m).norm()) for m in modules if _in_file(m, layers))
    limit = (file_norms[1] * file_norms[2]) ** 0.5  # some of the file's modules scaled, some not
    ours = [m for m in modules if _in_file(m, layers)]
    network = SimpleNamespace(unet_loras=list(theirs.values()), text_encoder_loras=[])
    expected = LycorisNetworkKohya.apply_max_norm_regularization(network, limit, "cpu")
    result = apply_max_norm(ours, limit)
    assert result[0] == int(expected[0]) == 3
    torch.testing.assert_close(torch.tensor(result[1:]), torch.tensor([float(v) for v in expected[1:]]))
    for name, parts, order in layers:
        _same_outputs(theirs[name], parts, order, name, changed=False)


def _in_file(module, layers) -> bool:
    """The norm module is one of _layers' (the file's) kohya Linears."""
    return any(module.layer is parts[0] for _, parts, _ in layers)


def test_full_export_is_what_lycoris_loads(tmp_path):
    """algo=full preset full-lin (convert/kohya/lycoris_flux.py `_full`): the parts' diff / diff_b stacked
    under kohya's names, the last context modulation's rows swapped; lycoris-lora's FullModule on each kohya
    Linear, made from the file, computes the trained layer."""
    from lycoris.modules.full import FullModule

    extra = '[adapter]\nkind = "full"\ndenoiser_targets = [' + ", ".join(f'"{t}"' for t in TARGETS)
    extra += ']\n\n[checkpoints]\nexports = ["kohya_lora"]\n'
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    transformer = result.components.unet.float().eval()
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    assert not any("to_q" in k for k in tensors)
    torch.manual_seed(0)
    for name, parts, order in _layers(transformer):
        fused = _kohya_linear([p.base_layer for p in parts], order)
        with torch.no_grad():
            theirs = FullModule.make_module_from_state_dict(
                name, fused, tensors[f"{name}.diff"], tensors[f"{name}.diff_b"]
            )
        theirs.apply_to()
        _same_outputs(theirs, parts, order, name)
