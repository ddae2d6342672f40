"""LyCORIS's max-norm regularisation (adapter.max_norm with max_norm_form = "lycoris", runtime/max_norm.py)
against lycoris-lora's own: the same random factors copied into LyCORIS's LoConModule, LohaModule and
LokrModule, whose `apply_max_norm` lycoris.kohya's network calls (its `apply_max_norm_regularization` run
here on those modules, for what it returns), then the scaled layers compared with the scaled modules: the
scalar (LoCon, LoHa), the factors (LoKr), the forward, and the logged count, mean and largest norm."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_switches import layer_scalar
from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime import test_lycoris_switches as switches
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)
from tests.runtime.runspec import compile_spec, write_spec

pytest.importorskip("lycoris.modules")
LycorisNetworkKohya = pytest.importorskip("lycoris.kohya").LycorisNetworkKohya

CASES = [
    ("lora", {}),
    ("lora", {"tucker": True}),
    ("lora", {"scalar": True}),
    ("loha", {}),
    ("loha", {"tucker": True}),
    ("loha", {"scalar": True}),
    ("lokr", {}),
    ("lokr", {"tucker": True}),
    ("lokr", {"decompose_both": True}),
    ("lokr", {"full_matrix": True}),
    ("lokr", {"scalar": True}),
    # LyCORIS's weight decomposition (dora_wd): the norm of the update before it, the scalar or factors scaled
    ("lora", {"dora": True, "dora_form": "lycoris"}),
    ("lora", {"dora": True, "dora_form": "lycoris", "dora_axis": "input", "tucker": True}),
    ("loha", {"dora": True, "dora_form": "lycoris"}),
    ("loha", {"dora": True, "dora_form": "lycoris", "scalar": True}),
    ("lokr", {"dora": True, "dora_form": "lycoris"}),
    ("lokr", {"dora": True, "dora_form": "lycoris", "scalar": True}),
]


def _pair(kind: str, extra: dict, limit: float, seed: int = 11, rank_dropout: float = 0.0):
    """(dbspec's adapted Net, LyCORIS's modules holding the same values, in the Net's layer order).
    `rank_dropout_scale` in `extra`: both layers' (a LyCORIS map entry's, runtime/blocks.py sets it)."""
    rescale = extra.get("rank_dropout_scale", False)
    extra = {k: v for k, v in extra.items() if k != "rank_dropout_scale"}
    more = {"rank_dropout": rank_dropout} if rank_dropout else {}
    net, base = switches._adapted(kind, max_norm=limit, max_norm_form="lycoris", **extra, **more)
    switches._randomise(net, torch.Generator().manual_seed(seed))
    theirs = {"use_scalar": extra.get("scalar", False), "use_tucker": extra.get("tucker", False), **more}
    if rescale:
        theirs["rank_dropout_scale"] = True
        for name in ("proj", "conv"):
            getattr(net, name).dbspec_rank_dropout_scale = True
    if extra.get("dora"):
        theirs.update(weight_decompose=True, wd_on_out=extra.get("dora_axis", "output") == "output")
    if kind == "lokr":
        theirs.update(
            full_matrix=extra.get("full_matrix", False), decompose_both=extra.get("decompose_both", False)
        )
    lycos = []
    for name in ("proj", "conv"):
        reference = copy.deepcopy(getattr(base, name))
        lyco = switches._lycoris(kind, name, reference, **theirs)
        switches._copy_into(lyco, getattr(net, name), scalar=layer_scalar(getattr(net, name)) is not None)
        if extra.get("dora"):
            with torch.no_grad():
                lyco.dora_scale.copy_(dora_scale_of(getattr(net, name), "default"))
        lyco.apply_to()
        lycos.append((name, lyco, reference))
    return net, lycos


def _theirs(lycos, limit: float):
    """lycoris.kohya's apply_max_norm_regularization over the modules (their own code)."""
    network = types.SimpleNamespace(unet_loras=[lyco for _, lyco, _ in lycos], text_encoder_loras=[])
    scaled, mean, largest = LycorisNetworkKohya.apply_max_norm_regularization(network, limit, "cpu")
    return int(scaled), float(mean), float(largest)


@pytest.mark.parametrize("kind, extra", CASES)
def test_max_norm_equals_lycoris_modules(kind, extra):
    net, _ = switches._adapted(kind, max_norm=1.0, max_norm_form="lycoris", **extra)
    switches._randomise(net, torch.Generator().manual_seed(11))
    norms = [float(lycoris_update(m).detach().norm()) for m in lycoris_norm_modules(net, [])]
    assert len(norms) == 2 and abs(norms[0] - norms[1]) > 0.05 * max(norms), norms
    limit = (norms[0] * norms[1]) ** 0.5  # the larger layer is scaled, the smaller not
    net, lycos = _pair(kind, extra, limit)
    modules = lycoris_norm_modules(net, [])
    ours = apply_max_norm(modules, limit)
    theirs = _theirs(lycos, limit)
    assert ours[0] == theirs[0] == 1
    torch.testing.assert_close(torch.tensor(ours[1:]), torch.tensor(theirs[1:]), rtol=1e-6, atol=1e-6)
    assert ours[2] == pytest.approx(limit, rel=1e-5)  # the scaled layer's norm is the limit now
    x = switches._inputs(torch.Generator().manual_seed(5))
    for name, lyco, reference in lycos:
        layer = getattr(net, name)
        if kind == "lokr":  # the factors each times the n-th root of the ratio
            for key in lyco.state_dict():
                if key.startswith("lokr_"):
                    torch.testing.assert_close(
                        switches._ours(layer, key), getattr(lyco, key), rtol=1e-6, atol=1e-7
                    )
        else:  # the scalar times the ratio
            torch.testing.assert_close(
                layer_scalar(layer).detach(), lyco.scalar.detach(), rtol=1e-6, atol=1e-7
            )
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-5)
    scalars = [layer_scalar(getattr(net, n)) for n in ("proj", "conv")]
    if kind != "lokr" and not extra.get("scalar"):  # the fixed scalar: one moved, neither trains
        assert sorted(float(s) == 1.0 for s in scalars) == [False, True]
        assert not any(s.requires_grad for s in scalars)


@pytest.mark.parametrize("kind, extra", [("lora", {}), ("loha", {}), ("lokr", {})])
def test_nothing_scaled_logs_zeros_as_lycoris(kind, extra):
    """No layer above the limit: nothing changes and LyCORIS's 0, 0, 0 is what is returned."""
    net, lycos = _pair(kind, extra, 1e6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert apply_max_norm(lycoris_norm_modules(net, []), 1e6) == (0, 0.0, 0.0) == _theirs(lycos, 1e6)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


# LoCon, LoHa and LoKr with rank_dropout: LyCORIS's make_weight / get_weight draws the mask inside the norm
# in training mode
DROPOUT_CASES = [
    ("lora", {}),
    ("lora", {"tucker": True}),
    ("lora", {"scalar": True}),
    ("lora", {"rank_dropout_scale": True}),
    ("lora", {"dora": True, "dora_form": "lycoris"}),
    ("loha", {}),
    ("loha", {"tucker": True}),
    ("loha", {"scalar": True}),
    ("loha", {"dora": True, "dora_form": "lycoris"}),
    ("lokr", {}),
    ("lokr", {"tucker": True}),
    ("lokr", {"decompose_both": True}),
    ("lokr", {"scalar": True}),
    ("lokr", {"dora": True, "dora_form": "lycoris"}),
]


@pytest.mark.parametrize("kind, extra", DROPOUT_CASES)
def test_max_norm_with_rank_dropout_draws_lycoris_mask(kind, extra):
    """In training mode both draw one torch.rand(out) per module from torch's global CPU generator inside
    the norm (LoCon's on the weights' device, here the CPU): from the same generator state, the same masks,
    numbers, scalars / factors and forward (eval). A lora adapter's rate reaches its LoCon modules from the
    plan (peft's LoRA layer holds none)."""
    locon = 0.5 if kind == "lora" else 0.0
    net, _ = _pair(kind, extra, 1.0, rank_dropout=0.5)
    modules = lycoris_norm_modules(net, [], locon_rank_dropout=locon)
    torch.manual_seed(7)
    norms = [float(lycoris_update(m).detach().norm()) for m in modules]
    whole = [float(lycoris_update(m).detach().norm()) for m in lycoris_norm_modules(net.eval(), [])]
    if not extra.get("rank_dropout_scale"):  # rescaled, the kept rows grow
        assert all(a < b for a, b in zip(norms, whole, strict=True)), (norms, whole)  # rows were dropped
    assert all(abs(a - b) > 1e-3 * b for a, b in zip(norms, whole, strict=True)), (norms, whole)
    limit = (norms[0] * norms[1]) ** 0.5
    net, lycos = _pair(kind, extra, limit, rank_dropout=0.5)
    assert net.training and all(lyco.training for _, lyco, _ in lycos)
    torch.manual_seed(7)
    ours = apply_max_norm(lycoris_norm_modules(net, [], locon_rank_dropout=locon), limit)
    after_ours = torch.get_rng_state()
    torch.manual_seed(7)
    theirs = _theirs(lycos, limit)
    assert torch.equal(after_ours, torch.get_rng_state())  # as many draws
    assert ours[0] == theirs[0] == 1
    torch.testing.assert_close(torch.tensor(ours[1:]), torch.tensor(theirs[1:]), rtol=1e-6, atol=1e-6)
    x = switches._inputs(torch.Generator().manual_seed(5))
    net.eval()
    for name, lyco, reference in lycos:
        layer = getattr(net, name)
        lyco.eval()
        if kind == "lokr":
            for key in lyco.state_dict():
                if key.startswith("lokr_"):
                    torch.testing.assert_close(
                        switches._ours(layer, key), getattr(lyco, key), rtol=1e-6, atol=1e-7
                    )
        else:
            torch.testing.assert_close(
                layer_scalar(layer).detach(), lyco.scalar.detach(), rtol=1e-6, atol=1e-7
            )
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-5)


# Diag-OFT and BOFT (DiagOFTModule, ButterflyOFTModule): their apply_max_norm scales the trained blocks
OFT_CASES = [
    ("diag-oft", 0.0, False),
    ("diag-oft", 1e-3, True),
    ("boft", 0.0, False),
    ("boft", 1e-3, True),
]


def _oft_pair(kind: str, constraint: float, rescaled: bool, limit: float):
    """(dbspec's adapted Net, [(name, LyCORIS's module holding the same blocks and rescale, its layer)])."""
    from lycoris.modules.boft import ButterflyOFTModule
    from lycoris.modules.diag_oft import DiagOFTModule

    from dbspec.plan.model import AdapterPlan
    from dbspec.runtime.adapters import add_lora
    from tests.runtime import test_lycoris_boft as boft_runs

    torch.manual_seed(0)
    net = boft_runs.Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind=kind,
        conv_targets=("conv",),
        oft_block_size=4,
        oft_constraint=constraint,
        oft_rescaled=rescaled,
        max_norm=limit,
        max_norm_form="lycoris",
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    boft_runs._randomise(net, torch.Generator().manual_seed(2))
    module = DiagOFTModule if kind == "diag-oft" else ButterflyOFTModule
    lycos = []
    for name in ("proj", "conv"):
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        lyco = module(name, reference, 1.0, lora_dim=4, constraint=constraint, rescaled=rescaled)
        with torch.no_grad():
            lyco.oft_blocks.copy_(layer.lora_oft_blocks["default"])
            if rescaled:
                lyco.rescale.copy_(layer.lora_oft_rescale["default"])
        lyco.apply_to()
        lycos.append((name, lyco, reference))
    return net, lycos


@pytest.mark.parametrize("kind, constraint, rescaled", OFT_CASES)
def test_oft_max_norm_equals_lycoris_modules(kind, constraint, rescaled):
    """The norm of the blocks themselves, the larger layer's blocks times limit / norm: LyCORIS's numbers,
    blocks and forward after lycoris.kohya's apply_max_norm_regularization over its modules."""
    net, _ = _oft_pair(kind, constraint, rescaled, 1.0)
    modules = lycoris_norm_modules(net, [])
    assert [m.kind for m in modules] == ["oft", "oft"]
    norms = [float(lycoris_update(m).detach().norm()) for m in modules]
    assert abs(norms[0] - norms[1]) > 0.05 * max(norms), norms
    limit = (norms[0] * norms[1]) ** 0.5  # the larger layer is scaled, the smaller not
    net, lycos = _oft_pair(kind, constraint, rescaled, limit)
    before = {n: getattr(net, n).lora_oft_blocks["default"].detach().clone() for n in ("proj", "conv")}
    ours = apply_max_norm(lycoris_norm_modules(net, []), limit)
    theirs = _theirs(lycos, limit)
    assert ours[0] == theirs[0] == 1
    torch.testing.assert_close(torch.tensor(ours[1:]), torch.tensor(theirs[1:]), rtol=1e-6, atol=1e-6)
    assert ours[2] == pytest.approx(limit, rel=1e-5)
    x = boft_inputs(torch.Generator().manual_seed(5))
    moved = 0
    for name, lyco, reference in lycos:
        layer = getattr(net, name)
        blocks = layer.lora_oft_blocks["default"]
        torch.testing.assert_close(blocks.detach(), lyco.oft_blocks.detach(), rtol=1e-6, atol=1e-7)
        moved += not torch.equal(blocks.detach(), before[name])
        if rescaled:  # the rescale is not scaled
            assert torch.equal(layer.lora_oft_rescale["default"], lyco.rescale)
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-5)
    assert moved == 1


def test_oft_nothing_scaled_logs_zeros_as_lycoris():
    net, lycos = _oft_pair("boft", 0.0, False, 1e6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert apply_max_norm(lycoris_norm_modules(net, []), 1e6) == (0, 0.0, 0.0) == _theirs(lycos, 1e6)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def boft_inputs(generator):
    from tests.runtime import test_lycoris_boft as boft_runs

    return boft_runs._inputs(generator)


def test_lycoris_diag_oft_bypass_with_a_dropout_crashes_in_training():
    """Why the converter calls kohya's diag-oft with bypass_mode and a dropout invalid (DBS402):
    lycoris-lora's DiagOFTModule multiplies its (blocks, size, size) rotations by an output-shaped dropout
    mask and raises on a training forward of a linear layer's (batch, tokens, width) input or a
    convolution's; eval mode runs."""
    from lycoris.modules.diag_oft import DiagOFTModule

    torch.manual_seed(0)
    cases = [
        (nn.Linear(8, 16), torch.randn(2, 7, 8)),
        (nn.Conv2d(8, 16, 3, padding=1), torch.randn(2, 8, 5, 5)),
    ]
    for layer, x in cases:
        lyco = DiagOFTModule("x", layer, 1.0, lora_dim=4, dropout=0.1, bypass_mode=True)
        lyco.apply_to()
        lyco.train()
        with pytest.raises(RuntimeError):
            layer(x)
        lyco.eval()
        assert layer(x).shape == ((2, 7, 16) if x.dim() == 3 else (2, 16, 5, 5))


RUNS = {
    "loha": 'kind = "loha"\nrank = 4\nalpha = 4.0\nmax_norm = 0.02\n',
    "locon": 'kind = "lora"\nrank = 4\nalpha = 4.0\nconv_rank = 4\nconv_alpha = 4.0\ntucker = true\n'
    'max_norm = 0.02\nmax_norm_form = "lycoris"\n',
    "lokr": 'kind = "lokr"\nrank = 4\nalpha = 4.0\nmax_norm = 0.02\n',
    "locon_dora": 'kind = "lora"\nrank = 4\nalpha = 4.0\ndora = true\ndora_form = "lycoris"\n'
    'max_norm = 0.02\nmax_norm_form = "lycoris"\n',
    "loha_rank_dropout": 'kind = "loha"\nrank = 4\nalpha = 4.0\nrank_dropout = 0.3\nmax_norm = 0.02\n',
    "lokr_rank_dropout": 'kind = "lokr"\nrank = 4\nalpha = 4.0\nrank_dropout = 0.3\nmax_norm = 0.02\n',
    "diag_oft": 'kind = "diag-oft"\nblock_size = 4\nrescaled = true\nmax_norm = 0.02\n',
    "boft": 'kind = "boft"\nblock_size = 4\nconstraint = 0.5\nmax_norm = 0.02\n',
}


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    return {
        f"{path.relative_to(folder)}:{key}": value
        for path in sorted(folder.rglob("*.safetensors"))
        for key, value in load_file(str(path)).items()
    }


# the runs that also resume bit-exact: the fixed scalar the norm moves (LoCon's, in Tucker form), the same
# with the rank dropout masks the norm draws (LoHa's) and the blocks held to the limit (Diag-OFT's); the
# others keep state of the same kinds (LoKr's weights alone, BOFT's blocks; DoRA's magnitudes resume in
# test_lycoris and test_lycoris_dora)
RESUMED = ("locon", "loha_rank_dropout", "diag_oft")


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_a_run_with_lycoris_max_norm_logs_it_keeps_the_limit_and_resumes_bit_exact(
    tmp_path, kind, monkeypatch
):
    """Tiny SD1 with a LyCORIS kind and max_norm: logged as kohya logs it, every layer's update within the
    limit after the last step, the fixed scalar never trained, and (RESUMED) a run stopped and resumed ends
    bit-exact (with rank dropout: the masks the norm draws in training mode too)."""
    from dbspec.runtime import max_norm

    draws = []
    drawn = max_norm._draws_rank_dropout
    monkeypatch.setattr(max_norm, "_draws_rank_dropout", lambda m: draws.append(drawn(m)) or draws[-1])
    extra = f"[adapter]\n{RUNS[kind]}\n[train]\ntext_encoder = true\n\n[logging]\nevery = 1\n"
    spec = write_spec(tmp_path, steps=2, extra=extra)  # stopped after step 1 and resumed below
    spec.write_text(spec.read_text().replace("[schedule]\n", "[schedule]\naccumulation = 2\n"))
    plan = compile_spec(spec, ["optimizer.lr=5e-2"])
    assert plan.adapter.max_norm == 0.02 and plan.adapter.max_norm_form == "lycoris"
    whole = execute(compile_spec(spec, ["optimizer.lr=5e-2", "output.dir=whole"]), keep_models=True)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 2 and all("max_norm/keys_scaled" in r for r in rows)
    assert rows[-1]["max_norm/keys_scaled"] > 0
    assert 0 < rows[-1]["max_norm/max_key_norm"] <= 0.02 * (1 + 1e-5)
    comps = whole.components
    modules = lycoris_norm_modules(comps.unet, comps.text_encoders)
    assert len(modules) > 10
    with torch.no_grad():  # with rank dropout the limit holds for the update its mask left, not the whole
        if not kind.endswith("rank_dropout"):
            assert max(float(lycoris_update(m).norm()) for m in modules) <= 0.02 * (1 + 1e-5)
    if kind in ("diag_oft", "boft"):  # the blocks themselves are what is held to the limit
        assert all(m.kind == "oft" for m in modules)
    elif not kind.startswith("lokr"):  # the fixed scalar: moved by the max norm, never trained
        scalars = [layer_scalar(m.layer) for m in modules]
        assert all(s is not None and not s.requires_grad for s in scalars)
        assert any(float(s) < 1.0 for s in scalars)
    assert any(draws) == kind.endswith("rank_dropout")
    ours = _saved(Path(whole.final))
    assert ours
    if kind not in RESUMED:
        return
    parts = compile_spec(spec, ["optimizer.lr=5e-2", "output.dir=parts"])
    assert execute(parts, stop_after=1).status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and resumed.steps == 2
    theirs = _saved(Path(resumed.final))
    assert ours and ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# test_lycoris.py's run (trains, its kohya export loads back in LyCORIS's kohya loader
# giving every trained layer's weight) with LyCORIS's max norm: the fixed scalar is folded into the export.
EXPORT_KINDS = {
    "locon_max_norm": (
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nmax_norm = 0.001\n'
        'max_norm_form = "lycoris"\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1"},
        {"lora_down.weight", "lora_up.weight", "alpha"},
    ),
    "loha_max_norm": (
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nmax_norm = 0.001\n',
        {"algo": "loha", "conv_dim": "2", "conv_alpha": "1"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    ),
}


@pytest.mark.parametrize("kind", sorted(EXPORT_KINDS))
def test_max_norm_export_loads_back_in_lycoris(tmp_path, kind, loader, monkeypatch):  # noqa: F811
    monkeypatch.setitem(lycoris_runs.KINDS, kind, EXPORT_KINDS[kind])
    # the max norm's state resumes in test_a_run_with_lycoris_max_norm_logs_it_keeps_the_limit_and_resumes_...
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, kind, loader, steps=2, resume=False)
    saved = _saved(tmp_path / "whole" / "final")
    scalars = [v for k, v in saved.items() if "_scalar" in k]
    assert scalars and any(float(v) < 1.0 for v in scalars)  # the max norm scaled some layers
