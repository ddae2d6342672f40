"""lycoris.kohya algo=tlora with flux_train_network.py / sd3_train_network.py
(convert/kohya/lycoris_flow_tlora.py; issue 12): on kohya's fused Linears (Flux's img_attn.qkv /
txt_attn.qkv and the single blocks' linear1, SD3's attn.qkv) lycoris-lora 4.1.3's TLoraModule starts from
ONE SVD of the stacked weight, so diffusers' parts share Q and λ (and the frozen Q0, λ0) and each keeps its
rows of P and P0 (runtime/lycoris_tlora.py fit_fused_tlora); SD3's last context modulation starts from the
SVD of kohya's (shift, scale) rows. Checked against TLoraModule on kohya's layer (the parts' base weights
stacked in kohya's row order): every module's start, its output on fixed inputs with moved parameters
(default and bypass forward), module_dropout's one draw per fused module; a tiny Flux run (module_dropout,
bypass) trains and resumes bit-exact and a tiny SD3 run trains, and their kohya_lora export, loaded into
TLoraModule on kohya's layer (its frozen start recomputed from the base weight, as LyCORIS's loader does),
computes the trained layers' output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lycoris.modules.tlora import TLoraModule
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.adapters import ADAPTER_NAME, add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.mixed_kinds import add_own_module_dropout
from dbspec.runtime.prepare import _tie_fused
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.lycoris_flow_kit import BASE as FLUX
from tests.runtime.lycoris_flow_kit import kohya_export, stacked_linear, unet_only_spec
from tests.runtime.runspec import make_plan, whole_and_resumed
from tests.runtime.test_lycoris_sd3 import BASE as SD3
from tests.runtime.test_lycoris_sd3 import TARGETS as SD3_TARGETS
from tests.runtime.test_lycoris_sd3 import _layers as sd3_layers

RANK, ALPHA = 4, 2.0
# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=tlora
# preset=unet-only module_dropout=0.3 bypass_mode=True` (tiny-flux)
_FIELDS = f'kind = "tlora"\nrank = {RANK}\nalpha = {ALPHA}\nfused_projections = true\n'
FLUX_SPEC = unet_only_spec(_FIELDS + "module_dropout = 0.3\nbypass = true\n")
# `--network_args algo=tlora preset=full-lin` on tiny-sd3 (its CLIP targets left out)
SD3_SPEC = (
    f"[adapter]\n{_FIELDS}denoiser_targets = ["
    + ", ".join(f'"{t}"' for t in SD3_TARGETS)
    + ']\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
)
# `--network_args algo=tlora preset=unet-only conv_dim=2`: the 2x2 patch convolution at rank 2 too
SD3_PATCH = SD3_SPEC.replace('"]\n\n[checkpoints]', '", "pos_embed.proj"]\n\n[checkpoints]').replace(
    "[checkpoints]",
    '[[adapter.blocks]]\npattern = "^pos_embed\\\\.proj$"\nrank = 2\nalpha = 2.0\n\n[checkpoints]',
)


def _flux_layers(transformer):
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    return [
        ("lora_unet_double_blocks_0_img_attn_qkv", (attn.to_q, attn.to_k, attn.to_v), None),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), None),
        (
            "lora_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
            None,
        ),
        ("lora_unet_double_blocks_0_img_mod_lin", (block.norm1.linear,), None),
    ]


def _swap(rows: torch.Tensor, swap) -> torch.Tensor:
    """kohya's (shift, scale) halves of rows where diffusers holds (scale, shift)."""
    if not swap:
        return rows
    first, second = rows.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _kohya_linear(parts, swap) -> nn.Linear:
    """kohya's Linear: the parts' base weights and biases stacked in its row order."""
    fused = stacked_linear(parts)
    with torch.no_grad():
        fused.weight.copy_(_swap(fused.weight, swap))
        fused.bias.copy_(_swap(fused.bias, swap))
    return fused


def _theirs(parts, swap, **kw) -> TLoraModule:
    module = TLoraModule("fused", _kohya_linear(parts, swap), 1.0, lora_dim=RANK, alpha=ALPHA, **kw)
    module.apply_to()
    return module


def _ours(parts, swap) -> dict[str, torch.Tensor]:
    """The parts' tensors as the one module on kohya's layer holds them (P's rows stacked)."""
    first = parts[0]
    return {
        "q_layer.weight": first.lora_tlora_q[ADAPTER_NAME],
        "lambda_layer": first.lora_tlora_lambda[ADAPTER_NAME],
        "p_layer.weight": _swap(torch.cat([p.lora_tlora_p[ADAPTER_NAME] for p in parts]), swap),
        "base_q": first.lora_tlora_base_q[ADAPTER_NAME],
        "base_lambda": first.lora_tlora_base_lambda[ADAPTER_NAME],
        "base_p": _swap(torch.cat([p.lora_tlora_base_p[ADAPTER_NAME] for p in parts]), swap),
    }


def _outputs(parts, swap, x) -> torch.Tensor:
    return _swap(torch.cat([p(x) for p in parts], dim=-1).T, swap).T


def _built(tmp_path, base: str, spec: str):
    """The plan's denoiser with its T-LoRA layers built as the run builds them (add_lora, then the fused
    layers fitted: runtime/prepare.py)."""
    plan = make_plan(tmp_path, base=base, steps=2, extra=spec)
    transformer = build_pipeline(base).transformer
    add_lora(transformer, plan.adapter, plan.adapter.denoiser_targets, seed=0, conv=True, component="unet")
    _tie_fused(transformer, plan.adapter)
    return plan, transformer


@pytest.mark.parametrize(
    ("base", "spec", "layers"), [(FLUX, FLUX_SPEC, _flux_layers), (SD3, SD3_SPEC, sd3_layers)]
)
def test_fused_tlora_starts_and_computes_as_lycoris_module_on_kohyas_layer(tmp_path, base, spec, layers):
    plan, transformer = _built(tmp_path, base, spec)
    assert plan.adapter.kind == "tlora" and len(plan.adapter.fused) == 3
    generator = torch.Generator().manual_seed(0)
    for name, parts, swap in layers(transformer):
        theirs = _theirs(parts, swap)
        ours = _ours(parts, swap)
        for key, value in ours.items():  # one SVD of kohya's stacked (or swapped) weight
            want = (
                theirs.get_parameter(key) if "." in key or key == "lambda_layer" else theirs.get_buffer(key)
            )
            torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=f"{name} {key}")
        for part in parts[1:]:  # Q and λ one Parameter for every part
            assert part.lora_tlora_q[ADAPTER_NAME] is parts[0].lora_tlora_q[ADAPTER_NAME]
            assert part.lora_tlora_lambda[ADAPTER_NAME] is parts[0].lora_tlora_lambda[ADAPTER_NAME]
        with torch.no_grad():  # moved parameters: the default and the bypass forward
            for key, param in (
                ("q_layer.weight", theirs.q_layer.weight),
                ("lambda_layer", theirs.lambda_layer),
            ):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
                ours[key].copy_(param)
            theirs.p_layer.weight.add_(torch.randn(theirs.p_layer.weight.shape, generator=generator) * 0.1)
            rows = _swap(theirs.p_layer.weight, swap).split([p.base_layer.out_features for p in parts])
            for part, own in zip(parts, rows):
                part.lora_tlora_p[ADAPTER_NAME].copy_(own)
            x = torch.randn(2, 3, parts[0].base_layer.in_features, generator=generator)
            for bypass in (False, True):
                theirs.bypass_mode = bypass
                for part in parts:
                    part.tlora_bypass = bypass
                want, got = theirs(x), _outputs(parts, swap, x)
                assert not torch.allclose(want, theirs.org_forward(x), atol=1e-5)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} bypass {bypass}")


DROPS = "module_dropout = 0.3\nbypass = true\ndropout = 0.4\n"


@pytest.mark.parametrize(
    ("base", "spec", "layers"),
    [
        (FLUX, unet_only_spec(_FIELDS + DROPS), _flux_layers),
        (
            SD3,
            SD3_SPEC.replace("fused_projections = true\n", "fused_projections = true\n" + DROPS),
            sd3_layers,
        ),
    ],
    ids=["flux", "sd3"],
)
def test_fused_tlora_draws_are_the_fused_modules(tmp_path, base, spec, layers):
    """module_dropout: one draw per fused module, which its parts share; bypass_mode's dropout: one torch
    dropout over the stacked output (kohya's rows: SD3's swapped modulation too), each part its rows."""
    plan, transformer = _built(tmp_path, base, spec)
    assert (plan.adapter.module_dropout, plan.adapter.bypass, plan.adapter.bypass_dropout) == (0.3, True, 0.4)
    add_own_module_dropout(transformer, plan.adapter.module_dropout, plan.adapter.fused)
    transformer.train()
    torch.manual_seed(0)
    for name, parts, swap in layers(transformer):
        theirs = _theirs(parts, swap, module_dropout=0.3, bypass_mode=True, dropout=0.4).train()
        with torch.no_grad():
            theirs.lambda_layer.mul_(1.5)
            parts[0].lora_tlora_lambda[ADAPTER_NAME].mul_(1.5)
        x = torch.randn(2, parts[0].base_layer.in_features)
        called = [parts[-1], *parts[:-1]] if name.endswith("linear1") else parts  # diffusers: proj_mlp first
        torch.manual_seed(7)
        with torch.no_grad():
            expected = [theirs(x) for _ in range(8)]
        after = torch.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            ours = [{id(p): p(x) for p in called} for _ in range(8)]
        assert torch.equal(after, torch.get_rng_state()), name  # the fused module's draws, not the parts'
        plain = theirs.org_forward(x)
        skipped = 0
        for outs, want in zip(ours, expected):
            got = _swap(torch.cat([outs[id(p)] for p in parts], dim=-1).T, swap).T
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
            skipped += torch.equal(got, plain)
        assert 0 < skipped < 8, name  # both kinds of forward compared
        theirs.eval()
        with torch.no_grad():
            undropped = theirs(x)
        assert not any(torch.allclose(undropped, want) for want in expected)  # the dropout masks


def _check_export(plan, result, layers) -> None:
    transformer = result.components.unet.float().eval()
    tensors, _ = kohya_export(plan, result)  # kohya's names only
    torch.manual_seed(0)
    for name, parts, swap in layers(transformer):
        own = {k.removeprefix(name + "."): v.float() for k, v in tensors.items() if k.startswith(name + ".")}
        assert sorted(own) == ["alpha", "lambda_layer", "p_layer.weight", "q_layer.weight"], name
        theirs = _theirs(parts, swap)  # its frozen start from the base weight, as LyCORIS's loader
        theirs.load_state_dict(own, strict=False)
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            trained = _outputs(parts, swap, x)
            plain = theirs.org_forward(x)
            got = theirs.eval()(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the module trained
        torch.testing.assert_close(got, trained, rtol=0, atol=1e-5, msg=name)


# the tiny runs: Flux with module_dropout, bypass_mode's dropout and --scale_weight_norms (resumed), SD3 plain
@pytest.mark.parametrize(
    ("base", "spec", "layers"),
    [
        (FLUX, unet_only_spec(_FIELDS + DROPS + "max_norm = 0.5\n"), _flux_layers),
        (SD3, SD3_PATCH, sd3_layers),
    ],
    ids=["flux", "sd3"],
)
def test_fused_tlora_trains_and_its_export_loads_in_lycoris(tmp_path, base, spec, layers):
    """Flux: resumed bit-exact too (the parts' shared Q, λ and frozen copies, the shared draws)."""
    if base == FLUX:
        plan, result = whole_and_resumed(tmp_path, base=base, steps=4, extra=spec)
    else:
        plan = make_plan(tmp_path, base=base, steps=2, extra=spec)
        result = execute(plan, keep_models=True)
        assert result.status == "finished"
    shared = [p for n, p in result.components.unet.named_parameters() if "lora_tlora_q" in n]
    assert shared and all(p.requires_grad for p in shared)
    _check_export(plan, result, layers)
    if base == SD3:
        _check_patch(plan, result)
    _check_start_file(tmp_path / "start", base, spec, plan, result, layers)


def _check_patch(plan, result) -> None:
    """The patch convolution's export (1x1 factors at rank 2) is what TLoraModule on it loads."""
    conv = result.components.unet.float().eval().pos_embed.proj
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    own = {
        k.split(".", 1)[1]: v.float()
        for k, v in tensors.items()
        if k.startswith("lora_unet_x_embedder_proj.")
    }
    assert (
        own["q_layer.weight"].shape == (2, conv.base_layer.in_channels, 1, 1) and float(own["alpha"]) == 2.0
    )
    import copy

    theirs = TLoraModule("patch", copy.deepcopy(conv.base_layer), 1.0, lora_dim=2, alpha=2.0)
    theirs.load_state_dict(own, strict=False)
    theirs.apply_to()
    x = torch.randn(2, conv.base_layer.in_channels, 8, 8)
    with torch.no_grad():
        trained = conv(x)
        assert not torch.allclose(trained, conv.base_layer(x), atol=1e-7)
        torch.testing.assert_close(theirs.eval()(x), trained, rtol=0, atol=1e-5)


def _check_start_file(tmp_path, base, spec, plan, result, layers) -> None:
    """--network_weights of the export (was DBS356 on Flux / SD3): LyCORIS's load_weights puts each fused
    module's Q and λ into the Parameters its parts share and P's rows into each part, the frozen start the
    base's one SVD; the started layers compute what the trained ones did."""
    from dbspec.runtime.init_weights import load_init_weights

    file = Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"
    started, transformer = _built(
        tmp_path,
        base,
        spec.replace("fused_projections = true\n", f'fused_projections = true\ninit_weights = "{file}"\n'),
    )
    assert started.adapter.init_weights == str(file)
    load_init_weights(started, transformer, [])
    trained = result.components.unet.float().eval()
    torch.manual_seed(0)
    for (name, parts, swap), (_, ours, _) in zip(layers(trained), layers(transformer.eval())):
        assert len(ours) == len(parts), name
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(_outputs(ours, swap, x), _outputs(parts, swap, x), rtol=0, atol=1e-5)
        for part in ours[1:]:
            assert part.lora_tlora_q[ADAPTER_NAME] is ours[0].lora_tlora_q[ADAPTER_NAME]


def test_fused_tlora_max_norm_is_lycoris_apply_max_norm(tmp_path):
    """--scale_weight_norms: TLoraModule.apply_max_norm on the fused Linear takes one norm of the stacked
    update (times the scale once more) and scales the singular values the parts share once."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    plan, transformer = _built(tmp_path, FLUX, FLUX_SPEC.replace("bypass = true\n", "max_norm = 0.05\n"))
    assert plan.adapter.max_norm == 0.05
    generator = torch.Generator().manual_seed(1)
    layers = _flux_layers(transformer)
    theirs = []
    with torch.no_grad():
        for _name, parts, _swap_rows in layers:
            for part in parts:
                p = part.lora_tlora_p[ADAPTER_NAME]
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
            lam = parts[0].lora_tlora_lambda[ADAPTER_NAME]
            lam.mul_(1 + torch.rand(lam.shape, generator=generator))
            module = _theirs(parts, None)
            for key, value in _ours(parts, None).items():
                (module.get_buffer(key) if key.startswith("base") else module.get_parameter(key)).copy_(value)
            theirs.append(module)
    modules = lycoris_norm_modules(transformer, [], plan.adapter.fused)
    assert len([m for m in modules if m.parts]) == 3  # one module per fused Linear
    scaled, mean, largest = apply_lycoris_max_norm(modules, 0.05)
    results = [module.apply_max_norm(0.05) for module in theirs]
    ours = {id(m.layer): m for m in modules}
    for (name, parts, _swap_rows), module in zip(layers, theirs):
        assert id(parts[0]) in ours, name
        torch.testing.assert_close(
            parts[0].lora_tlora_lambda[ADAPTER_NAME], module.lambda_layer, rtol=1e-6, atol=0, msg=name
        )
    assert all(bool(done) for done, _ in results) and scaled >= len(results)
    theirs_norms = [float(norm) for _, norm in results]
    assert max(theirs_norms) <= largest + 1e-6 and mean > 0


def test_tlora_on_a_patch_convolution_is_lycoris_module(tmp_path):
    """SD3's 2x2 stride-2 patch convolution (presets full / unet-only): TLoraModule starts Q from the first
    in-channel columns of its flattened weight's singular vectors (1x1 factors) and runs its bypass forward at
    the layer's stride in either mode (an output of the layer's size), its merge the 1x1 update at the
    kernel's first tap; equal in start, outputs (default and bypass_mode), merged weight and max norm."""
    from peft import inject_adapter_in_model

    from dbspec.runtime.lycoris_tlora import tlora_config
    from dbspec.runtime.max_norm import LycorisNormModule, apply_lycoris_max_norm

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 2, stride=2)
    theirs = TLoraModule("patch", copy_of(conv), 1.0, lora_dim=RANK, alpha=ALPHA)
    theirs.apply_to()
    holder = nn.Module()
    holder.proj = copy_of(conv)
    inject_adapter_in_model(tlora_config(["proj"], RANK, ALPHA), holder)
    ours = holder.proj
    names = {
        "q_layer.weight": "lora_tlora_q",
        "p_layer.weight": "lora_tlora_p",
        "lambda_layer": "lora_tlora_lambda",
    }
    for key, attr in names.items():
        torch.testing.assert_close(
            getattr(ours, attr)[ADAPTER_NAME], theirs.get_parameter(key), rtol=0, atol=1e-6
        )
    with torch.no_grad():
        for key, attr in names.items():
            param = theirs.get_parameter(key)
            param.add_(torch.randn(param.shape) * 0.1)
            getattr(ours, attr)[ADAPTER_NAME].copy_(param)
    x = torch.randn(2, 16, 8, 8)
    for bypass in (False, True):
        theirs.bypass_mode, ours.tlora_bypass = bypass, bypass
        with torch.no_grad():
            want, got = theirs(x), ours(x)
        assert want.shape == theirs.org_forward(x).shape and not torch.allclose(want, theirs.org_forward(x))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        merged = theirs.get_merged_weight()[0]
        torch.testing.assert_close(
            conv.weight + ours.get_delta_weight(ADAPTER_NAME), merged, rtol=0, atol=1e-6
        )
        done = apply_lycoris_max_norm([LycorisNormModule("patch", ours, "tlora")], 0.01)
        theirs.apply_max_norm(0.01)
    assert done[0] == 1
    torch.testing.assert_close(ours.lora_tlora_lambda[ADAPTER_NAME], theirs.lambda_layer, rtol=1e-6, atol=0)


def copy_of(conv: nn.Conv2d) -> nn.Conv2d:
    import copy

    return copy.deepcopy(conv)


# a LoCon network (lycoris.kohya algo=locon, module_dropout=0.2) whose preset file maps the first double
# block's image q/k/v to algo=tlora at dim 4 / alpha 2 (was DBS604 / DBS403)
MIXED = unet_only_spec(
    'kind = "lora"\nrank = 4\nalpha = 2.0\nfused_projections = true\nmodule_dropout = 0.2\n'
)
MIXED = MIXED.replace(
    "\n\n[checkpoints]",
    '\n\n[[adapter.blocks]]\npattern = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"\nkind = "tlora"\n'
    "rank = 4\nalpha = 2.0\n\n[checkpoints]",
)


def test_fused_tlora_block_beside_locon_trains_and_exports_as_lycoris(tmp_path):
    """T-LoRA layers beside a LoCon network's on tiny Flux: the fused image q/k/v one TLoraModule (one SVD
    of the stacked weight, its frozen start TLoraModule's on kohya's layer), one module_dropout draw per
    fused module, exported under kohya's fused name and loaded by TLoraModule there to the trained output."""
    plan = make_plan(tmp_path, base=FLUX, steps=2, extra=MIXED)
    assert [(b.kind, b.rank) for b in plan.adapter.blocks] == [("tlora", 4)] and len(plan.adapter.fused) == 3
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    transformer = result.components.unet.float().eval()
    attn = transformer.transformer_blocks[0].attn
    parts = (attn.to_q, attn.to_k, attn.to_v)
    fresh = _theirs(parts, None)
    for key, value in _ours(parts, None).items():
        if key.startswith("base"):  # the frozen start: one SVD of kohya's stacked weight
            torch.testing.assert_close(value, fresh.get_buffer(key), rtol=0, atol=1e-6)
    assert attn.to_k.lora_tlora_q[ADAPTER_NAME] is attn.to_q.lora_tlora_q[ADAPTER_NAME]
    assert type(attn.add_q_proj).__name__ != "TloraLayer"  # the text stream's q/k/v: LoCon
    tensors = load_file(str(Path(result.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    own = {k.removeprefix(name + "."): v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    assert sorted(own) == ["alpha", "lambda_layer", "p_layer.weight", "q_layer.weight"]
    assert "lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight" in tensors
    fresh.load_state_dict(own, strict=False)
    x = torch.randn(3, attn.to_q.base_layer.in_features)
    with torch.no_grad():
        trained = _outputs(parts, None, x)
        assert not torch.allclose(trained, fresh.org_forward(x), atol=1e-7)
        torch.testing.assert_close(fresh.eval()(x), trained, rtol=0, atol=1e-5)
    transformer.train()
    torch.manual_seed(3)
    with torch.no_grad():
        outs = [[p(x) for p in parts] for _ in range(8)]
    skipped = [[torch.equal(o, p.base_layer(x)) for o, p in zip(out, parts)] for out in outs]
    assert all(len(set(s)) == 1 for s in skipped) and 0 < sum(s[0] for s in skipped) < 8  # one draw
