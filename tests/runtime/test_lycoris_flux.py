"""LyCORIS's lycoris.kohya algo=lora / locon with flux_train_network.py (convert/kohya/lycoris_flux.py): the
spec it converts to (kohya's fused layers, one shared down each; preset attn-only: the double blocks'
attention) trains on tiny-flux, resumes bit-exact, and its kohya_lora export is what lycoris-lora's own
LoConModule, built on each fused Linear (the parts' base weights stacked, as kohya's Flux holds them) and
loaded from the file, computes: the trained parts' outputs, stacked. (A scratch run of lycoris-lora's
create_network_from_weights on kohya's library/flux_models.py Flux, with the tiny model's weights, reproduced
the trained transformer's output to 1.2e-7, presets full and attn-only.)"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.locon import LoConModule
from lycoris.modules.lokr import LokrModule
from safetensors.torch import load_file, save_file

from dbspec.families import family_spec
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_switches import layer_scalar
from dbspec.runtime.max_norm import lycoris_norm_modules, lycoris_update
from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan, whole_and_resumed

BASE = "builtin:tiny-flux"
# what the converter writes for `--network_args preset=attn-only` (algo=lora, network_dim 4, alpha 2)
ATTN_ONLY = (
    '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\ndenoiser_targets = ['
    '"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", '
    '"attn.add_v_proj", "attn.to_add_out"]\n\n[[adapter.blocks]]\npattern = "^proj_out$"\nrank = 0\n'
    "alpha = 1\n\n"
    '[[adapter.blocks]]\npattern = "^single_transformer_blocks\\\\."\nrank = 0\nalpha = 1\n'
)


def _plan(tmp: Path, steps: int):
    extra = ATTN_ONLY + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    return make_plan(tmp, base=BASE, steps=steps, extra=extra)


def _fused_locon(tensors, name: str, parts) -> LoConModule:
    """lycoris-lora's LoConModule on the fused Linear (kohya's Flux layer), loaded from the file (with its
    weight decomposition where the file holds a dora_scale)."""
    base = [p.base_layer for p in parts]
    fused = torch.nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    down = tensors[f"{name}.lora_down.weight"]
    wd = f"{name}.dora_scale" in tensors
    module = LoConModule(
        name, fused, 1.0, down.shape[0], tensors[f"{name}.alpha"].item(), weight_decompose=wd
    )
    module.load_state_dict(
        {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    module.apply_to()
    return module.eval()


def test_attn_only_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    plan = _plan(tmp_path / "whole", 4)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts = _plan(tmp_path / "parts", 4)
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    transformer = whole.components.unet.float().eval()
    ours = dict(transformer.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert names == {
        f"lora_unet_double_blocks_0_{s}_attn_{n}" for s in ("img", "txt") for n in ("qkv", "proj")
    }
    block = transformer.transformer_blocks[0].attn
    torch.manual_seed(0)
    x = torch.randn(3, block.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (block.to_q, block.to_k, block.to_v)),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (block.add_q_proj, block.add_k_proj, block.add_v_proj)),
        ("lora_unet_double_blocks_0_img_attn_proj", (block.to_out[0],)),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _fused_locon(tensors, name, layer_parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-6), name  # the LoRA trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)


# what the converter writes for `--network_args algo=lokr` (network_dim 2, alpha 1.5): the full preset's
# targets, the single blocks' proj_out by full path (tiny-flux has one single block)
_LOKR_TARGETS = [t for t in family_spec("flux").kohya_lora_targets if t != "proj_out"]
LOKR = (
    '[adapter]\nkind = "lokr"\nrank = 2\nalpha = 1.5\nfused_projections = true\ndenoiser_targets = ['
    + ", ".join(f'"{t}"' for t in [*_LOKR_TARGETS, "single_transformer_blocks.0.proj_out"])
    + "]\n"
)


def _fused_lokr_module(tensors, name: str, parts) -> LokrModule:
    """lycoris-lora's LokrModule on the fused Linear, loaded from the file (its factor shapes from it)."""
    base = [p.base_layer for p in parts]
    fused = torch.nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    rank = own["lokr_w2_a"].shape[1]
    module = LokrModule(name, fused, 1.0, rank, own["alpha"].item())
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def test_lokr_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    """Started from a LyCORIS file (--network_weights; the layers it lacks at their init), trained, resumed
    bit-exact; the export is what lycoris-lora's LokrModule loads."""
    extra = _factor_file(tmp_path, "lokr")[1] + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=extra)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    transformer = whole.components.unet
    single = transformer.single_transformer_blocks[0]
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    for part in linear1[1:]:  # one set of factors, the first part's
        assert part.lokr_w1["default"] is single.attn.to_q.lokr_w1["default"]

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert "lora_unet_single_blocks_0_linear1" in names and "lora_unet_double_blocks_0_img_attn_qkv" in names
    assert not any("to_q" in n or "proj_mlp" in n or "final_layer" in n for n in names)
    block = transformer.transformer_blocks[0].attn
    torch.manual_seed(0)
    x = torch.randn(3, block.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (block.to_q, block.to_k, block.to_v)),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (block.add_q_proj, block.add_k_proj, block.add_v_proj)),
        ("lora_unet_single_blocks_0_linear1", linear1),  # 112 rows over (8, 14): parts across w1 rows
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _fused_lokr_module(tensors, name, layer_parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the LoKr trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)

    # dbspec's own adapter folder (final/unet, peft's layout) loads back with the parts' factors tied again
    from dbspec.runtime.tiny import build_pipeline
    from dbspec.runtime.weights import load_peft_adapters

    fresh = build_pipeline(BASE).transformer.float().eval()
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, fused_lokr=plan.adapter) == ["unet"]
    again = fresh.single_transformer_blocks[0]
    assert again.proj_mlp.lokr_w1["default"] is again.attn.to_q.lokr_w1["default"]
    with torch.no_grad():
        for ours_part, loaded in zip(
            linear1, (again.attn.to_q, again.attn.to_k, again.attn.to_v, again.proj_mlp)
        ):
            torch.testing.assert_close(
                loaded(x[:, : loaded.base_layer.in_features]),
                ours_part(x[:, : ours_part.base_layer.in_features]),
                rtol=0,
                atol=1e-6,
            )


def _fused_loha_module(tensors, name: str, parts) -> LohaModule:
    """lycoris-lora's LohaModule on the fused Linear, loaded from the file."""
    base = [p.base_layer for p in parts]
    fused = torch.nn.Linear(base[0].in_features, sum(b.out_features for b in base))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([b.weight for b in base]))
        fused.bias.copy_(torch.cat([b.bias for b in base]))
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    module = LohaModule(name, fused, 1.0, own["hada_w1_b"].shape[0], own["alpha"].item())
    module.load_state_dict(own)
    module.apply_to()
    return module.eval()


def test_loha_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    extra = (
        LOKR.replace('kind = "lokr"', 'kind = "loha"')
        + '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    )
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=extra)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    transformer = whole.components.unet
    single = transformer.single_transformer_blocks[0]
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    for part in linear1[1:]:  # the input-side factors shared, the row factors each part's own
        assert part.hada_w1_b["default"] is single.attn.to_q.hada_w1_b["default"]
        assert part.hada_w1_a["default"] is not single.attn.to_q.hada_w1_a["default"]

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    assert tensors["lora_unet_single_blocks_0_linear1.hada_w1_a"].shape[0] == 112  # 16 x 3 + 64 rows
    block = transformer.transformer_blocks[0].attn
    torch.manual_seed(0)
    x = torch.randn(3, block.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (block.to_q, block.to_k, block.to_v)),
        ("lora_unet_single_blocks_0_linear1", linear1),
    ):
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in layer_parts], dim=-1)
            theirs = _fused_loha_module(tensors, name, layer_parts)(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the LoHa trained
        torch.testing.assert_close(theirs, trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "dropouts",
    [
        'rank_dropout = 0.3\nrank_dropout_form = "lycoris"\nmodule_dropout = 0.2\n',
        # bypass_mode: rank mask over the shared down, then `dropout` over the fused update
        'rank_dropout = 0.3\nrank_dropout_form = "lycoris_bypass"\nmodule_dropout = 0.2\n'
        "output_dropout = 0.25\n",
    ],
    ids=["rows", "bypass"],
)
def test_locon_dropouts_on_fused_layers_resume_bit_exact(tmp_path, dropouts):
    """LoConModule's module dropout and row-mask rank dropout (rank_dropout_form "lycoris"), or its bypass
    forward's rank mask and output dropout, drawn once per fused layer (runtime/fused_dropout.py), train and
    resume bit-exact."""
    extra = ATTN_ONLY.replace("fused_projections = true\n", "fused_projections = true\n" + dropouts)
    extra += "\n[checkpoints]\nevery = 2\n"
    whole = execute(make_plan(tmp_path / "whole", base=BASE, steps=4, extra=extra), keep_models=True)
    parts = make_plan(tmp_path / "parts", base=BASE, steps=4, extra=extra)
    a = parts.adapter
    assert f'"{a.rank_dropout_form}"' in dropouts and (a.output_dropout > 0) == ("output" in dropouts)
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True, keep_models=True)
    assert whole.status == second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name


def _double_block_layers(attn) -> dict[str, tuple]:
    """kohya's fused double-block attention Linears (kohya's names) -> their parts in dbspec's Flux."""
    return {
        "lora_unet_double_blocks_0_img_attn_qkv": (attn.to_q, attn.to_k, attn.to_v),
        "lora_unet_double_blocks_0_txt_attn_qkv": (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        "lora_unet_double_blocks_0_img_attn_proj": (attn.to_out[0],),
        "lora_unet_double_blocks_0_txt_attn_proj": (attn.to_add_out,),
    }


def _fused_linear(parts) -> torch.nn.Linear:
    """kohya's fused Linear: the parts' weights and biases stacked by rows."""
    fused = torch.nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


@functools.cache
def _base_transformer() -> torch.nn.Module:
    """tiny-flux's transformer (float), built once per test process: only read (its layers copied)."""
    from dbspec.runtime.tiny import build_pipeline

    return build_pipeline(BASE).transformer.float()


def _lycoris_file(tmp: Path, std: tuple[float, ...] = (0.1, 0.1, 0.1, 0.1)):
    """LoConModules (network_dim 4, network_alpha 2, rs_lora) on the tiny Flux's fused double-block
    attention Linears, their ups random (each its std), saved as lycoris.kohya saves them: (tensors, file)."""
    layers = _double_block_layers(_base_transformer().transformer_blocks[0].attn)
    torch.manual_seed(1)
    tensors = {}
    for (name, parts), deviation in zip(layers.items(), std):
        module = LoConModule(name, _fused_linear(parts), 1.0, 4, 2.0, rs_lora=True)
        torch.nn.init.normal_(module.lora_up.weight, std=deviation)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp / "prev.safetensors"
    save_file(tensors, str(file))
    return tensors, file


def _from_file(file: Path, more: str = "") -> str:
    """The attn-only spec at rs_lora's alpha (2 x sqrt(4)), started from `file` (kohya's load_weights)."""
    init = f'fused_projections = true\nalpha = 4\ninit_weights = "{file}"\ninit_partial = true\n{more}'
    return ATTN_ONLY.replace("alpha = 2\n", "", 1).replace("fused_projections = true\n", init)


def _their_locon(tensors, name: str, parts, rank_dropout: float = 0.0) -> LoConModule:
    """lycoris-lora's LoConModule built at kohya's network_dim / network_alpha on the fused Linear of
    `parts`' base layers, applied, then loaded from the file as lycoris.kohya's load_weights loads it."""
    base = _fused_linear([p.base_layer for p in parts])
    theirs = LoConModule(name, base, 1.0, 4, 2.0, rank_dropout=rank_dropout, rs_lora=True)
    theirs.apply_to()
    own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    theirs.load_state_dict(own, strict=False)
    return theirs


def test_network_weights_of_a_locon_load_as_lycoris_loads_them(tmp_path):
    """--network_weights with `algo=locon rs_lora=True`, network_dim 4, network_alpha 2 (the plan's alpha
    2 x sqrt(4)): a file of lycoris-lora's LoConModules on the fused Linears (their state_dict, random downs
    and ups), loaded by dbspec (runtime/flow_init.py: the shared down into the tied parts, each part its up
    rows) and by LyCORIS's load_state_dict(strict=False) into modules built at kohya's network_dim /
    network_alpha after apply_to: the same outputs."""
    from tests.runtime.test_flow_init import _loaded

    tensors, file = _lycoris_file(tmp_path)
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 4.0  # 2 x sqrt(4)
    comps, count = _loaded(make_plan(tmp_path / "run", base=BASE, steps=1, extra=_from_file(file)))
    assert count == 4
    ours = _double_block_layers(comps.unet.float().eval().transformer_blocks[0].attn)
    x = torch.randn(3, ours["lora_unet_double_blocks_0_img_attn_qkv"][0].in_features)
    for name, parts in ours.items():
        theirs = _their_locon(tensors, name, parts)
        with torch.no_grad():
            loaded = torch.cat([p(x) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
            assert not torch.allclose(loaded, plain, atol=1e-3), name  # the file's update is there
            torch.testing.assert_close(theirs.eval()(x), loaded, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_max_norm_of_a_fused_locon_is_lycoris_modules(tmp_path, rate):
    """--scale_weight_norms with lycoris.kohya on Flux (max_norm_form "lycoris"): one norm per fused Linear,
    of its whole update (the parts' rows stacked), and the parts' scalars each times the module's ratio:
    what lycoris.kohya's apply_max_norm_regularization does to LoConModules loaded from the same file. With
    rank_dropout (training mode) each fused module's make_weight draws one row mask over its stacked rows:
    the same draws from the same generator state."""
    from types import SimpleNamespace

    from lycoris.kohya import LycorisNetworkKohya

    from dbspec.runtime.max_norm import apply_max_norm
    from tests.runtime.test_flow_init import _loaded

    tensors, file = _lycoris_file(tmp_path, std=(0.3, 0.01, 0.2, 0.02))
    plan = make_plan(
        tmp_path / "run",
        base=BASE,
        steps=1,
        extra=_from_file(
            file,
            'max_norm = 1.0\nmax_norm_form = "lycoris"\n'
            + (f'rank_dropout = {rate}\nrank_dropout_form = "lycoris"\n' if rate else ""),
        ),
    )
    assert (plan.adapter.max_norm, plan.adapter.max_norm_form, plan.adapter.rank_dropout) == (
        1.0,
        "lycoris",
        rate,
    )
    comps, _ = _loaded(plan)
    modules = lycoris_norm_modules(comps.unet, comps.text_encoders, plan.adapter.fused, rate)
    assert [len(m.parts) for m in modules] == [3, 0, 3, 0]  # img qkv, img proj, txt qkv, txt proj
    ours = _double_block_layers(comps.unet.float().eval().transformer_blocks[0].attn)
    theirs = {name: _their_locon(tensors, name, parts, rate) for name, parts in ours.items()}
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    limit = (norms[1] * norms[2]) ** 0.5  # two modules scaled, two not (without the masks)
    # kohya's module order (its Flux's: img_attn.qkv, img_attn.proj, txt_attn.qkv, txt_attn.proj), dbspec's
    order = [f"lora_unet_double_blocks_0_{s}_attn_{p}" for s in ("img", "txt") for p in ("qkv", "proj")]
    assert [m.layer for m in modules] == [ours[name][0] for name in order]
    network = SimpleNamespace(unet_loras=[theirs[name] for name in order], text_encoder_loras=[])
    comps.unet.train()
    assert all(m.training for m in theirs.values())
    torch.manual_seed(7)
    expected = LycorisNetworkKohya.apply_max_norm_regularization(network, limit, "cpu")
    after = torch.get_rng_state()
    torch.manual_seed(7)
    result = apply_max_norm(modules, limit)
    assert torch.equal(torch.get_rng_state(), after)  # one draw per fused module, as LoConModule's
    assert result[0] == int(expected[0]) and (rate or result[0] == 2)
    torch.testing.assert_close(torch.tensor(result[1:]), torch.tensor([float(v) for v in expected[1:]]))
    comps.unet.eval()
    x = torch.randn(3, 16)
    for name, parts in ours.items():
        for part in parts:  # the module's one scalar, in each part
            torch.testing.assert_close(layer_scalar(part).detach(), theirs[name].scalar, rtol=1e-6, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(
                theirs[name].eval()(x), torch.cat([p(x) for p in parts], dim=-1), rtol=0, atol=1e-6
            )


def test_dora_scalar_and_max_norm_on_fused_layers_train_resume_and_export_as_lycoris(tmp_path):
    """dora_wd, use_scalar and LyCORIS's max norm on the fused layers (lycoris.kohya's LoConModule on each
    fused Linear): the parts share one trained scalar, which the max norm multiplies once per fused layer
    (logged as kohya logs it), and each part keeps its rows' magnitudes; the gradients (scalar, shared down,
    the magnitudes) are lycoris-lora's LoConModule's on the fused Linear holding the same values; the run
    resumes bit-exact and its export (the scalar folded into lora_up, the parts' dora_scale rows stacked)
    loads back in LyCORIS with the trained outputs."""
    switches = (
        'dora = true\ndora_form = "lycoris"\nscalar = true\nmax_norm = 1e-5\nmax_norm_form = "lycoris"\n'
    )
    extra = ATTN_ONLY.replace("fused_projections = true\n", "fused_projections = true\n" + switches)
    extra += '\n[checkpoints]\nevery = 1\nexports = ["kohya_lora"]\n\n[logging]\nevery = 1\n'
    whole = execute(make_plan(tmp_path / "whole", base=BASE, steps=2, extra=extra), keep_models=True)
    parts_plan = make_plan(tmp_path / "parts", base=BASE, steps=2, extra=extra)
    first = execute(parts_plan, stop_after=1)
    second = execute(parts_plan, resume=True, keep_models=True)
    assert whole.status == second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name
    rows = [json.loads(r) for r in next((tmp_path / "whole").rglob("metrics.jsonl")).read_text().splitlines()]
    assert [r["max_norm/keys_scaled"] for r in rows if "loss" in r] == [4, 4]  # the 4 fused-layer modules
    layers = _double_block_layers(whole.components.unet.float().eval().transformer_blocks[0].attn)
    qkv = layers["lora_unet_double_blocks_0_img_attn_qkv"]
    assert all(layer_scalar(p) is layer_scalar(qkv[0]) for p in qkv)  # one Parameter
    assert layer_scalar(qkv[0]).item() != 0.0  # trained from 0
    modules = lycoris_norm_modules(whole.components.unet, [], parts_plan.adapter.fused)
    with torch.no_grad():  # every fused layer's whole update (before the decomposition) held to the limit
        assert [float(lycoris_update(m).norm()) for m in modules] == pytest.approx([1e-5] * 4, rel=1e-4)
    tensors = load_file(str(Path(whole.final) / f"{parts_plan.checkpoints.name}.kohya.safetensors"))
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.dora_scale"].shape == (48, 1)  # the parts' rows
    x = torch.randn(3, 16)
    for name, parts in layers.items():
        with torch.no_grad():
            trained = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(_fused_locon(tensors, name, parts)(x), trained, rtol=0, atol=1e-5)
    # the gradients: LyCORIS's LoConModule(use_scalar, weight_decompose) on the fused Linear, same values
    fused = _fused_linear([p.base_layer for p in qkv])
    theirs = LoConModule("qkv", fused, 1.0, 4, 2.0, use_scalar=True, weight_decompose=True)
    with torch.no_grad():
        theirs.lora_down.weight.copy_(qkv[0].lora_A["default"].weight)
        theirs.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in qkv]))
        theirs.scalar.copy_(layer_scalar(qkv[0]))
        theirs.dora_scale.copy_(torch.cat([dora_scale_of(p, "default") for p in qkv]))
    theirs.apply_to()
    target = torch.randn(3, 48)
    whole.components.unet.zero_grad()
    torch.nn.functional.mse_loss(torch.cat([p(x) for p in qkv], dim=-1), target).backward()
    torch.nn.functional.mse_loss(theirs(x), target).backward()
    torch.testing.assert_close(layer_scalar(qkv[0]).grad, theirs.scalar.grad, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(qkv[0].lora_A["default"].weight.grad, theirs.lora_down.weight.grad)
    magnitudes = torch.cat([dora_scale_of(p, "default").grad for p in qkv])
    torch.testing.assert_close(magnitudes, theirs.dora_scale.grad)


def _factor_layers(model) -> dict[str, tuple]:
    """The tiny Flux's fused layers (double block 0's, single block 0's linear1) by kohya name -> parts."""
    single = model.single_transformer_blocks[0]
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    layers = _double_block_layers(model.transformer_blocks[0].attn)
    return {**layers, "lora_unet_single_blocks_0_linear1": linear1}


# LokrModule's rs_lora with both factors full (algo=lokr full_matrix=True rs_lora=True): sqrt(rank)
RS_FULL = {"full_matrix": True, "rs_lora": True}


def _factor_file(tmp: Path, kind: str, options: dict | None = None):
    """lycoris-lora's LokrModules / LohaModules (network_dim 2, alpha 1.5, `options`, every factor random)
    on the tiny Flux's fused layers, saved as lycoris.kohya saves them: (tensors, the LOKR spec of `kind`
    started from the file with kohya's strict=False, the single block's other layers keeping their init)."""
    cls = LokrModule if kind == "lokr" else LohaModule
    torch.manual_seed(3)
    tensors = {}
    for name, parts in _factor_layers(_base_transformer()).items():
        module = cls(name, _fused_linear(parts), 1.0, 2, 1.5, **(options or {}))
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp / "prev.safetensors"
    save_file(tensors, str(file))
    init = f'fused_projections = true\ninit_weights = "{file}"\ninit_partial = true\n'
    spec = LOKR.replace('kind = "lokr"', f'kind = "{kind}"').replace("fused_projections = true\n", init)
    if options:  # the converter's full_matrix and rs_lora (alpha x sqrt(rank): unused by full layers)
        spec = spec.replace("alpha = 1.5\n", "alpha = 1.5\nfull_matrix = true\nrank_stabilized = true\n")
    return tensors, spec


@pytest.mark.parametrize(("kind", "options"), [("lokr", None), ("loha", None), ("lokr", RS_FULL)])
def test_network_weights_of_lokr_and_loha_load_as_lycoris_loads_them(tmp_path, kind, options):
    """--network_weights with algo=lokr / loha: a file of lycoris-lora's LokrModules / LohaModules on the
    fused Linears (every factor random), loaded by dbspec (runtime/lycoris_init.py: a LoKr's factors into
    the ones its parts share, a LoHa's w1_b / w2_b shared and its w1_a / w2_a rows to each part) and by
    LyCORIS's load_state_dict into modules built at kohya's network_dim / network_alpha: the same
    outputs; LoKr's rs_lora with both factors full loads the factors as they are, at sqrt(rank)."""
    from tests.runtime.test_flow_init import _loaded

    cls = LokrModule if kind == "lokr" else LohaModule
    tensors, extra = _factor_file(tmp_path, kind, options)
    comps, count = _loaded(make_plan(tmp_path / "run", base=BASE, steps=1, extra=extra))
    assert count == 5
    x = torch.randn(3, 16)
    for name, parts in _factor_layers(comps.unet.float().eval()).items():
        theirs = cls(name, _fused_linear([p.base_layer for p in parts]), 1.0, 2, 1.5, **(options or {}))
        theirs.apply_to()
        own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        theirs.load_state_dict(own, strict=False)
        with torch.no_grad():
            loaded = torch.cat([p(x[:, : p.base_layer.in_features]) for p in parts], dim=-1)
            plain = torch.cat([p.base_layer(x[:, : p.base_layer.in_features]) for p in parts], dim=-1)
            assert not torch.allclose(loaded, plain, atol=1e-3), name
            torch.testing.assert_close(theirs.eval()(x), loaded, rtol=0, atol=1e-5)


def test_full_on_fused_layers_trains_resumes_bit_exact_and_lycoris_loads_the_export(tmp_path):
    """algo=full (convert/kohya/lycoris_flux.py `_full`): a trained copy per diffusers part, resumed
    bit-exact; the export stacks the parts' diff / diff_b under kohya's fused names, which lycoris-lora's
    FullModule on the fused Linear loads into the trained parts' outputs (a part not adapted: zero rows)."""
    from lycoris.modules.full import FullModule

    targets = '["attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", '
    targets += '"attn.add_v_proj"]'  # not proj_mlp: linear1's MLP rows are written as zero diffs
    extra = f'[adapter]\nkind = "full"\ndenoiser_targets = {targets}\n'
    extra += '\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=extra)
    transformer = whole.components.unet

    tensors = load_file(str(Path(whole.final) / f"{plan.checkpoints.name}.kohya.safetensors"))
    names = {k.split(".")[0] for k in tensors}
    assert "lora_unet_single_blocks_0_linear1" in names and "lora_unet_double_blocks_0_img_attn_qkv" in names
    assert not any("to_q" in n or "proj_mlp" in n for n in names)
    assert {k.split(".", 1)[1] for k in tensors} == {"diff", "diff_b"}
    mlp = transformer.single_transformer_blocks[0].proj_mlp
    assert not tensors["lora_unet_single_blocks_0_linear1.diff"][-mlp.out_features :].any()
    block, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0]
    torch.manual_seed(0)
    x = torch.randn(3, block.to_q.base_layer.in_features)
    for name, layer_parts in (
        ("lora_unet_double_blocks_0_img_attn_qkv", (block.to_q, block.to_k, block.to_v)),
        ("lora_unet_double_blocks_0_txt_attn_qkv", (block.add_q_proj, block.add_k_proj, block.add_v_proj)),
        (
            "lora_unet_single_blocks_0_linear1",
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        ),
    ):
        fused = _fused_linear([getattr(p, "base_layer", p) for p in layer_parts])
        assert tensors[f"{name}.diff"].shape == fused.weight.shape
        with torch.no_grad():
            trained = torch.cat([p(x) for p in layer_parts], dim=-1)
            plain = fused(x)
            theirs = FullModule.make_module_from_state_dict(
                name, fused, tensors[f"{name}.diff"], tensors[f"{name}.diff_b"]
            )
            theirs.apply_to()
            out = theirs.eval()(x)
        assert not torch.allclose(trained, plain, atol=1e-7), name  # the copies trained
        torch.testing.assert_close(out, trained, rtol=0, atol=1e-5)
