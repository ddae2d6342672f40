"""LyCORIS's algo=tlora layer (runtime/lycoris_tlora.py) against lycoris-lora 4.1.3's TLoraModule as kohya
builds it (create_network passes no sig_type, use_data_init or mask; no timestep mask is ever set): the same
SVD start (the base model's output), the same forward and gradients after the factors move, peft's merge
equal to LyCORIS's merged weight, and a tiny run that trains, resumes bit-exact and loads back in LyCORIS's
own kohya loader."""

from __future__ import annotations

import copy
from pathlib import Path
import types

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

tlora = pytest.importorskip("lycoris.modules.tlora")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 24)
        self.point = nn.Conv2d(16, 12, 1)
        self.narrow = nn.Linear(3, 5)  # rank 4 above min(out, in): LyCORIS pads the missing ranks


def _inputs(generator):
    return {
        "proj": torch.randn(3, 40, generator=generator),
        "point": torch.randn(2, 16, 7, 6, generator=generator),
        "narrow": torch.randn(3, 3, generator=generator),
    }


def _no_gc(monkeypatch) -> None:
    """TLoraModule's init runs a full gc.collect() per module, a cleanup with no effect on its weights that
    under a test process's heap took most of the run test's time (69 s of 82 s on a loaded 2-core box)."""
    monkeypatch.setattr(tlora, "gc", types.SimpleNamespace(collect=lambda: 0))


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_tlora_layer_equals_lycoris_tlora_module(alpha, monkeypatch):
    from dbspec.runtime.lycoris_tlora import tlora_config

    _no_gc(monkeypatch)
    rank = 4
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    inject_adapter_in_model(tlora_config(list(_inputs(torch.Generator())), rank, alpha), net, "default")
    x = _inputs(torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for name in x:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        with torch.no_grad():  # the residual subtraction: the base model at the start
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=0, atol=0)
        lyco = tlora.TLoraModule(name, reference, 1.0, rank, alpha)
        assert tlora.get_timestep_mask() is None  # kohya never sets one
        ours = layer.lycoris_weights("default")
        theirs = {k: lyco.state_dict()[k] for k in ours}
        for key in ours:  # the same SVD start, bit for bit
            assert torch.equal(ours[key].detach(), theirs[key]), key
        with torch.no_grad():
            for key in ours:
                ours[key].add_(torch.randn(ours[key].shape, generator=generator) * 0.3)
        lyco.load_state_dict({k: v.detach().clone() for k, v in ours.items()}, strict=False)
        lyco.apply_to()
        params = dict(lyco.named_parameters())
        out, ref = layer(x[name]), reference(x[name])
        assert not torch.allclose(out, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=generator)
        (out * weights).sum().backward()
        (ref * weights).sum().backward()
        for key in ours:
            torch.testing.assert_close(ours[key].grad, params[key].grad, rtol=1e-4, atol=1e-5)
        assert float(layer.lora_alpha["default"]) == pytest.approx(float(lyco.alpha))
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(
                merged.base_layer.weight, lyco.get_merged_weight()[0], rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("stride", [1, 2])
def test_tlora_refuses_a_kxk_convolution_which_stops_lycoris(stride, monkeypatch):
    """TLoraModule on a 3x3 convolution (kohya's ResNets, downsamplers: conv_dim defaults to network_dim)
    adds its 1x1 factors' output, of another size, to the layer's: kohya stops at the first forward (the
    converter's DBS402); dbspec refuses such a target when it builds the layer."""
    from dbspec.runtime.lycoris_tlora import tlora_config

    _no_gc(monkeypatch)
    conv = nn.Conv2d(4, 8, 3, padding=1, stride=stride)
    lyco = tlora.TLoraModule("conv", conv, 1.0, 2, 1.0)
    lyco.apply_to()
    with pytest.raises(RuntimeError, match="must match the size"):
        conv(torch.randn(1, 4, 8, 8))
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    with pytest.raises(ValueError, match="1x1 Conv2d"):
        inject_adapter_in_model(tlora_config(["0"], 2, 1.0), net, "default")


# kohya's lycoris.kohya network with algo=tlora on Linear layers (and SD 1.x's 1x1 proj_in / proj_out): no
# conv_dim (its k x k convolutions stop kohya), hence no convolution suffixes
TLORA = (
    'kind = "tlora"\nrank = 2\nalpha = 1.0\n',
    {"algo": "tlora"},
    set(),
)


def _tlora_weight(lyco) -> torch.Tensor:
    with torch.no_grad():
        return lyco.get_merged_weight()[0]


def test_tlora_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check: LyCORIS's kohya loader builds TLoraModules from the file (their frozen start
    recomputed from the base model's SVD) with the trained weights and outputs, to 1e-4."""
    _no_gc(monkeypatch)
    monkeypatch.setitem(lycoris_runs.KINDS, "tlora", TLORA)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", _tlora_weight)
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, "tlora", loader, steps=2)


def test_tlora_module_dropout_draws_as_lycoris_module(monkeypatch):
    """TLoraModule.forward's module dropout: one `torch.rand(1)` from torch's global generator per training
    forward, first, the base output alone below the rate (runtime/mixed_kinds.py add_own_module_dropout).
    From the same generator state: the same outputs, the generator left alike, the same gradients; no draw
    outside training."""
    from dbspec.runtime.lycoris_tlora import tlora_config
    from dbspec.runtime.mixed_kinds import add_own_module_dropout

    _no_gc(monkeypatch)
    rate, rank = 0.5, 4
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    inject_adapter_in_model(tlora_config(["proj", "point"], rank, 2.0), net, "default")
    assert add_own_module_dropout(net, rate) == 2
    x = _inputs(torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for name in ("proj", "point"):
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        ours = layer.lycoris_weights("default")
        with torch.no_grad():
            for key in ours:
                ours[key].add_(torch.randn(ours[key].shape, generator=generator) * 0.3)
        lyco = tlora.TLoraModule(name, reference, 1.0, rank, 2.0, module_dropout=rate)
        lyco.load_state_dict({k: v.detach().clone() for k, v in ours.items()}, strict=False)
        lyco.apply_to()
        reference.requires_grad_(False)  # frozen, as peft leaves the base layer
        net.train(), lyco.train()
        plain = layer.base_layer(x[name])
        skipped = 0
        for seed in range(8):
            torch.manual_seed(seed)
            want = reference(x[name])
            after = torch.get_rng_state()
            torch.manual_seed(seed)
            got = layer(x[name])
            assert torch.equal(after, torch.get_rng_state())  # one draw per forward
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got, plain) == torch.equal(want, plain) == (not want.requires_grad)
            skipped += not want.requires_grad
            if want.requires_grad:
                weights = torch.randn(want.shape, generator=generator)
                (want * weights).sum().backward()
                (got * weights).sum().backward()
        assert 0 < skipped < 8, name  # both kinds of forward compared
        params = dict(lyco.named_parameters())
        for key in ours:
            torch.testing.assert_close(ours[key].grad, params[key].grad, rtol=1e-4, atol=1e-5)
        net.eval()
        state = torch.get_rng_state()
        with torch.no_grad():
            layer(x[name])  # outside training: no draw
        assert torch.equal(state, torch.get_rng_state())


def test_tlora_module_dropout_trains_a_tiny_sd(tmp_path, monkeypatch):
    """A tiny SD 1.x run with T-LoRA's module dropout: every T-LoRA layer draws (its stream is torch's global
    generator, which test_lycoris_oft_module_dropout.py resumes bit-exact), the run trains."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    plan = make_plan(tmp_path, steps=2, extra='[adapter]\nkind = "tlora"\nrank = 2\nmodule_dropout = 0.5\n')
    assert (plan.adapter.kind, plan.adapter.module_dropout) == ("tlora", 0.5)
    run = execute(plan, keep_models=True)
    assert run.status == "finished" and run.steps == 2
    layers = [m for m in run.components.unet.modules() if type(m).__name__ == "TloraLayer"]
    assert layers and all("dbspec_skip" in m.__dict__ for m in layers)
    moved = [
        not torch.equal(m.lora_tlora_lambda["default"], m.lora_tlora_base_lambda["default"]) for m in layers
    ]
    assert any(moved)


def test_tlora_max_norm_equals_lycoris_apply_max_norm(monkeypatch):
    """TLoraModule.apply_max_norm (lycoris.kohya's apply_max_norm_regularization, kohya's
    --scale_weight_norms): the update's norm times alpha / rank once more, the trained singular values alone
    times the ratio, the logged norm that norm times the ratio; runtime/max_norm.py's LyCORIS form gives the
    same scaled count, mean and largest norm and the same lambdas, q and p untouched."""
    from dbspec.runtime.lycoris_tlora import tlora_config
    from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules

    _no_gc(monkeypatch)
    rank, alpha = 4, 6.0  # alpha / rank 1.5: the doubled scale shows
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    inject_adapter_in_model(tlora_config(list(_inputs(torch.Generator())), rank, alpha), net, "default")
    generator = torch.Generator().manual_seed(3)
    theirs = []
    for index, name in enumerate(("proj", "point", "narrow")):
        ours = getattr(net, name).lycoris_weights("default")
        with torch.no_grad():
            for key in ours:
                ours[key].add_(torch.randn(ours[key].shape, generator=generator) * 0.1 * (index + 1))
        lyco = tlora.TLoraModule(name, copy.deepcopy(getattr(base, name)), 1.0, rank, alpha)
        lyco.load_state_dict({k: v.detach().clone() for k, v in ours.items()}, strict=False)
        theirs.append(lyco)
    with torch.no_grad():
        norms = [float(lyco.get_diff_weight()[0].norm() * lyco.scale) for lyco in theirs]
    limit = sorted(norms)[1]  # the largest scaled, the middle one exactly at the limit, the smallest not
    modules = lycoris_norm_modules(net, [])
    assert [m.kind for m in modules] == ["tlora"] * 3
    got = apply_max_norm(modules, limit)
    results = [lyco.apply_max_norm(limit) for lyco in theirs]
    scaled = sum(int(s) for s, _ in results)
    want = (scaled, float(sum(n for _, n in results) / 3), float(max(n for _, n in results)))
    assert scaled == 1 and got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:], rel=1e-6)
    for name, lyco in zip(("proj", "point", "narrow"), theirs):
        ours = getattr(net, name).lycoris_weights("default")
        for key, value in lyco.state_dict().items():
            if key in ours:
                torch.testing.assert_close(ours[key].detach(), value, rtol=1e-6, atol=0)
    largest = norms.index(max(norms))
    with torch.no_grad():
        after = float(theirs[largest].get_diff_weight()[0].norm() * theirs[largest].scale)
    assert after < norms[largest] and after != pytest.approx(limit)  # the frozen start's λ0 is not scaled


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_tlora_bypass_equals_lycoris_bypass_forward(dropout, monkeypatch):
    """TLoraModule in bypass_mode (lycoris.kohya `bypass_mode=True`): the base output plus
    P (λ ⊙ Q x) - P0 (λ0 ⊙ Q0 x) on activations, x alpha / rank, then torch's dropout (network_args'
    `dropout`, kohya's --network_dropout), after module_dropout's draw; a 1x1 convolution's Q at the layer's
    stride and padding. From the same generator state: the same outputs, generator state and gradients."""
    from dbspec.runtime.lycoris_tlora import tlora_config
    from dbspec.runtime.mixed_kinds import add_own_module_dropout

    _no_gc(monkeypatch)
    rate, rank, alpha = 0.3, 4, 2.0
    torch.manual_seed(0)
    net = Net()
    net.point = nn.Conv2d(16, 12, 1, stride=2, padding=1)
    base = copy.deepcopy(net)
    targets = ["proj", "point", "narrow"]
    config = tlora_config(targets, rank, alpha, bypass=True, dropout=dropout)
    inject_adapter_in_model(config, net, "default")
    assert add_own_module_dropout(net, rate) == 3
    x = _inputs(torch.Generator().manual_seed(1))
    x["point"] = torch.randn(2, 16, 7, 6, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(2)
    for name in targets:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        ours = layer.lycoris_weights("default")
        with torch.no_grad():
            for key in ours:
                ours[key].add_(torch.randn(ours[key].shape, generator=generator) * 0.3)
        lyco = tlora.TLoraModule(
            name, reference, 1.0, rank, alpha, dropout=dropout, module_dropout=rate, bypass_mode=True
        )
        lyco.load_state_dict({k: v.detach().clone() for k, v in ours.items()}, strict=False)
        lyco.apply_to()
        reference.requires_grad_(False)
        net.train(), lyco.train()
        plain = layer.base_layer(x[name])
        skipped = 0
        for seed in range(8):
            torch.manual_seed(seed)
            want = reference(x[name])
            after = torch.get_rng_state()
            torch.manual_seed(seed)
            got = layer(x[name])
            assert torch.equal(after, torch.get_rng_state())  # the same draws
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            skipped += not want.requires_grad
            if want.requires_grad:
                assert not torch.equal(got, plain)
                weights = torch.randn(want.shape, generator=generator)
                (want * weights).sum().backward()
                (got * weights).sum().backward()
        assert 0 < skipped < 8, name
        params = dict(lyco.named_parameters())
        for key in ours:
            torch.testing.assert_close(ours[key].grad, params[key].grad, rtol=1e-4, atol=1e-5)
        net.eval(), lyco.eval()
        with torch.no_grad():  # outside training: no draw, the bypass forward alone
            state = torch.get_rng_state()
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-5)
            assert torch.equal(state, torch.get_rng_state())


# a LyCORIS preset file for algo=tlora: the transformers and CLIP's attention by class, no name (LyCORIS's
# default names reach conv_in / conv_out, 3x3 convolutions TLoraModule cannot run), a map entry at the
# network's dim and alpha and one whose mask_group_id picks a mask kohya never sets
TLORA_PRESET = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.Transformer2DModel]
algo = "tlora"
dim = 4
alpha = 1

[module_algo_map.CLIPAttention]
mask_group_id = 3
"""


def _converted_network(tmp_path: Path, monkeypatch, preset: str, args: str = '"algo=tlora"'):
    """converted_network on a tiny pipeline of its own (the caller may change it)."""
    return converted_network(tmp_path, monkeypatch, preset, args)


def converted_network(tmp_path: Path, monkeypatch, preset: str, args: str = '"algo=tlora"', pipe=None):
    """`preset` (p.toml) under kohya's command line with `--network_args {args} "preset=p.toml"`, converted
    (neither DBS402 nor DBS403) to its plan's adapter on the tiny SD 1.x, and lycoris-lora 4.1.3's
    create_network from the same file and network_args on copies of a tiny pipeline's U-Net and CLIP (under
    `text_model`, as kohya's), the network class's attributes restored after the test. The pipeline is
    `pipe` (left unchanged: a shared fixture's) or one built here. Returns the adapter, the network, the
    pipeline, and the copies it was built on: the CLIP's holder and the U-Net."""
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    _no_gc(monkeypatch)
    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args {args} "preset=p.toml" --learning_rate=1e-2 --max_train_steps=2 --output_dir=out',
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    adapter = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    kept_lycoris_presets(monkeypatch)
    if pipe is None:
        pipe = build_pipeline("builtin:tiny-sd1")
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)
    extra = dict(a.strip('"').split("=") for a in args.split())
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, preset=str(tmp_path / "p.toml"), **extra
    )
    return adapter, made, pipe, named, unet


def test_tlora_preset_file_builds_lycoris_s_layers(tmp_path, monkeypatch):
    """lycoris.kohya algo=tlora with a preset file: the converted plan adapts exactly the layers
    lycoris-lora 4.1.3's create_network builds TLoraModules on (the tiny SD 1.x U-Net's transformers, 1x1
    proj_in / proj_out too, and CLIP's attention), each at its rank and scale."""
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.lycoris_tlora import TloraLayer

    adapter, made, pipe, _, _ = _converted_network(tmp_path, monkeypatch, TLORA_PRESET)
    assert adapter.kind == "tlora"
    theirs = {
        m.lora_name: (type(m).__name__, m.lora_dim, float(m.scale))
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }
    add_lora(pipe.unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    add_lora(pipe.text_encoder, adapter, adapter.text_encoder_targets, seed=0, component="text_encoder")
    ours = {}
    for prefix, model in (("lora_unet_", pipe.unet), ("lora_te_text_model_", pipe.text_encoder)):
        for name, layer in model.named_modules():
            if isinstance(layer, TloraLayer):
                key = prefix + name.replace(".", "_")
                ours[key] = ("TLoraModule", layer.r["default"], float(layer.scaling["default"]))
    assert theirs and any("proj_in" in k for k in theirs) and any("_te_" in k for k in theirs)
    assert ours == theirs


# map entries with algo tlora and their own dim / alpha: the transformers at 6 (alpha 2), the time embedding's
# first Linear by name at 3 (the network's alpha) from its middle singular triplets, CLIP's attention at 5
# with alpha 0 (create_single_module: `alpha or self.alpha`, the network's); the feed-forwards at the
# network's dim from their last singular triplets, in bypass_mode
TLORA_DIMS = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = ['time_embedding\\.linear_1']
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.Transformer2DModel]
algo = "tlora"
dim = 6
alpha = 2

[module_algo_map.FeedForward]
sig_type = "last"
bypass_mode = true

[name_algo_map.'time_embedding\\.linear_1']
dim = 3
sig_type = "middle"

[module_algo_map.CLIPAttention]
algo = "tlora"
dim = 5
alpha = 0
"""


def test_tlora_entry_dims_build_train_and_export_as_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """A preset file's entries with their own dim / alpha on an algo=tlora network: the converted plan's
    [[adapter.blocks]] / [[adapter.text_encoder_blocks]] build each TLoraModule lycoris-lora 4.1.3's
    create_network builds from the file, at its rank and scale, started from the same SVD (trained and frozen
    copies, at the entries' own sig_type and bypass_mode); a tiny run trains, `dbspec sample` reloads its
    adapter folders as trained (_reloads_as_trained), its kohya export holds LyCORIS's tensors in its
    modules' shapes and alphas, and lycoris-lora's kohya loader builds the trained layers from it (frozen
    start recomputed at "principal"), to 1e-4 where the layer started there."""
    from lycoris.kohya import LycorisNetworkKohya as network
    from safetensors.torch import load_file

    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.execute import execute
    from dbspec.runtime.lycoris_tlora import TloraLayer
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris import _kohya_names, _merged
    from tests.unit.convert_kit import out_path

    adapter, made, pipe, _, _ = _converted_network(tmp_path, monkeypatch, TLORA_DIMS)
    assert adapter.kind == "tlora" and adapter.blocks and adapter.text_encoder_blocks
    theirs = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    add_lora(pipe.unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    add_lora(pipe.text_encoder, adapter, adapter.text_encoder_targets, seed=0, component="text_encoder")
    ours = {}
    for prefix, model in (("lora_unet_", pipe.unet), ("lora_te_text_model_", pipe.text_encoder)):
        for name, layer in model.named_modules():
            if isinstance(layer, TloraLayer):
                ours[prefix + name.replace(".", "_")] = layer
    assert sorted(ours) == sorted(theirs)
    sizes = {(m.lora_dim, float(m.scale)) for m in theirs.values()}
    # the entries' own ranks and scales (alpha 0: the network's, `alpha or self.alpha`)
    assert {(3, 1 / 3), (6, 2 / 6), (5, 1 / 5)} <= sizes
    assert {(m.sig_type, bool(m.bypass_mode)) for m in theirs.values()} == {
        ("principal", False),
        ("last", True),
        ("middle", False),
    }
    for key, lyco in theirs.items():
        layer = ours[key]
        assert (layer.r["default"], float(layer.scaling["default"])) == (lyco.lora_dim, float(lyco.scale)), (
            key
        )
        assert (layer.tlora_sig_type, layer.tlora_bypass) == (lyco.sig_type, bool(lyco.bypass_mode)), key
        pairs = (
            (layer.lora_tlora_q, lyco.q_layer.weight),
            (layer.lora_tlora_p, lyco.p_layer.weight),
            (layer.lora_tlora_lambda, lyco.lambda_layer),
            (layer.lora_tlora_base_q, lyco.base_q),
            (layer.lora_tlora_base_p, lyco.base_p),
            (layer.lora_tlora_base_lambda, lyco.base_lambda),
        )
        for ours_t, theirs_t in pairs:  # the SVD start, trained and frozen, at the layer's own rank
            torch.testing.assert_close(ours_t["default"].detach(), theirs_t.detach(), rtol=1e-5, atol=1e-5)

    plan = compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"])
    done = execute(plan, keep_models=True)
    assert done.status == "finished"
    _reloads_as_trained(done, plan)
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    state = {f"{k}.{n}": v for k, m in theirs.items() for n, v in m.state_dict().items() if "base_" not in n}
    assert {k: list(v.shape) for k, v in saved.items()} == {k: list(v.shape) for k, v in state.items()}
    assert {k: float(v) for k, v in saved.items() if k.endswith(".alpha")} == {
        k: float(v) for k, v in state.items() if k.endswith(".alpha")
    }
    assert any(not torch.equal(v, state[k]) for k, v in saved.items()), "the run trained the layers"
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])  # the loader's modules all from the file (as `loader` sets)
    fresh = build_pipeline("builtin:tiny-sd1")
    named = nn.Module()
    named.text_model = fresh.text_encoder  # kohya's CLIP names its modules text_model.*
    loaded, _ = loader(1.0, str(export), None, named, fresh.unet, for_inference=True)
    merged = {
        "lora_unet": _merged(done.components.unet),
        "lora_te": _merged(done.components.text_encoders[0]),
    }
    names = {
        **_kohya_names(done.components.unet, "lora_unet"),
        **_kohya_names(done.components.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    built = [*loaded.unet_loras, *loaded.text_encoder_loras]
    assert sorted(m.lora_name for m in built) == sorted(theirs)
    for lyco in built:
        if theirs[lyco.lora_name].sig_type != "principal":
            # LyCORIS's loader builds every module at sig_type "principal" (the file does not record it):
            # its frozen start, recomputed from the base model's first singular triplets, is not the one
            # these layers trained from, so it computes another update (dbspec's folders keep the start)
            assert lyco.sig_type == "principal"
            continue
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        assert lyco.lora_dim == theirs[lyco.lora_name].lora_dim
        torch.testing.assert_close(
            _tlora_weight(lyco), merged[prefix][f"{names[lyco.lora_name]}.weight"], rtol=1e-4, atol=1e-4
        )


def _reloads_as_trained(done, plan) -> None:
    """`dbspec sample`'s reload of the run's adapter folders (runtime/sample.py load_pipeline): each T-LoRA
    layer's trained and frozen start (its block's sig_type) and bypass_mode as in training, and the U-Net's
    output on fixed inputs the trained one's."""
    from dbspec.runtime.lycoris_tlora import TloraLayer
    from dbspec.runtime.sample import SampleRequest, load_pipeline

    pipe = load_pipeline(SampleRequest(source=Path(done.output), settings=plan.validation))
    trained = done.components.unet
    again = pipe.unet.to(trained.device, trained.dtype)
    layers = {n: m for n, m in again.named_modules() if isinstance(m, TloraLayer)}
    before = {n: m for n, m in trained.named_modules() if isinstance(m, TloraLayer)}
    assert sorted(layers) == sorted(before)
    assert {m.tlora_bypass for m in layers.values()} == {True, False}
    for name, layer in layers.items():
        assert layer.tlora_bypass == before[name].tlora_bypass, name
        for part in ("q", "p", "lambda", "base_q", "base_p", "base_lambda"):
            ours, theirs = (getattr(m, f"lora_tlora_{part}")["default"] for m in (layer, before[name]))
            assert torch.equal(ours.detach(), theirs.detach()), (name, part)
    generator = torch.Generator().manual_seed(0)
    config = trained.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    inputs = (sample.to(trained.device, trained.dtype), 500, context.to(trained.device, trained.dtype))
    trained.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(*inputs).sample, trained(*inputs).sample, rtol=1e-6, atol=1e-6)


# a LoCon network's preset file with T-LoRA entries: the ResNets LoCon (conv_dim 4), the transformers T-LoRA
# at 6, CLIP's attention T-LoRA at the network's dim
LOCON_WITH_TLORA = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.Transformer2DModel]
algo = "tlora"
dim = 6

[module_algo_map.CLIPAttention]
algo = "tlora"
"""


def _classes(module, prefix: str) -> dict[str, tuple[str, int, float]]:
    """Each adapted layer of `module` as LyCORIS's class, and for LoCon and T-LoRA its rank and scale."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_tlora import TloraLayer

    out = {}
    for name, layer in module.named_modules():
        key = prefix + name.replace(".", "_")
        if isinstance(layer, (LoHaLayer, LoKrLayer)) and "default" in layer.r:
            out[key] = ("LohaModule" if isinstance(layer, LoHaLayer) else "LokrModule", 0, 0.0)
            continue
        if isinstance(layer, TloraLayer) and "default" in layer.r:
            found = "TLoraModule"
        elif isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            found = "LoConModule"
        else:
            continue
        out[key] = (found, layer.r["default"], float(layer.scaling["default"]))
    return out


def _lycoris_classes(modules) -> dict[str, tuple[str, int, float]]:
    """_classes of lycoris-lora's modules."""
    return {
        m.lora_name: (type(m).__name__, 0, 0.0)
        if type(m).__name__ in ("LohaModule", "LokrModule")
        else (type(m).__name__, m.lora_dim, float(m.scale))
        for m in modules
    }


# an algo=tlora network's preset file with entries of other algorithms: the transformers' feed-forwards LoKr
# at 6, CLIP's MLP LoHa
TLORA_WITH_OTHERS = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.FeedForward]
algo = "lokr"
dim = 6

[module_algo_map.CLIPMLP]
algo = "loha"
"""
MIXED_CASES = {  # network_args, the preset, the plan's kind and its blocks' kinds
    "locon": (
        '"algo=locon" "conv_dim=4" "module_dropout=0.3" "dropout=0.1"',
        LOCON_WITH_TLORA,
        "lora",
        {"tlora"},
    ),
    "tlora": ('"algo=tlora" "module_dropout=0.3"', TLORA_WITH_OTHERS, "tlora", {"lokr"}),
}


@pytest.mark.parametrize("case", sorted(MIXED_CASES))
def test_tlora_in_a_network_of_several_algorithms_trains_and_draws_as_lycoris(
    tmp_path,
    loader,  # noqa: F811
    monkeypatch,
    case,
):
    """A LoCon network with a preset file giving the transformers and CLIP's attention algo tlora, with the
    network's module_dropout and dropout (LoConModule's; TLoraModule reads it only in bypass_mode), and a
    T-LoRA network whose file gives the feed-forwards LoKr and CLIP's MLP LoHa, with module_dropout: the
    converted plan builds lycoris-lora 4.1.3's modules on exactly its layers (LoCon's and T-LoRA's ranks and
    scales, T-LoRA's frozen SVD start equal); a tiny run trains; its export, loaded into lycoris-lora's
    network from the same file (kohya's --network_weights), gives the U-Net's outputs and torch's generator
    state of ours over four training forwards (each module's one module_dropout draw, LoCon's dropout after
    it, in forward order), and lycoris-lora's kohya loader rebuilds the trained layers."""
    from lycoris.kohya import LycorisNetworkKohya as network
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_lycoris import _kohya_names, _lycoris_weight, _merged
    from tests.runtime.test_lycoris_norm_dropouts import draws_as_lycoris
    from tests.unit.convert_kit import out_path

    args, preset, kind, block_kinds = MIXED_CASES[case]
    adapter, made, base, named, unet = _converted_network(tmp_path, monkeypatch, preset, args)
    assert adapter.kind == kind and {b.kind for b in adapter.blocks} == block_kinds
    theirs = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert "TLoraModule" in {type(m).__name__ for m in theirs.values()}
    assert len({type(m).__name__ for m in theirs.values()}) >= 2

    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]), keep_models=True)
    assert done.status == "finished"
    trained = done.components
    ours = {
        **_classes(trained.unet, "lora_unet_"),
        **_classes(trained.text_encoders[0], "lora_te_text_model_"),
    }
    assert ours == _lycoris_classes(theirs.values())
    layers = {
        **{"lora_unet_" + n.replace(".", "_"): m for n, m in trained.unet.named_modules()},
        **{
            "lora_te_text_model_" + n.replace(".", "_"): m
            for n, m in trained.text_encoders[0].named_modules()
        },
    }
    for key, lyco in theirs.items():
        if type(lyco).__name__ == "TLoraModule":  # the frozen start: each layer's own SVD at its rank
            for ours_t, theirs_t in (
                (layers[key].lora_tlora_base_q, lyco.base_q),
                (layers[key].lora_tlora_base_p, lyco.base_p),
                (layers[key].lora_tlora_base_lambda, lyco.base_lambda),
            ):
                torch.testing.assert_close(ours_t["default"], theirs_t, rtol=1e-5, atol=1e-5)

    (export,) = Path(done.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    made.apply_to(named, unet, True, True)
    missing, unexpected = made.load_state_dict(saved, strict=False)  # kohya's load_weights
    assert not unexpected and all(".base_" in k for k in missing)
    cfg = base.unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 5, cfg.cross_attention_dim, generator=generator)
    with torch.no_grad():
        unet.eval(), made.eval()
        plain = unet(x, 10, hidden).sample
        made.train(), unet.train(), trained.unet.train()
        assert draws_as_lycoris(unet, trained.unet.float(), x, hidden, plain), (
            "module_dropout changed nothing"
        )

    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])  # the loader's modules all from the file (as `loader` sets)
    fresh = build_pipeline("builtin:tiny-sd1")
    named = nn.Module()
    named.text_model = fresh.text_encoder
    loaded, _ = loader(1.0, str(export), None, named, fresh.unet, for_inference=True)
    merged = {"lora_unet": _merged(trained.unet), "lora_te": _merged(trained.text_encoders[0])}
    names = {
        **_kohya_names(trained.unet, "lora_unet"),
        **_kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    built = [*loaded.unet_loras, *loaded.text_encoder_loras]
    assert sorted(m.lora_name for m in built) == sorted(theirs)
    for lyco in built:
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        weight = _tlora_weight(lyco) if type(lyco).__name__ == "TLoraModule" else _lycoris_weight(lyco)
        torch.testing.assert_close(
            weight,
            merged[prefix][f"{names[lyco.lora_name]}.weight"],
            rtol=1e-4,
            atol=1e-4,
            msg=lyco.lora_name,
        )


@pytest.mark.parametrize("sig_type", ["last", "middle"])
def test_tlora_sig_type_starts_as_lycoris_tlora_module(sig_type, monkeypatch):
    """A block's own SVD start (LyCORIS's sig_type, a preset file's map entry's): the layer's trained and
    frozen Q, P, λ equal TLoraModule's with that sig_type bit for bit, on a Linear, a 1x1 convolution and a
    Linear narrower than the rank (LyCORIS's slices and padding), and the start is the base model's output."""
    from dbspec.runtime.lycoris_tlora import with_tlora

    from peft import LoraConfig

    _no_gc(monkeypatch)
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    own = {id(getattr(net, name)): sig_type for name in ("proj", "point", "narrow")}
    config = with_tlora(
        LoraConfig(r=4, lora_alpha=1.0, target_modules=["proj", "point", "narrow"]), sig_types=own
    )
    inject_adapter_in_model(config, net, "default")
    x = _inputs(torch.Generator().manual_seed(1))
    for name in x:
        layer, reference = getattr(net, name), getattr(base, name)
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=0, atol=0)
        lyco = tlora.TLoraModule(name, reference, 1.0, 4, 1.0, sig_type=sig_type)
        pairs = {
            "q": (layer.lora_tlora_q, lyco.q_layer.weight),
            "p": (layer.lora_tlora_p, lyco.p_layer.weight),
            "lambda": (layer.lora_tlora_lambda, lyco.lambda_layer),
            "base_q": (layer.lora_tlora_base_q, lyco.base_q),
            "base_p": (layer.lora_tlora_base_p, lyco.base_p),
            "base_lambda": (layer.lora_tlora_base_lambda, lyco.base_lambda),
        }
        for key, (ours, theirs) in pairs.items():
            assert torch.equal(ours["default"].detach(), theirs.detach()), (name, key)


# a preset file's entries with their own sig_type on an algo=tlora network: the feed-forwards `last` at dim 5
# in bypass_mode, CLIP's attention `middle`
TLORA_SIG_TYPES = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention"]

[module_algo_map.FeedForward]
sig_type = "last"
dim = 5
bypass_mode = true

[module_algo_map.CLIPAttention]
sig_type = "middle"
"""


def test_tlora_entries_own_sig_type_and_bypass_as_lycoris(tmp_path, monkeypatch):
    """lycoris-lora 4.1.3's create_network from a preset file whose entries give their own sig_type and
    bypass_mode: the converted plan's blocks start each layer from the same singular triplets (trained and
    frozen, to 1e-5), in the same forward (bypass or default) as its TLoraModule."""
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.lycoris_tlora import TloraLayer

    adapter, made, pipe, _, _ = _converted_network(tmp_path, monkeypatch, TLORA_SIG_TYPES)
    assert {b.sig_type for b in (*adapter.blocks, *adapter.text_encoder_blocks)} == {"last", "middle"}
    theirs = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert {m.sig_type for m in theirs.values()} == {"principal", "last", "middle"}
    assert {bool(m.bypass_mode) for m in theirs.values()} == {True, False}
    add_lora(pipe.unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    add_lora(pipe.text_encoder, adapter, adapter.text_encoder_targets, seed=0, component="text_encoder")
    ours = {}
    for prefix, model in (("lora_unet_", pipe.unet), ("lora_te_text_model_", pipe.text_encoder)):
        for name, layer in model.named_modules():
            if isinstance(layer, TloraLayer):
                ours[prefix + name.replace(".", "_")] = layer
    assert sorted(ours) == sorted(theirs)
    for key, lyco in theirs.items():
        layer = ours[key]
        assert (layer.tlora_sig_type, layer.r["default"]) == (lyco.sig_type, lyco.lora_dim), key
        assert layer.tlora_bypass == bool(lyco.bypass_mode), key
        for ours_t, theirs_t in (
            (layer.lora_tlora_q, lyco.q_layer.weight),
            (layer.lora_tlora_lambda, lyco.lambda_layer),
            (layer.lora_tlora_base_p, lyco.base_p),
        ):
            torch.testing.assert_close(ours_t["default"].detach(), theirs_t.detach(), rtol=1e-5, atol=1e-5)
