"""LyCORIS's weight decomposition on peft's layers (runtime/lycoris_dora.py) against LyCORIS's own modules
(lycoris-lora: LoConModule, LohaModule, LokrModule with weight_decompose, what kohya's lycoris.kohya network
builds for dora_wd, with wd_on_output): the same initial dora_scale from the same base weight, and, once the
factors and magnitudes are copied over, the same forward and the same gradients (LyCORIS does not detach
the norm, unlike peft's DoRA)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_dora import LycorisDora, axis_of, dora_scale_of, initial_scale

modules = pytest.importorskip("lycoris.modules")

RANK, ALPHA = 2, 1.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 48)
        self.conv = nn.Conv2d(32, 24, 3, padding=1)


# name -> (AdapterPlan fields, LyCORIS module class, its extra arguments, {peft name: LyCORIS name})
LOCON = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora_mid": "lora_mid.weight"}
LOHA = {n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}
LOKR = {n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")}
KINDS = {
    "loha": ({"kind": "loha"}, "LohaModule", {}, LOHA),
    "loha_tucker": ({"kind": "loha", "tucker": True}, "LohaModule", {"use_tucker": True}, LOHA),
    "lokr": ({"kind": "lokr"}, "LokrModule", {"factor": -1}, LOKR),
    "lokr_both": (
        {"kind": "lokr", "decompose_both": True},
        "LokrModule",
        {"factor": -1, "decompose_both": True},
        LOKR,
    ),
    "locon": ({"kind": "lora"}, "LoConModule", {}, LOCON),
    "locon_lycoris": ({"kind": "lora", "dora_form": "lycoris"}, "LoConModule", {}, LOCON),
    "locon_tucker": ({"kind": "lora", "tucker": True}, "LoConModule", {"use_tucker": True}, LOCON),
}


def _plan(fields: dict, axis: str) -> AdapterPlan:
    """The plan the compiler makes: dora_form "lycoris" wherever LyCORIS's weight decomposition trains."""
    lycoris = fields["kind"] != "lora" or axis == "input" or fields.get("tucker") or fields.get("dora_form")
    fields = {**fields, "dora_form": "lycoris" if lycoris else "peft"}
    return AdapterPlan(
        rank=RANK,
        alpha=ALPHA,
        denoiser_targets=("lin",),
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        dora=True,
        dora_axis=axis,
        **fields,
    )


def _pair(kind: str, axis: str, layer: str):
    """(our adapted Net, LyCORIS's module on a copy of the same base layer, the name map)."""
    fields, cls, extra, names = KINDS[kind]
    net = Net()
    base = copy.deepcopy(getattr(net, layer))
    add_lora(net, _plan(fields, axis), ("lin",), seed=3, conv=True)
    lyco = getattr(modules, cls)(
        f"lora_unet_{layer}",
        base,
        1.0,
        RANK,
        ALPHA,
        weight_decompose=True,
        wd_on_out=axis == "output",
        **extra,
    )
    return net, lyco, names


def _copy_random(ours: nn.Module, lyco: nn.Module, names: dict[str, str], seed: int) -> None:
    """Random non-zero factors (and magnitudes near the base norms) into both."""
    g = torch.Generator().manual_seed(seed)
    theirs = dict(lyco.named_parameters())
    copied = 0
    with torch.no_grad():
        for peft_name, lyco_name in names.items():
            table = getattr(ours, peft_name, None)
            if table is None or "default" not in table:
                continue
            param = table["default"]
            param = param.weight if isinstance(param, nn.Module) else param
            value = torch.randn(param.shape, generator=g) * 0.3
            param.copy_(value)
            theirs[lyco_name].copy_(value.reshape(theirs[lyco_name].shape))
            copied += 1
        scale = dora_scale_of(ours, "default")
        scale.mul_(1 + 0.1 * torch.rand(scale.shape, generator=g))
        lyco.dora_scale.copy_(scale)
    assert copied >= 2


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize("layer", ["lin", "conv"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_and_gradients_equal_lycoris_module(kind, layer, axis):
    net, lyco, names = _pair(kind, axis, layer)
    ours = getattr(net, layer)
    if kind == "locon" and axis == "output":  # plain LoRA per output row keeps peft's DoRA
        assert not isinstance(ours, LycorisDora) and ours.use_dora["default"]
        return
    assert isinstance(ours, LycorisDora)
    # LyCORIS's initial magnitude: the base weight's norms on the axis, in LyCORIS's shape
    scale = dora_scale_of(ours, "default")
    assert scale.shape == lyco.dora_scale.shape and axis_of(scale.shape) == axis
    assert torch.equal(scale, lyco.dora_scale)
    assert scale.requires_grad and scale.dtype == torch.float32
    _copy_random(ours, lyco, names, seed=7)
    lyco.apply_to()
    x = torch.randn(3, 64) if layer == "lin" else torch.randn(2, 32, 6, 6)
    ours.eval(), lyco.eval()
    out, ref = ours(x), lyco.org_module[0](x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ours.base_layer(x), atol=1e-3)  # the update acts
    # gradients through the (not detached) norm: every factor and the magnitude
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    (ref * torch.linspace(-1, 1, ref.numel()).reshape(ref.shape)).sum().backward()
    theirs = dict(lyco.named_parameters())
    torch.testing.assert_close(scale.grad, theirs["dora_scale"].grad, rtol=1e-4, atol=1e-6)
    for peft_name, lyco_name in names.items():
        table = getattr(ours, peft_name, None)
        if table is None or "default" not in table:
            continue
        param = table["default"]
        param = param.weight if isinstance(param, nn.Module) else param
        theirs_grad = theirs[lyco_name].grad.reshape(param.shape)
        torch.testing.assert_close(param.grad, theirs_grad, rtol=1e-4, atol=1e-6, msg=peft_name)


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize("kind", ["loha", "lokr", "locon_tucker"])
def test_merge_is_lycoris_weight_and_unmerges(kind, axis):
    net, lyco, names = _pair(kind, axis, "conv")
    ours = net.conv
    _copy_random(ours, lyco, names, seed=9)
    ours.eval()
    x = torch.randn(2, 32, 6, 6)
    before, base = ours(x), ours.base_layer.weight.detach().clone()
    with torch.no_grad():
        if kind == "locon_tucker":
            diff = lyco.make_weight().view(lyco.shape) * lyco.scale
        else:
            diff = lyco.get_weight(lyco.shape)
        expected = lyco.apply_weight_decompose(lyco._current_weight() + diff, 1)
    ours.merge()
    torch.testing.assert_close(ours.base_layer.weight, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)
    ours.unmerge()
    torch.testing.assert_close(ours.base_layer.weight, base, rtol=0, atol=1e-6)


def test_module_dropout_skips_the_whole_update():
    fields, *_ = KINDS["loha"]
    net = Net()
    add_lora(net, AdapterPlan(**{**attrs_dict(_plan(fields, "output")), "module_dropout": 1.0}), ("lin",), 3)
    net.train()
    x = torch.randn(3, 64)
    scale = dora_scale_of(net.lin, "default")
    with torch.no_grad():
        scale.mul_(2.0)  # the update is visible when it runs
    torch.testing.assert_close(net.lin(x), net.lin.base_layer(x))
    net.eval()
    assert not torch.allclose(net.lin(x), net.lin.base_layer(x), atol=1e-3)


def test_converted_layers_pickle_by_reference():
    """A converted layer survives pickling (torch.save of a module, spawned processes): its class is a
    module-level name of dbspec.runtime.lycoris_dora, found again in a process that has not made it yet."""
    import pickle

    import dbspec.runtime.lycoris_dora as module

    net = Net()
    add_lora(net, _plan({"kind": "lokr"}, "input"), ("lin",), 3, conv=True)
    name = type(net.conv).__name__
    assert name == "LycorisDora_lokr_Conv2d" and getattr(module, name) is type(net.conv)
    data = pickle.dumps(net)
    del module._CLASSES[type(net.conv).__bases__[1]], module.__dict__[name]  # as in a fresh process
    back = pickle.loads(data)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(back.conv(x), net.conv(x), rtol=0, atol=0)
    assert type(back.conv).__name__ == name


def attrs_dict(plan: AdapterPlan) -> dict:
    import attrs

    return attrs.asdict(plan, recurse=False)


# --- the real loop: train, resume bit-exact, export, load back in LyCORIS -----------------------------------
# name -> ([adapter] table, ss_network_args expected, tensor suffixes of an adapted 3x3 conv)
RUNS = {
    "loha_dora": (  # rank and module dropout draw from the run's generators: the resume restores them too
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ndora = true\n'
        "rank_dropout = 0.2\nmodule_dropout = 0.2\n",
        {"algo": "loha", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha", "dora_scale"},
    ),
    "lokr_dora_input": (
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ndora = true\n'
        'dora_axis = "input"\n',
        {
            "algo": "lokr",
            "conv_dim": "2",
            "conv_alpha": "1",
            "factor": "-1",
            "dora_wd": "True",
            "wd_on_output": "False",
        },
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha", "dora_scale"},
    ),
    "lora_dora_input": (
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ndora = true\n'
        'dora_axis = "input"\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True", "wd_on_output": "False"},
        {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    ),
    "locon_dora_lycoris": (  # kohya's lycoris.kohya algo=locon dora_wd=True: LyCORIS's gradients
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ndora = true\n'
        'dora_form = "lycoris"\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True"},
        {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    ),
    "locon_tucker_dora": (
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ntucker = true\ndora = true\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True", "use_tucker": "True"},
        {"lora_down.weight", "lora_mid.weight", "lora_up.weight", "alpha", "dora_scale"},
    ),
    "loha_tucker_dora_input": (
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ntucker = true\ndora = true\n'
        'dora_axis = "input"\n',
        {
            "algo": "loha",
            "conv_dim": "2",
            "conv_alpha": "1",
            "dora_wd": "True",
            "use_tucker": "True",
            "wd_on_output": "False",
        },
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"},
    ),
}


@pytest.fixture
def lycoris_loader(monkeypatch):
    """lycoris-lora's kohya file loader (as tests/runtime/test_lycoris.py's `loader`). It builds every module
    with its default wd_on_out=True whatever the file holds: kohya builds the network from ss_network_args
    (`wd_on_output`), so for a file whose args say wd_on_output=False the modules are built with that
    (LyCORIS's own make_module_from_state_dict then copies the file's dora_scale in)."""
    from lycoris import kohya
    from lycoris.modules.base import LycorisBaseModule

    network = kohya.LycorisNetworkKohya
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])

    def load(export: Path, named, unet, args: dict[str, str]):
        if args.get("wd_on_output") == "False":
            for cls in {m for m in modules.MODULE_LIST if issubclass(m, LycorisBaseModule)}:
                init = cls.__init__

                def patched(self, *a, __init=init, **kw):
                    kw["wd_on_out"] = False
                    __init(self, *a, **kw)

                monkeypatch.setattr(cls, "__init__", patched)
        return kohya.create_network_from_weights(1.0, str(export), None, named, unet, for_inference=True)

    return load


# the runs that also resume bit-exact: DoRA's magnitudes per output row (LoHa's, with its dropouts' draws)
# and per input column (LoRA's); the others' magnitudes and factors are state of the same kinds and train
# and load back only (test_lycoris resumes the plain dora run, LoCon's factors with DoRA's scales, and loha;
# LoKr's factors resume in test_lycoris_mixed_file's [lokr-tucker-lora-loha] case)
RESUMED = ("loha_dora", "lora_dora_input")


@pytest.mark.parametrize("kind", list(RUNS))
def test_lycoris_dora_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, kind, lycoris_loader):
    from safetensors import safe_open

    from dbspec.runtime.execute import execute
    from dbspec.runtime.sample import SampleRequest, load_pipeline
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec, write_spec
    from tests.runtime.test_lycoris import SPEC, _files, _kohya_names, _lycoris_weight, _merged, _unet_output

    table, args, conv_suffixes = RUNS[kind]
    spec = write_spec(tmp_path, steps=2, extra=SPEC.format(adapter=table))  # stopped after 1, resumed
    lr = ["optimizer.lr=1e-2"]  # large enough that two steps move every factor and magnitude visibly
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    assert whole.status == "finished" and "dbspec.kohya.safetensors" in _files(Path(whole.final))
    if kind in RESUMED:
        assert execute(plan, stop_after=1).status == "interrupted"
        second = execute(plan, resume=True)
        assert second.status == "finished" and second.steps == 2
        assert second.losses and whole.losses[-len(second.losses) :] == second.losses
        ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
        assert ours.keys() == resumed.keys()
        for name, tensors in ours.items():
            assert tensors.keys() == resumed[name].keys()
            assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert json.loads(metadata["ss_network_args"]) == args
    assert metadata["ss_network_module"] == "lycoris.kohya"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert {k.split(".", 1)[1] for k in keys if k.startswith(conv + ".")} == conv_suffixes
    tensors = load_file(str(export))
    axis = "input" if args.get("wd_on_output") == "False" else "output"
    scale = tensors[f"{conv}.dora_scale"]  # LyCORIS's shape for the axis: (320, 1, 1, 1) or (1, 320, 1, 1)
    assert scale.shape == ((32, 1, 1, 1) if axis == "output" else (1, 32, 1, 1)), scale.shape

    trained = whole.components
    for module in (trained.unet, *trained.text_encoders):
        module.eval()
    fresh = build_pipeline(plan.model.base)
    base_output = _unet_output(fresh.unet)
    # every magnitude moved away from the base weight's norms: DoRA trained
    base_conv = fresh.unet.get_submodule("down_blocks.0.resnets.0.conv1").weight
    assert not torch.allclose(scale, initial_scale(base_conv, axis), atol=1e-4)
    named = torch.nn.Module()
    named.text_model = fresh.text_encoder
    network, weights = lycoris_loader(export, named, fresh.unet, args)
    adapted = [
        m
        for m in (*trained.unet.modules(), *trained.text_encoders[0].modules())
        if isinstance(m, BaseTunerLayer)
    ]
    lycos = [*network.unet_loras, *network.text_encoder_loras]
    assert len(lycos) == len(adapted) and network.text_encoder_loras
    assert all(lyco.wd and lyco.wd_on_out == (axis == "output") for lyco in lycos)
    merged = {"lora_unet": _merged(trained.unet), "lora_te": _merged(trained.text_encoders[0])}
    names = {
        **_kohya_names(trained.unet, "lora_unet"),
        **_kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    for lyco in lycos:  # LyCORIS's decomposed weight of each loaded module against our merge
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        ours_weight = merged[prefix][f"{names[lyco.lora_name]}.weight"]
        torch.testing.assert_close(
            _lycoris_weight(lyco), ours_weight, rtol=1e-4, atol=1e-4, msg=lyco.lora_name
        )
    # LyCORIS's forward on the fresh model against the trained model's
    network.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)
    network.load_state_dict(weights, strict=False)
    trained_output = _unet_output(trained.unet)
    torch.testing.assert_close(_unet_output(fresh.unet), trained_output, rtol=1e-4, atol=1e-4)
    ids = torch.randint(0, 500, (2, 77), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours_text = trained.text_encoders[0](ids).last_hidden_state
        torch.testing.assert_close(fresh.text_encoder(ids).last_hidden_state, ours_text, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base_output, trained_output, atol=1e-3)
    # final/ in peft's layout (with the dora_scale weights): `dbspec sample` puts it back on the base model
    pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))
    assert any(isinstance(m, LycorisDora) for m in pipe.unet.modules())
    torch.testing.assert_close(_unet_output(pipe.unet), trained_output, rtol=1e-5, atol=1e-5)
