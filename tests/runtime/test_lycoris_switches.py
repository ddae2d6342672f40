"""LyCORIS's LoKr `full_matrix` and `use_scalar` (runtime/lycoris_switches.py) against LyCORIS's own modules
(lycoris-lora's LoConModule, LohaModule, LokrModule, what kohya's lycoris.kohya network builds): the same
factor shapes and starting point, the same forward once the factors are copied over, peft's merge equal to
LyCORIS's weight, and the export's tensors loaded into a LyCORIS module (scalar folded in, as LyCORIS saves
it) giving the trained layer's weight. Then tiny SD models train through the real loop, resume bit-exact and
load back in LyCORIS's kohya loader (tests/runtime/test_lycoris.py's check)."""

from __future__ import annotations

import copy
import math
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_switches import layer_scalar
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

modules = pytest.importorskip("lycoris.modules")
LoConModule, LohaModule, LokrModule = modules.LoConModule, modules.LohaModule, modules.LokrModule

RANK, ALPHA = 2, 3.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 48)
        self.conv = nn.Conv2d(16, 24, 3, padding=1)


def _adapted(kind: str, **switches) -> tuple[Net, Net]:
    """(a Net with the plan's adapter on both layers, an untouched copy of its base layers)."""
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    # LyCORIS's rs_lora: alpha / sqrt(rank) on low-rank layers, the plain alpha x sqrt(rank) (as converted)
    alpha = ALPHA * math.sqrt(RANK) if switches.get("lokr_rank_stabilized") else ALPHA
    adapter = AdapterPlan(
        kind=kind,
        rank=RANK,
        alpha=alpha,
        conv_rank=RANK,
        conv_alpha=alpha,
        conv_targets=("conv",),
        lokr_unit_scale=kind == "lokr",
        **switches,
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    return net, base


def _lycoris(kind: str, name: str, base: nn.Module, **switches) -> nn.Module:
    cls = {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}[kind]
    extra = {"factor": -1} if kind == "lokr" else {}
    return cls(name, base, 1.0, lora_dim=RANK, alpha=ALPHA, **extra, **switches)


# peft's name of each LyCORIS LoCon tensor (LoHa and LoKr keep LyCORIS's names)
_LOCON = {"lora_down.weight": "lora_A", "lora_up.weight": "lora_B", "lora_mid.weight": "lora_mid"}


def _ours(layer, key: str) -> torch.Tensor:
    if key in _LOCON:
        return getattr(layer, _LOCON[key])["default"].weight
    return getattr(layer, key)["default"]


def _copy_into(lyco: nn.Module, layer, scalar: bool) -> None:
    """LyCORIS's module gets the peft layer's factors (and scalar)."""
    with torch.no_grad():
        for key in lyco.state_dict():  # LyCORIS's custom state_dict: new tensors, the scalar folded in
            if key in ("alpha", "scalar", "dora_scale") or key.startswith("org_"):
                continue
            lyco.get_parameter(key).copy_(_ours(layer, key))
        if scalar:
            lyco.scalar.copy_(layer_scalar(layer))


def _randomise(net: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (0.5 if p.dim() == 0 else 0.0))


def _inputs(generator):
    return {
        "proj": torch.randn(3, 64, generator=generator),
        "conv": torch.randn(2, 16, 6, 5, generator=generator),
    }


def test_full_matrix_lokr_has_lycoris_factor_shapes_init_and_scale_one():
    """rank 2 would split LoKr's second factor low-rank (and with decompose_both the first): full_matrix
    makes both full on every layer, at scale 1, with LyCORIS's init (w2 zero: the run starts at the base)."""
    net, base = _adapted("lokr", full_matrix=True)
    x = _inputs(torch.Generator().manual_seed(1))
    for name in ("proj", "conv"):
        layer, theirs = getattr(net, name), _lycoris("lokr", name, getattr(base, name), full_matrix=True)
        assert set(theirs.state_dict()) - {"alpha"} == {"lokr_w1", "lokr_w2"}
        for key in ("lokr_w1", "lokr_w2"):
            assert _ours(layer, key).shape == getattr(theirs, key).shape, (name, key)
            assert _ours(layer, key).requires_grad
        assert not any(
            "default" in getattr(layer, k) for k in ("lokr_w1_a", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        )
        assert layer.scaling["default"] == 1.0 == theirs.scale
        assert torch.count_nonzero(_ours(layer, "lokr_w2")) == 0 and _ours(layer, "lokr_w1").std() > 0
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), getattr(base, name)(x[name]))


@pytest.mark.parametrize(
    "kind, switches",
    [
        ("lokr", {"full_matrix": True}),
        ("lokr", {"full_matrix": True, "scalar": True}),
        ("lokr", {"full_matrix": True, "lokr_rank_stabilized": True}),  # rs_lora: sqrt(rank), not 1
        ("lokr", {"lokr_rank_stabilized": True, "scalar": True}),
        ("lokr", {"scalar": True}),
        ("lokr", {"scalar": True, "decompose_both": True}),
        ("lokr", {"scalar": True, "tucker": True}),
        ("loha", {"scalar": True}),
        ("loha", {"scalar": True, "tucker": True}),
        ("lora", {"scalar": True}),
        ("lora", {"scalar": True, "tucker": True}),
    ],
)
def test_forward_merge_and_export_equal_lycoris_modules(kind, switches):
    """Random factors and scalar: LyCORIS's module holding the same values runs the same forward; peft's
    merge equals LyCORIS's rebuilt weight; the exported tensors (the scalar folded in) loaded into a LyCORIS
    module built from the file as its loader does (no scalar: 1) give that weight too."""
    from dbspec.runtime.lycoris_export import _layers

    net, base = _adapted(kind, **switches)
    generator = torch.Generator().manual_seed(11)
    _randomise(net, generator)
    theirs_switches = {
        "use_scalar": switches.get("scalar", False),
        "full_matrix": switches.get("full_matrix", False),
        "use_tucker": switches.get("tucker", False),
        "decompose_both": switches.get("decompose_both", False),
        "rs_lora": switches.get("lokr_rank_stabilized", False),
    }
    if kind != "lokr":
        del theirs_switches["full_matrix"], theirs_switches["decompose_both"]
    x = _inputs(generator)
    exported = {name: (weights, alpha) for name, weights, alpha in _layers(net)}
    for name in ("proj", "conv"):
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = _lycoris(kind, name, reference, **theirs_switches)
        assert layer.scaling["default"] == pytest.approx(lyco.scale)
        _copy_into(lyco, layer, switches.get("scalar", False))
        lyco.apply_to()
        with torch.no_grad():
            ours, theirs, plain = layer(x[name]), reference(x[name]), layer.base_layer(x[name])
        assert not torch.allclose(ours, plain, atol=1e-3)  # the update is not zero
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            weight = lycoris_runs._lycoris_weight(lyco) * 1.0
            if kind != "lora":  # LoHa / LoKr's get_weight leaves LyCORIS's scalar to its forward
                weight = lyco._current_weight() + (weight - lyco._current_weight()) * lyco.scalar
        merged = copy.deepcopy(layer)
        merged.merge()
        torch.testing.assert_close(merged.base_layer.weight, weight, rtol=1e-5, atol=1e-5)
        # the export, loaded as LyCORIS's kohya loader builds a module from a file's tensors
        weights, alpha = exported[name]
        tensors = {k: v.detach() for k, v in weights.items()}
        with torch.no_grad():  # as LyCORIS's loader runs it
            loaded = _load_like_lycoris(kind, name, copy.deepcopy(getattr(base, name)), tensors, alpha)
        assert float(loaded.scalar.detach()) == 1.0  # LyCORIS loads a file with scalar 1
        torch.testing.assert_close(lycoris_runs._lycoris_weight(loaded), weight, rtol=1e-4, atol=1e-4)


def _load_like_lycoris(kind, name, base, tensors, alpha) -> nn.Module:
    """A LyCORIS module from a file's tensors, as lycoris-lora's kohya loader builds one."""
    if "lokr_t2" in tensors:  # lycoris-lora 4.1.3's file loader misreads a Tucker LoKr's rank (test_lycoris)
        loaded = _lycoris(kind, name, base, use_tucker=True)
        loaded.load_state_dict({**tensors, "alpha": torch.tensor(alpha)})
        return loaded
    cls = {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}[kind]
    weights = [torch.tensor(alpha) if k == "alpha" else tensors.get(k) for k in cls.weight_list]
    return cls.make_module_from_state_dict(name, base, *weights)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_scalar_starts_at_zero_with_the_other_factor_random_and_trains(kind):
    """use_scalar: the run starts at the base model (scalar 0) though LyCORIS's otherwise-zero factor is
    random; the first step's gradient reaches the scalar alone (every factor's gradient is scaled by 0)."""
    net, base = _adapted(kind, scalar=True)
    zeroed = {"lora": ("lora_B",), "loha": ("hada_w2_a", "hada_w2_b"), "lokr": ("lokr_w2_b", "lokr_w2")}[kind]
    x = _inputs(torch.Generator().manual_seed(2))
    for name in ("proj", "conv"):
        layer = getattr(net, name)
        scalar = layer_scalar(layer)
        assert scalar is not None and float(scalar.detach()) == 0.0 and scalar.requires_grad
        for key in zeroed:
            if "default" in getattr(layer, key):
                value = getattr(layer, key)["default"]
                assert (value.weight if hasattr(value, "weight") else value).std() > 0, key
        out = layer(x[name])
        torch.testing.assert_close(out, getattr(base, name)(x[name]))
        out.square().sum().backward()
        assert scalar.grad is not None and scalar.grad.abs() > 0
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any(n.endswith("scalar") or "_scalar." in n for n in trained)


def test_loraplus_leaves_the_scalar_out_of_the_up_group():
    from types import SimpleNamespace

    from dbspec.runtime.prepare import lora_up_ids

    net, _ = _adapted("lora", scalar=True)
    ids = lora_up_ids(SimpleNamespace(unet=net, text_encoders=[]))
    assert id(layer_scalar(net.proj)) not in ids and id(net.proj.lora_B["default"].weight) in ids


SWITCH_KINDS = {
    # rank 2: without full_matrix every layer of the tiny model keeps w2 low-rank; rank_stabilized (rs_lora)
    # trains them at sqrt(2), which the export folds into lokr_w1: LyCORIS loads it at scale 1, as trained
    "lokr_full_matrix": (
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nfull_matrix = true\n'
        "rank_stabilized = true\n",
        {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "factor": "-1", "full_matrix": "True"},
        {"lokr_w1", "lokr_w2", "alpha"},
    ),
    "locon_scalar": (  # kohya's dropouts act on the down projection's output, before the scaled lora_up
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\n'
        "rank_dropout = 0.2\nmodule_dropout = 0.2\ndown_dropout = 0.1\n",
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "use_scalar": "True"},
        {"lora_down.weight", "lora_up.weight", "alpha"},
    ),
    "loha_scalar": (
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\n',
        {"algo": "loha", "conv_dim": "2", "conv_alpha": "1", "use_scalar": "True"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    ),
    "lokr_scalar": (
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\n'
        "rank_dropout = 0.2\nmodule_dropout = 0.2\n",
        {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "factor": "-1", "use_scalar": "True"},
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    ),
}


@pytest.mark.parametrize("kind", list(SWITCH_KINDS))
def test_switches_train_resume_bit_exact_and_load_back_in_lycoris(tmp_path, kind, loader, monkeypatch):  # noqa: F811
    """Each switch trains and loads back in LyCORIS; locon_scalar's run (a trained scalar beside kohya's
    dropouts) also resumes bit-exact: the others' scalars and LoKr factors are state of the same kinds
    (LoHa / LoKr weights resume in test_lycoris). final/ holds the adapters in peft's layout (LoCon with a
    scalar too: diffusers' LoRA format has no place for it), and `dbspec sample` rebuilds the scalars and
    full LoKr factors from the saved tensors alone: the helper reloads every LoHa / LoKr run so
    (lokr_full_matrix's), locon_scalar's is reloaded here."""
    from dbspec.runtime.sample import SampleRequest, load_pipeline

    monkeypatch.setitem(lycoris_runs.KINDS, kind, SWITCH_KINDS[kind])
    resume = kind == "locon_scalar"
    result, settings = lycoris_runs.trained_resumed_and_loaded_in_lycoris(
        tmp_path, kind, loader, steps=2, resume=resume
    )
    assert (Path(result.final) / "unet" / "adapter_model.safetensors").exists()
    if kind == "locon_scalar":
        trained = result.components.unet.eval()
        pipe = load_pipeline(SampleRequest(source=Path(result.output), settings=settings))
        torch.testing.assert_close(
            lycoris_runs._unet_output(pipe.unet), lycoris_runs._unet_output(trained), rtol=1e-5, atol=1e-5
        )


# LyCORIS's algo=full (runtime/lycoris_full.py): trained copies of the targeted layers' weights and biases,
# with FullModule's module and rank dropout drawn while training (resumed bit-exact: the draws are restored)
FULL = (
    'kind = "full"\nconv_targets = ["conv1", "conv2"]\nmodule_dropout = 0.3\nrank_dropout = 0.2\n',
    {"algo": "full", "conv_dim": "1"},
    {"diff", "diff_b"},
)


def _full_aware_weight(lyco) -> torch.Tensor:
    """A loaded FullModule holds the file's diff as its weight (LyCORIS's is_diff): base + diff."""
    if type(lyco).__name__ == "FullModule":
        with torch.no_grad():
            return lyco._current_weight() + lyco.weight
    return _lycoris_weight_of_the_other_algos(lyco)


_lycoris_weight_of_the_other_algos = lycoris_runs._lycoris_weight


def test_full_algo_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check. Its LyCORIS forward loads the file's state dict again after apply_to, harmless
    for the low-rank algos; FullModule's load hook adds a `diff` to the weight it holds, which apply_to has
    already set to base + diff (lycoris-lora 4.1.3), so here the network keeps what
    create_network_from_weights built from the file (make_module_from_state_dict: every module holds the
    file's diff)."""

    def full_loader(*args, **kwargs):
        network, weights = loader(*args, **kwargs)
        assert {type(m).__name__ for m in [*network.unet_loras, *network.text_encoder_loras]} == {
            "FullModule"
        }
        network.load_state_dict = lambda *a, **k: None
        return network, weights

    monkeypatch.setitem(lycoris_runs.KINDS, "full", FULL)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", _full_aware_weight)
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, "full", full_loader, steps=2)


def test_full_layer_equals_lycoris_full_module():
    """Random trained copies: LyCORIS's FullModule holding the same weight and bias runs the same forward;
    peft's merge gives its weight and bias; the export's diff / diff_b are LyCORIS's custom_state_dict."""
    from lycoris.modules.full import FullModule

    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    net.nobias = nn.Linear(64, 8, bias=False)
    base = copy.deepcopy(net)
    adapter = AdapterPlan(kind="full", conv_targets=("conv",))
    add_lora(net, adapter, ("proj", "nobias"), seed=3, conv=True)
    x = {**_inputs(torch.Generator().manual_seed(1)), "nobias": torch.randn(3, 64)}
    for name in ("proj", "conv", "nobias"):  # untrained: the base model
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "proj.lora_full.default",
        "proj.lora_full_bias.default",
        "conv.lora_full.default",
        "conv.lora_full_bias.default",
        "nobias.lora_full.default",
    }
    _randomise(net, torch.Generator().manual_seed(2))
    exported = {name: weights for name, weights, _ in _layers(net)}
    for name in ("proj", "conv", "nobias"):
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = FullModule(name, reference, 1.0)
        lyco.apply_to()
        with torch.no_grad():
            lyco.weight.copy_(layer.lora_full["default"])
            if lyco.bias is not None:
                lyco.bias.copy_(layer.lora_full_bias["default"])
            ours, theirs = layer(x[name]), reference(x[name])
        assert not torch.allclose(ours, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        saved = lyco.state_dict()
        assert saved.keys() == exported[name].keys()
        for key in saved:
            torch.testing.assert_close(exported[name][key], saved[key], rtol=0, atol=1e-6)
        merged = copy.deepcopy(layer)
        merged.merge()
        torch.testing.assert_close(merged.base_layer.weight, layer.lora_full["default"])
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


@pytest.mark.parametrize(
    ("kind", "switches"), [("full", {}), ("lora", {"scalar": True}), ("lokr", {"scalar": True})]
)
def test_switched_off_for_a_base_model_prediction(kind, switches):
    """A base-model prior (adapters_disabled) runs the frozen layers alone; afterwards the trained weights are
    back, trainable as before."""
    from dbspec.runtime.adapters import adapters_disabled

    net, base = _adapted(kind, **switches) if kind != "full" else _full_net()
    _randomise(net, torch.Generator().manual_seed(4))
    x = _inputs(torch.Generator().manual_seed(5))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with adapters_disabled(net), torch.no_grad():
        for name in ("proj", "conv"):
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    assert {n for n, p in net.named_parameters() if p.requires_grad} == trainable
    with torch.no_grad():
        assert not torch.allclose(net.proj(x["proj"]), base.proj(x["proj"]), atol=1e-3)


def _full_net() -> tuple[Net, Net]:
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    add_lora(net, AdapterPlan(kind="full", conv_targets=("conv",)), ("proj",), seed=3, conv=True)
    return net, base


# --- LyCORIS's algo=ia3 (runtime/lycoris_ia3.py): a scale per output (or input) channel -------------------


def _ia3_net() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = Net()
    net.ff = nn.Linear(64, 48)  # scaled on its input side (LyCORIS's train_on_input)
    net.conv_in = nn.Conv2d(16, 24, 3, padding=1)
    base = copy.deepcopy(net)
    adapter = AdapterPlan(kind="ia3", conv_targets=("conv", "conv_in"), input_targets=("ff", "conv_in"))
    add_lora(net, adapter, ("proj", "ff"), seed=3, conv=True)
    return net, base


def test_ia3_layer_equals_lycoris_ia3_module():
    """Random scales: LyCORIS's IA3Module (train_on_input as the plan says) holding the same scales runs the
    same forward, the bias unscaled; peft's merge gives its weight; the export is its state dict."""
    from lycoris.modules.ia3 import IA3Module

    from dbspec.runtime.lycoris_export import _layers

    net, base = _ia3_net()
    x = {**_inputs(torch.Generator().manual_seed(1))}
    x["ff"], x["conv_in"] = x["proj"], x["conv"]
    for name in x:  # untrained: the base model
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    _randomise(net, torch.Generator().manual_seed(2))
    exported = {name: weights for name, weights, _ in _layers(net)}
    for name, on_input in (("proj", False), ("ff", True), ("conv", False), ("conv_in", True)):
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = IA3Module(name, reference, 1.0, train_on_input=on_input)
        with torch.no_grad():
            lyco.weight.copy_(layer.lora_ia3["default"])
        lyco.apply_to()
        with torch.no_grad():
            ours, theirs = layer(x[name]), reference(x[name])
        assert not torch.allclose(ours, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        saved = lyco.state_dict()
        assert saved.keys() == exported[name].keys() == {"weight", "on_input"}
        assert (
            torch.equal(exported[name]["weight"], saved["weight"])
            and int(exported[name]["on_input"]) == on_input
        )
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(merged.base_layer.weight, lyco.get_merged_weight()[0])
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


def test_ia3_module_dropout_draws_as_lycoris_ia3_module():
    """IA3Module.forward's module_dropout (lycoris-lora 4.1.3): one `torch.rand(1)` per training forward,
    first, the base output alone below the rate (runtime/mixed_kinds.py add_own_module_dropout, each layer
    its own draw): equal outputs and generator state from one generator state; none outside training."""
    from lycoris.modules.ia3 import IA3Module

    from dbspec.runtime.mixed_kinds import add_own_module_dropout

    net, base = _ia3_net()
    _randomise(net, torch.Generator().manual_seed(2))
    assert add_own_module_dropout(net, 0.5) == 4
    layer, reference = net.proj, copy.deepcopy(base.proj)
    lyco = IA3Module("proj", reference, 1.0, module_dropout=0.5)
    with torch.no_grad():
        lyco.weight.copy_(layer.lora_ia3["default"])
    lyco.apply_to()
    net.train(), lyco.train()
    x = _inputs(torch.Generator().manual_seed(1))["proj"]
    torch.manual_seed(7)
    with torch.no_grad():
        expected = [reference(x) for _ in range(8)]
    after = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        got = [layer(x) for _ in range(8)]
    assert torch.equal(after, torch.get_rng_state())  # one draw per forward
    plain = layer.base_layer(x)
    skipped = [torch.equal(m, plain) for m in got]
    assert skipped == [torch.equal(w, plain) for w in expected] and 0 < sum(skipped) < 8
    for mine, want in zip(got, expected):
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-5)
    net.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        layer(x)  # outside training: no draw
    assert torch.equal(state, torch.get_rng_state())


IA3 = (
    'kind = "ia3"\nconv_targets = ["conv1"]\ninput_targets = ["ff.net.2", "fc2"]\n'
    'denoiser_targets = ["to_k", "to_v", "ff.net.2"]\ntext_encoder_targets = ["k_proj", "v_proj", "fc2"]\n'
    "module_dropout = 0.3\n"  # IA3Module.forward's draw per layer (resumed bit-exact with the generator)
)


def test_ia3_trains_resumes_bit_exact_and_its_export_is_lycoris_ia3(tmp_path):
    """A tiny SD model trains IA^3 through the real loop and resumes bit-exact; each exported module, loaded
    into LyCORIS's IA3Module (built directly: lycoris-lora 4.1.3's file loader hands IA3Module's
    make_module_from_state_dict both `weight` and `on_input`, which it does not take, and raises TypeError),
    runs LyCORIS's forward on a fresh model to the trained model's outputs; `dbspec sample` reloads final/."""
    from lycoris.modules.ia3 import IA3Module
    from safetensors import safe_open
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from dbspec.runtime.sample import SampleRequest, load_pipeline
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec, write_spec

    spec = write_spec(tmp_path, steps=2, extra=lycoris_runs.SPEC.format(adapter=IA3))  # stopped after 1
    lr = ["optimizer.lr=1e-2"]
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    assert execute(plan, stop_after=1).status == "interrupted"
    second = execute(plan, resume=True)
    ours, resumed = lycoris_runs._files(Path(whole.final)), lycoris_runs._files(Path(second.final))
    assert ours.keys() == resumed.keys()
    for name, tensors in ours.items():
        assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        assert json.loads(handle.metadata()["ss_network_args"]) == {"algo": "ia3", "conv_dim": "1"}
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(export)).items():
        name, suffix = key.split(".", 1)
        modules.setdefault(name, {})[suffix] = tensor
    trained = whole.components
    for module in (trained.unet, *trained.text_encoders):
        module.eval()
    names = {
        **lycoris_runs._kohya_names(trained.unet, "lora_unet"),
        **lycoris_runs._kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    assert set(modules) == set(names) and all(set(t) == {"weight", "on_input"} for t in modules.values())
    assert int(modules["lora_te_text_model_encoder_layers_0_mlp_fc2"]["on_input"]) == 1
    fresh = build_pipeline(plan.model.base)
    for lora_name, tensors in modules.items():
        owner = fresh.unet if lora_name.startswith("lora_unet") else fresh.text_encoder
        lyco = IA3Module(
            lora_name,
            owner.get_submodule(names[lora_name].removeprefix("text_model.")),
            1.0,
            train_on_input=bool(tensors["on_input"]),
        )
        lyco.load_state_dict(tensors)
        lyco.apply_to()
    trained_output = lycoris_runs._unet_output(trained.unet)
    torch.testing.assert_close(lycoris_runs._unet_output(fresh.unet), trained_output, rtol=1e-4, atol=1e-4)
    ids = torch.randint(0, 500, (2, 77), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours_text = trained.text_encoders[0](ids).last_hidden_state
        torch.testing.assert_close(fresh.text_encoder(ids).last_hidden_state, ours_text, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(lycoris_runs._unet_output(build_pipeline(plan.model.base).unet), trained_output)
    pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))
    torch.testing.assert_close(lycoris_runs._unet_output(pipe.unet), trained_output, rtol=1e-5, atol=1e-5)


# --- LyCORIS's algo=diag-oft (runtime/lycoris_oft.py): orthogonal blocks of output rows ---------------------


def test_factorization_is_lycoris():
    from lycoris.functional.general import factorization

    from dbspec.runtime.lycoris_oft import lycoris_factorization

    for dimension in range(1, 400):
        for factor in (-1, 1, 2, 3, 4, 5, 8, 12, 16, 64):
            assert lycoris_factorization(dimension, factor) == factorization(dimension, factor), (
                dimension,
                factor,
            )


@pytest.mark.parametrize(("constraint", "rescaled"), [(0.0, False), (0.0, True), (1e-3, False)])
def test_diag_oft_layer_equals_lycoris_diag_oft_module(constraint, rescaled):
    """Random blocks (and rescale): LyCORIS's DiagOFTModule holding them runs the same forward (COFT's norm
    bound too); peft's merge gives its weight; the export is its state dict."""
    from lycoris.modules.diag_oft import DiagOFTModule

    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="diag-oft",
        conv_targets=("conv",),
        oft_block_size=4,
        oft_constraint=constraint,
        oft_rescaled=rescaled,
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    x = _inputs(torch.Generator().manual_seed(1))
    for name in x:  # untrained: R = I, the base model
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    _randomise(net, torch.Generator().manual_seed(2))
    exported = {name: (weights, alpha) for name, weights, alpha in _layers(net)}
    for name in x:
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = DiagOFTModule(name, reference, 1.0, lora_dim=4, constraint=constraint, rescaled=rescaled)
        assert lyco.oft_blocks.shape == layer.lora_oft_blocks["default"].shape
        with torch.no_grad():
            lyco.oft_blocks.copy_(layer.lora_oft_blocks["default"])
            if rescaled:
                lyco.rescale.copy_(layer.lora_oft_rescale["default"])
        lyco.apply_to()
        with torch.no_grad():
            ours, theirs = layer(x[name]), reference(x[name])
        assert not torch.allclose(ours, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        weights, alpha = exported[name]
        saved = lyco.state_dict()
        assert {*weights, "alpha"} == set(saved) and alpha == pytest.approx(float(saved["alpha"]))
        for key in weights:
            assert torch.equal(weights[key], saved[key])
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(
                merged.base_layer.weight, lyco.get_merged_weight()[0], rtol=1e-5, atol=1e-5
            )
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


DIAG_OFT = (
    'kind = "diag-oft"\nblock_size = 4\nconstraint = 0.5\nrescaled = true\n'
    'conv_targets = ["conv1", "conv2"]\n',
    {"algo": "diag-oft", "conv_dim": "1", "constraint": "0.5", "rescaled": "True"},
    {"oft_blocks", "rescale", "alpha"},
)


def test_diag_oft_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check: LyCORIS's kohya loader builds DiagOFTModules from the file."""

    def oft_weight(lyco) -> torch.Tensor:
        if type(lyco).__name__ == "DiagOFTModule":
            with torch.no_grad():
                return lyco.get_merged_weight()[0]
        return _lycoris_weight_of_the_other_algos(lyco)

    monkeypatch.setitem(lycoris_runs.KINDS, "diag-oft", DIAG_OFT)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", oft_weight)
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, "diag-oft", loader, steps=2)
