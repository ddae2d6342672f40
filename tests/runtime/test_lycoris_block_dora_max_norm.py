"""A block's own LyCORIS weight decomposition (a preset entry's `weight_decompose`) beside
`--scale_weight_norms` (issue 12; was DBS403, a spec's DBS583) on Flux's fused Linears and on Tucker layers,
and LoKr's / LoHa's `dropout` with their weight decomposition per input column.

lycoris-lora 4.1.3's LoConModule / LohaModule / LokrModule.apply_max_norm take the norm of the module's update
before its decomposition (make_weight x scale, get_weight x scalar, the Kronecker product with its Tucker
core), decomposed or not, and scale the scalar (LoCon, LoHa) or every factor by ratio ** (1 / n) (LoKr, the
Tucker core counted); `dora_scale` is never touched. dbspec's runtime/max_norm.py takes each layer's update
the same way (a decomposed layer's through lycoris_dora.LycorisDora._update, a fused Linear's parts as one
module). Checked on fixed inputs: a Tucker k x k convolution decomposed by its block (and the Tucker form of
its own) against the LyCORIS module with the same factors and magnitude (the norm, the scaled flag, the
output after); the tiny Flux with entries of LoCon, LoKr and LoHa deciding their own weight_decompose per
output row and per input column against lycoris-lora's create_network from the same preset file (count, mean
and largest norm, every tensor after the step, each fused Linear's output). No new state is saved (the fixed
scalars are the max-norm runs' own: tests/runtime/test_lycoris_mixed_max_norm.py resumes them), so no tiny
run here.

LokrModule / LohaModule read `dropout` in their bypass forward only (`self.drop`); their rebuilt-weight
forward, which weight_decompose takes (bypass with it is DBS402), never reads it: the converter ignores it
(DBS405). `test_column_dora_lokr_and_loha_never_read_dropout` holds lycoris-lora to that."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_switches import layer_scalar
from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime import test_lycoris_switches as switches

pytest.importorskip("lycoris.kohya")

# (adapter kind, adapter tucker, adapter dora, block kind, block tucker, block dora) on the k x k convolution
TUCKER_NORMS = [
    ("lora", True, False, "lora", "adapter", "on"),  # the network's use_tucker, the entry's weight_decompose
    ("lora", False, False, "lora", "on", "on"),  # both the entry's
    ("lora", False, False, "lora", "on", "adapter"),  # the entry's use_tucker alone (was DBS579)
    ("loha", True, False, "loha", "adapter", "on"),
    ("lokr", False, False, "loha", "on", "on"),  # a LoHa entry of a LoKr network
    ("lokr", True, False, "lokr", "adapter", "on"),  # LoKr's Tucker core among the factors scaled
    ("lora", True, True, "lora", "adapter", "off"),  # a dora_wd network's entry without
]


@pytest.mark.parametrize("case", TUCKER_NORMS, ids=lambda c: "-".join(map(str, c)))
def test_tucker_layers_max_norm_equals_lycoris_modules(case):
    adapter_kind, adapter_tucker, adapter_dora, block_kind, block_tucker, block_dora = case
    rank, alpha = switches.RANK, switches.ALPHA
    for axis in ("output", "input"):
        torch.manual_seed(0)
        net = switches.Net()
        base = copy.deepcopy(net)
        block = BlockPlan(
            pattern="conv", kind="adapter" if block_kind == adapter_kind else block_kind, rank=rank,
            alpha=alpha, conv_rank=rank, conv_alpha=alpha, tucker=block_tucker, dora=block_dora,
        )  # fmt: skip
        adapter = AdapterPlan(
            kind=adapter_kind, rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha,
            conv_targets=("conv",), lokr_unit_scale=adapter_kind == "lokr", dora=adapter_dora,
            dora_form="lycoris", dora_axis=axis, tucker=adapter_tucker, blocks=(block,), max_norm=1.0,
            max_norm_form="lycoris",
        )  # fmt: skip
        add_lora(net, adapter, ("proj",), seed=3, conv=True)
        layer, generator = net.conv, torch.Generator().manual_seed(11)
        switches._randomise(net, generator)
        scalar = layer_scalar(layer)
        decomposed = block_dora == "on" or (block_dora == "adapter" and adapter_dora)
        with torch.no_grad():
            if scalar is not None:  # max norm's fixed scalar (LoCon, LoHa) starts at 1, as LyCORIS's buffer
                scalar.fill_(1.0)
            scale = dora_scale_of(layer, "default")
            assert (scale is not None) == decomposed
            if decomposed:  # the magnitudes away from the base norms
                scale.mul_(1 + 0.2 * torch.rand(scale.shape, generator=generator))
        tucker = block_tucker == "on" or (block_tucker == "adapter" and adapter_tucker)
        theirs = switches._lycoris(
            block_kind, "conv", copy.deepcopy(base.conv), use_tucker=tucker, weight_decompose=decomposed,
            wd_on_out=axis == "output",
        )  # fmt: skip
        assert set(theirs.state_dict()) & {"lora_mid.weight", "hada_t1", "lokr_t2"}  # LyCORIS's Tucker form
        switches._copy_into(theirs, layer, scalar=False)
        if decomposed:
            with torch.no_grad():
                theirs.dora_scale.copy_(scale)
        theirs.apply_to()
        (module,) = [m for m in lycoris_norm_modules(net, []) if m.layer is layer]
        with torch.no_grad():
            limit = float(lycoris_update(module).norm()) / 3
        ours = apply_max_norm([module], limit)
        scaled, norm = theirs.train().apply_max_norm(limit, "cpu")
        assert ours[0] == int(scaled) == 1
        torch.testing.assert_close(torch.tensor(ours[1:]), torch.tensor([float(norm)] * 2), rtol=1e-6, atol=0)
        if decomposed:  # the magnitude untouched
            torch.testing.assert_close(theirs.dora_scale, scale, rtol=0, atol=0)
        x = switches._inputs(generator)["conv"]
        with torch.no_grad():
            out, want = layer.eval()(x), theirs.eval()(x)
        assert not torch.allclose(out, base.conv(x), atol=1e-3)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_flux_entries_own_dora_max_norm_equals_lycoris_network(tmp_path, monkeypatch, axis):
    """A LoCon network whose LoCon (text q/k/v), LoKr (linear1) and LoHa (image q/k/v) entries decompose
    their fused Linears by their own weight_decompose (and wd_on_out = false: the parts sharing one (1, in)
    magnitude), the image out projection's LoCon not, with --scale_weight_norms: lycoris-lora 4.1.3's
    create_network from the same file on kohya's fused Linears, loaded with the export, scales the same
    modules by the same norms, every tensor after the step equal, each fused Linear's output too."""
    from safetensors.torch import load_file

    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from dbspec.runtime.exports import exports_for_plan
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models
    from tests.runtime.test_lycoris_flux_block_columns import _DECOMPOSED, COLUMNS_FILE
    from tests.runtime.test_lycoris_mixed_flow_dylora import _converted, _their_network
    from tests.runtime.test_lycoris_mixed_flow_full import (
        _BASE,
        _check_kohya_outputs,
        _kohya_layers,
        _kohya_tree,
    )

    own = "weight_decompose = true\n" + ("wd_on_out = false\n" if axis == "input" else "")
    file = tmp_path / "own.toml"
    file.write_text(re.sub(r"(\[name_algo_map[^\n]*\n)", rf"\1{own}", COLUMNS_FILE), encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, "locon", base, args="--scale_weight_norms=1.0")
    a = plan.adapter
    assert (a.kind, a.dora, a.dora_form, a.max_norm, a.max_norm_form) == (
        "lora",
        False,
        "lycoris",
        1.0,
        "lycoris",
    )
    assert a.fused and {(b.kind, b.dora, b.dora_axis) for b in a.blocks if b.rank} == {
        (kind, "on", "input" if axis == "input" else "adapter") for kind in ("adapter", "lokr", "loha")
    }
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    unet = comps.unet.float()
    torch.manual_seed(1)
    with torch.no_grad():  # factors and magnitudes moved; max norm's fixed scalars stay at 1
        for name, p in unet.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.2 * torch.rand_like(p)) if "dora_scale" in name else p.normal_(std=0.2)
    unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    shape = {"input": (1, 16), "output": None}[axis]
    for path in _DECOMPOSED:
        scale = dora_scale_of(layers[path][0][0], "default")
        assert scale is not None and (shape is None or scale.shape == shape), path
    assert dora_scale_of(layers["double_blocks.0.img_attn.proj"][0][0], "default") is None
    (folder := tmp_path / "export").mkdir()
    tensors = load_file(str(exports_for_plan(plan, folder, comps)[0]))
    tree = _kohya_tree(layers)
    options = {"wd_on_output": "False"} if axis == "input" else {}
    theirs, made = _their_network(monkeypatch, "locon", file, [nn.Module()], tree, **options)
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == {"lora_unet_" + p.replace(".", "_") for p in _DECOMPOSED}
    missing, unexpected = made.load_state_dict(tensors, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith(".scalar")]
    modules = lycoris_norm_modules(unet, [], a.fused)
    assert len(modules) == len(theirs) == 4  # each fused Linear one module
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    unet.train()
    made.train()
    # two modules above the first limit, then every one (the LoKr's factors, the LoCon's and LoHa's scalars)
    for limit, count in (((norms[1] + norms[2]) / 2, 2), (norms[0] / 2, 4)):
        ours = apply_max_norm(modules, limit)
        reference = made.apply_max_norm_regularization(limit, "cpu")
        assert ours[0] == int(reference[0]) == count
        torch.testing.assert_close(
            torch.tensor(ours[1:]),
            torch.tensor([float(reference[1]), float(reference[2])]),
            rtol=1e-6,
            atol=0,
        )
    unet.eval()
    made.eval()
    (again := tmp_path / "after").mkdir()
    after = load_file(str(exports_for_plan(plan, again, comps)[0]))
    state = made.state_dict()  # LyCORIS's custom_state_dict: the scalars folded into lora_up / hada_w1_a
    moved = 0
    for key, value in after.items():
        torch.testing.assert_close(value, state[key].to(value.dtype), rtol=1e-5, atol=1e-7, msg=key)
        moved += not torch.equal(value, tensors[key])
    assert moved >= 4 and all(torch.equal(after[k], tensors[k]) for k in after if k.endswith("dora_scale"))
    _check_kohya_outputs(tree, layers, set(theirs))


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_column_dora_lokr_and_loha_never_read_dropout(algo):
    """LokrModule / LohaModule with weight_decompose per input column (wd_on_out=False) and dropout 0.5, in
    training, outside bypass_mode: the same outputs, gradients and torch generator state as the same module
    without the dropout (its rebuilt-weight forward never reads `self.drop`), where the bypass forward of
    the undecomposed module drops; so kohya's `dropout` / --network_dropout changes nothing there."""
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    cls = LokrModule if algo == "lokr" else LohaModule
    extra = {"factor": -1} if algo == "lokr" else {}
    outputs = []
    for dropout, bypass in ((0.5, False), (0.0, False), (0.5, True)):
        torch.manual_seed(0)
        base = nn.Linear(64, 48)
        module = cls(
            "m", base, 1.0, lora_dim=4, alpha=2.0, dropout=dropout, weight_decompose=not bypass,
            wd_on_out=False, bypass_mode=bypass, **extra,
        )  # fmt: skip
        module.apply_to()
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name != "dora_scale" and not name.startswith("org_"):
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        x = torch.randn(5, 64, generator=generator)
        torch.manual_seed(9)
        out = module.train()(x)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        outputs.append((out.detach(), grads, torch.get_rng_state()))
    (out, grads, state), (plain, plain_grads, plain_state), (dropped, _, dropped_state) = outputs
    assert torch.equal(out, plain) and torch.equal(state, plain_state)
    assert grads.keys() == plain_grads.keys() and "dora_scale" in grads
    assert all(torch.equal(grads[k], plain_grads[k]) for k in grads)
    assert not torch.equal(dropped_state, plain_state)  # bypass_mode's dropout draws (and drops)
