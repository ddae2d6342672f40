"""LoCon, DoRA, LoHa and LoKr: each trains a tiny model through the real loop, resumes bit-exact, and its
kohya/LyCORIS export loads back in LyCORIS's own loader (lycoris-lora, what kohya's lycoris.kohya network and
the A1111/ComfyUI formats follow) with the trained model's weights and outputs. A loader of our own would only
check dbspec against itself."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.sample import SampleError, SampleRequest, load_pipeline
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# name -> ([adapter] table, ss_network_args expected, tensor suffixes every adapted conv layer has)
KINDS = {
    "locon": (
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n',
        {"conv_dim": "2", "conv_alpha": "1"},
        {"lora_down.weight", "lora_up.weight", "alpha"},
    ),
    "dora": (
        'kind = "lora"\nrank = 2\ndora = true\nconv_rank = 2\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "2", "dora_wd": "True"},
        {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    ),
    "loha": (
        # rank and module dropout draw from the run's generators: the resume must restore them too
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n'
        "rank_dropout = 0.2\nmodule_dropout = 0.2\n",
        {"algo": "loha", "conv_dim": "2", "conv_alpha": "1"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    ),
    "lokr": (  # rank 2 keeps the large factor low-rank on every layer of the tiny model
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n',
        {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "factor": "-1"},
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    ),
    "loha_tucker": (  # LyCORIS use_tucker: the 3x3 convolutions as a core and two matrices per product
        # (runtime/loha_weight.py: LyCORIS's gradients), with rank dropout rescaled (rank_dropout_scale)
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ntucker = true\n'
        "rank_dropout = 0.2\nrank_dropout_scale = true\n",
        {"algo": "loha", "conv_dim": "2", "conv_alpha": "1", "use_tucker": "True"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"},
    ),
    "lokr_tucker": (
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ntucker = true\n',
        {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "use_tucker": "True", "factor": "-1"},
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"},
    ),
    "locon_tucker": (  # LyCORIS LoCon use_tucker: 1x1 lora_down, k x k lora_mid, 1x1 lora_up
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\ntucker = true\n'
        # kohya's networks.lora dropouts and multiplier act on the down -> mid chain's output
        "rank_dropout = 0.2\nmodule_dropout = 0.2\ndown_dropout = 0.1\n",
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "use_tucker": "True"},
        {"lora_down.weight", "lora_mid.weight", "lora_up.weight", "alpha"},
    ),
    "lokr_factor": (  # factor 16 is above the square root of the tiny model's widths: LyCORIS's split there
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nfactor = 16\n',
        {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "factor": "16"},
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    ),
    "lokr_full": (  # rank 64 trains both Kronecker factors in full: the export bakes alpha / rank into w1
        'kind = "lokr"\nrank = 64\nalpha = 16.0\n',
        {"algo": "lokr", "factor": "-1"},
        set(),
    ),
}
# diffusers 0.42 drops dora_scale for SD pipelines ("not compatible in Diffusers at the moment"): LyCORIS
# checks DoRA.
DIFFUSERS_LOADS = ("locon",)
SPEC = """
[adapter]
{adapter}
[train]
text_encoder = true

[checkpoints]
every = 2
exports = ["kohya_lora"]
"""


def _merged(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft's own merge of a trained copy: each adapted layer's weight with its update folded in (DoRA
    too)."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    return {k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if ".base_layer." in k}


def _lycoris_weight(lyco) -> torch.Tensor:
    """The weight LyCORIS's forward uses for a loaded module: base + its update (LoCon: make_weight x scale,
    LoHa/LoKr: get_weight, which applies alpha / rank), renormalised for DoRA."""
    with torch.no_grad():
        base = lyco._current_weight()
        if type(lyco).__name__ == "LoConModule":
            diff = lyco.make_weight().view(lyco.shape) * lyco.scale
        else:
            diff = lyco.get_weight(lyco.shape)
        return lyco.apply_weight_decompose(base + diff, 1) if lyco.wd else base + diff


def _kohya_names(module: torch.nn.Module, prefix: str, path=lambda n: n) -> dict[str, str]:
    return {
        f"{prefix}_{path(n)}".replace(".", "_"): n
        for n, m in module.named_modules()
        if isinstance(m, BaseTunerLayer)
    }


def _unet_output(unet, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 700]), context).sample


def _files(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(folder)): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture
def loader(monkeypatch):
    """lycoris-lora's kohya loader. It first builds a network from its default preset, which (4.1.3) names the
    SD UNet's time embedding twice (the `TimestepEmbedding` class and the name `time_embedding.linear_1`) and
    asserts; with empty targets it builds nothing there and every module comes from the file's weights."""
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in (
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    ):
        monkeypatch.setattr(network, attr, [])
    return lycoris_kohya.create_network_from_weights


# lycoris-lora 4.1.3's file loader (LokrModule.make_module_from_state_dict) reads a Tucker LoKr's rank off
# `lokr_w2_a.size(1)`, which in the Tucker layout (rank, out split) is the output split, and builds a module
# of the wrong shape: those files are checked against LyCORIS's LokrModule built with use_tucker (below).
FILE_LOADER_KINDS = [k for k in KINDS if k != "lokr_tucker"]


def trains_resumes_and_loads_back_in_lycoris(
    tmp_path, kind, loader, steps: int = 4, resume: bool = True
) -> None:
    """trained_resumed_and_loaded_in_lycoris's checks, its run not kept."""
    trained_resumed_and_loaded_in_lycoris(tmp_path, kind, loader, steps, resume)


def trained_resumed_and_loaded_in_lycoris(tmp_path, kind, loader, steps: int = 4, resume: bool = True):
    """`kind` (a KINDS entry) trains `steps` steps; the run stopped after half of them and resumed ends with
    the same files bit for bit; its kohya export loads back in LyCORIS as below. Two steps (stopped after
    one) prove what four do: the resumed step restores every generator and the optimizer's state, and the
    trained model's outputs still differ from the base model's (checked below). `resume` False: the run
    alone, for a variant whose kinds of saved state another run already resumes (the caller names it).
    Returns the uninterrupted run (its models kept) and its plan's sample settings, for a caller's further
    checks on that run."""
    table, args, conv_suffixes = KINDS[kind]
    spec = write_spec(tmp_path, steps=steps, extra=SPEC.format(adapter=table))
    lr = ["optimizer.lr=1e-2"]  # large enough that two steps move every factor visibly
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    assert whole.status == "finished" and whole.steps == steps
    assert "dbspec.kohya.safetensors" in _files(Path(whole.final))
    if resume:
        assert execute(plan, stop_after=steps // 2).status == "interrupted"
        second = execute(plan, resume=True)
        assert second.status == "finished" and second.steps == steps
        ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
        assert ours.keys() == resumed.keys()
        for name, tensors in ours.items():
            assert tensors.keys() == resumed[name].keys()
            assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name

    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert json.loads(metadata["ss_network_args"]) == args
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"  # sd-scripts' name of a 3x3 ResNet convolution
    assert {k.split(".", 1)[1] for k in keys if k.startswith(conv + ".")} == conv_suffixes
    if kind == "lokr_full":  # both factors full on every layer: the case whose scale goes into lokr_w1
        assert any(k.endswith(".lokr_w2") for k in keys) and not any(".lokr_w2_" in k for k in keys)

    trained = whole.components
    for module in (trained.unet, *trained.text_encoders):
        module.eval()  # dropout off: compare the adapters themselves
    fresh = build_pipeline(plan.model.base)
    base_output = _unet_output(fresh.unet)
    # kohya names CLIP's modules `text_model.*`, a level transformers >= 5.6 no longer has: LyCORIS names them
    # from the module it gets, so it gets one holding the encoder under that name.
    named = torch.nn.Module()
    named.text_model = fresh.text_encoder
    if kind == "lokr_factor":
        # lycoris-lora 4.1.3's file loader guesses each module's factor from its shapes and gets some of these
        # wrong (it would fail on kohya's file alike): LyCORIS's kohya network built from the same arguments,
        # as kohya's --network_weights does, with every factor's shape checked, loads the file instead
        network = _lycoris_network(fresh, named, plan, export, args)
        weights = load_file(str(export))
    else:
        network, weights = loader(1.0, str(export), None, named, fresh.unet, for_inference=True)
    modules = [*trained.unet.modules(), *trained.text_encoders[0].modules()]
    adapted = [m for m in modules if isinstance(m, BaseTunerLayer)]
    assert len(network.unet_loras) + len(network.text_encoder_loras) == len(adapted)
    assert network.text_encoder_loras
    # Every loaded module's weight against peft's merge of the trained layer it names.
    merged = {"lora_unet": _merged(trained.unet), "lora_te": _merged(trained.text_encoders[0])}
    names = {
        **_kohya_names(trained.unet, "lora_unet"),
        **_kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    for lyco in [*network.unet_loras, *network.text_encoder_loras]:
        prefix = "lora_unet" if lyco.lora_name.startswith("lora_unet") else "lora_te"
        ours = merged[prefix][f"{names[lyco.lora_name]}.weight"]
        torch.testing.assert_close(_lycoris_weight(lyco), ours, rtol=1e-4, atol=1e-4, msg=lyco.lora_name)
    # LyCORIS's forward path (what kohya's scripts and its inference wrappers run); its merge_to scales LoHa
    # and
    # LoKr updates by alpha / rank twice in 4.1.3 (get_diff_weight on top of get_weight), unlike its forward,
    # A1111 and ComfyUI, so it is not the reference here.
    network.apply_to(named, fresh.unet, apply_text_encoder=True, apply_unet=True)
    network.load_state_dict(weights, strict=False)
    trained_output = _unet_output(trained.unet)
    torch.testing.assert_close(_unet_output(fresh.unet), trained_output, rtol=1e-4, atol=1e-4)
    ids = torch.randint(0, 500, (2, 77), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours_text = trained.text_encoders[0](ids).last_hidden_state
        torch.testing.assert_close(fresh.text_encoder(ids).last_hidden_state, ours_text, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base_output, trained_output, atol=1e-3)  # training really changed the model
    if (
        plan.adapter.kind != "lora" or plan.adapter.tucker
    ):  # final/ in peft's layout: `dbspec sample` puts it back on the base model
        with pytest.raises(SampleError, match="LoHa/LoKr"):
            load_pipeline(SampleRequest(source=export, base=plan.model.base, settings=plan.validation))
        pipe = load_pipeline(SampleRequest(source=Path(whole.output), settings=plan.validation))
        torch.testing.assert_close(_unet_output(pipe.unet), trained_output, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            theirs = pipe.text_encoder(ids).last_hidden_state
        torch.testing.assert_close(theirs, ours_text, rtol=1e-5, atol=1e-5)
    if kind in DIFFUSERS_LOADS:  # diffusers' kohya conversion takes LoRA on convolutions
        pipe = build_pipeline(plan.model.base)
        pipe.load_lora_weights(str(export))
        torch.testing.assert_close(_unet_output(pipe.unet), trained_output, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            theirs = pipe.text_encoder(ids).last_hidden_state
        torch.testing.assert_close(theirs, ours_text, rtol=1e-4, atol=1e-4)
    return whole, plan.validation


trained_resumed_and_loaded_in_lycoris.__test__ = False
# Its former test name, which test files not moved to two steps call (four steps, as they did): not a test.
trains_resumes_and_loads_back_in_lycoris.__test__ = False
test_adapter_trains_resumes_bit_exact_and_loads_back_in_lycoris = trains_resumes_and_loads_back_in_lycoris


# The kinds whose run also resumes: DoRA's (LoCon's lora_down / lora_up on linears and convolutions, with
# its scales) and LoHa's (its factors, with the rank and module dropout streams). The other forms save the
# same kinds of state through the same path: they train and load back only. LoKr's factors (lokr_w1,
# lokr_w2_a / _b, lokr_t2) resume, beside LoCon's lora_mid and LoHa's hada_t1 / hada_t2, in
# test_lycoris_mixed_file's test_mixed_preset_run_starts_from_its_file_as_lycoris[lokr-tucker-lora-loha];
# the dropouts' draws in loha's here and test_lora_dropout's.
RESUMED_KINDS = ("dora", "loha")


@pytest.mark.parametrize("kind", FILE_LOADER_KINDS)
def test_each_kind_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, kind, loader):
    trains_resumes_and_loads_back_in_lycoris(tmp_path, kind, loader, steps=2, resume=kind in RESUMED_KINDS)


@pytest.fixture(scope="module")
def sdxl_names():
    """The module names an adapter of `kind` on tiny SDXL's U-Net (attention and ResNet convolutions) is
    written under, by kind; each kind's names made once, on a copy of one tiny SDXL U-Net."""
    from dbspec.plan.model import AdapterPlan
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.exports import kohya_lora_state
    from dbspec.runtime.lycoris_export import lycoris_state

    unet = build_pipeline("builtin:tiny-sdxl").unet
    made: dict[str, set[str]] = {}

    def names(kind: str) -> set[str]:
        if kind not in made:
            adapted = copy.deepcopy(unet)
            adapter = AdapterPlan(
                kind=kind, rank=2, alpha=1.0, conv_rank=2, conv_alpha=1.0, conv_targets=("conv1", "conv2")
            )
            add_lora(adapted, adapter, ("to_q", "to_out.0"), seed=0, conv=True)
            state = (kohya_lora_state if kind == "lora" else lycoris_state)(
                unet=adapted, text_encoders=[], family="sdxl", dtype="fp32"
            )
            if kind == "lora":
                state = state[0]
            made[kind] = {key.split(".")[0] for key in state}
        return made[kind]

    return names


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_sdxl_names_match_kohyas_lora_names_for_the_same_layers(kind, sdxl_names):
    """SDXL keys use the original UNet layout (kohya's SDXL UNet), as the kohya LoRA writer names them (that
    writer's names load in diffusers, tests/runtime/test_exports.py): the same layers get the same names."""
    assert sdxl_names(kind) == sdxl_names("lora")
    assert "lora_unet_input_blocks_1_0_in_layers_2" in sdxl_names(kind)  # down_blocks.0.resnets.0.conv1


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_locon_tensors_equal_the_kohya_lora_writers(family):
    """LoRA and LoCon layers go through the LyCORIS writer when DoRA or convolutions ask for it: tensor for
    tensor
    what the kohya LoRA writer (loaded by diffusers in tests/runtime/test_exports.py) writes for the same
    adapter."""
    from dbspec.plan.model import AdapterPlan
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.exports import kohya_lora_state
    from dbspec.runtime.lycoris_export import lycoris_state

    pipe = build_pipeline(f"builtin:tiny-{family}")
    adapter = AdapterPlan(
        kind="lora", rank=2, alpha=3.0, conv_rank=4, conv_alpha=1.0, conv_targets=("conv1",)
    )
    add_lora(pipe.unet, adapter, ("to_q", "proj_in"), seed=0, conv=True)
    args = {"unet": pipe.unet, "text_encoders": [], "family": family, "dtype": "fp16"}
    ours, (theirs, _) = lycoris_state(**args), kohya_lora_state(**args)
    assert ours.keys() == theirs.keys() and any(".alpha" in k and "_in_layers_2" in k for k in ours) == (
        family == "sdxl"
    )
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)


def test_tucker_lokr_trains_and_equals_lycoris_modules(tmp_path):
    """LoKr with use_tucker: every exported module loaded into LyCORIS's own LokrModule (use_tucker, the
    file's rank and alpha) gives the weight of peft's merge of the trained layer. Its Tucker factors resume
    bit-exact in test_lycoris_mixed_file (see RESUMED_KINDS)."""
    from lycoris.modules.lokr import LokrModule

    table, args, conv_suffixes = KINDS["lokr_tucker"]
    spec = write_spec(tmp_path, steps=2, extra=SPEC.format(adapter=table))
    lr = ["optimizer.lr=1e-2"]
    plan = compile_spec(spec, [*lr, "output.dir=whole"])
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        assert json.loads(handle.metadata()["ss_network_args"]) == args
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(export)).items():
        name, suffix = key.split(".", 1)
        modules.setdefault(name, {})[suffix] = tensor
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert set(modules[conv]) == conv_suffixes and modules[conv]["lokr_t2"].shape[2:] == (3, 3)
    trained = whole.components
    fresh = build_pipeline(plan.model.base)
    merged = {"lora_unet": _merged(trained.unet), "lora_te": _merged(trained.text_encoders[0])}
    names = {
        **_kohya_names(trained.unet, "lora_unet"),
        **_kohya_names(trained.text_encoders[0], "lora_te", lambda n: f"text_model.{n}"),
    }
    assert set(modules) == set(names)
    for lora_name, tensors in modules.items():
        prefix = "lora_unet" if lora_name.startswith("lora_unet") else "lora_te"
        owner = fresh.unet if prefix == "lora_unet" else fresh.text_encoder
        tucker = "lokr_t2" in tensors
        rank = tensors["lokr_t2"].shape[0] if tucker else tensors["lokr_w2_a"].shape[1]
        lyco = LokrModule(
            lora_name,
            owner.get_submodule(names[lora_name].removeprefix("text_model.")),
            1.0,
            lora_dim=rank,
            alpha=float(tensors["alpha"]),
            use_tucker=tucker,
            factor=-1,
        )
        lyco.load_state_dict(tensors)
        ours = merged[prefix][f"{names[lora_name].removeprefix('text_model.')}.weight"]
        torch.testing.assert_close(_lycoris_weight(lyco), ours, rtol=1e-4, atol=1e-4, msg=lora_name)


@pytest.mark.parametrize("unit_scale", [True, False])
def test_full_lokr_factors_train_at_lycoris_scale_one(unit_scale):
    """A LoKr layer whose two factors are both full (rank 64 on a 64 x 48 linear) is kron(w1, w2) at scale 1
    in LyCORIS's LokrModule, alpha unused; the plan's lokr_unit_scale gives peft's layer that scale (the
    compiler sets it for every LoKr plan), where peft alone keeps alpha / rank."""
    from lycoris.modules.lokr import LokrModule
    from peft.tuners.lokr import LoKrLayer

    from dbspec.plan.model import AdapterPlan
    from dbspec.runtime.adapters import add_lora

    torch.manual_seed(0)
    owner = torch.nn.Sequential()
    owner.add_module("proj", torch.nn.Linear(64, 48))
    base = copy.deepcopy(owner.proj)
    adapter = AdapterPlan(kind="lokr", rank=64, alpha=16.0, lokr_unit_scale=unit_scale)
    add_lora(owner, adapter, ("proj",), seed=0)
    layer = owner.proj
    assert isinstance(layer, LoKrLayer) and {"lokr_w1", "lokr_w2"} <= {
        k for k in ("lokr_w1", "lokr_w2") if "default" in getattr(layer, k)
    }
    with torch.no_grad():
        layer.lokr_w2["default"].normal_()  # LyCORIS starts w2 at zero: give the update a value
    lyco = LokrModule("proj", base, 1.0, lora_dim=64, alpha=16.0, factor=-1)
    with torch.no_grad():
        lyco.lokr_w1.copy_(layer.lokr_w1["default"])
        lyco.lokr_w2.copy_(layer.lokr_w2["default"])
    lyco.apply_to()
    x = torch.randn(3, 64)
    with torch.no_grad():
        same = torch.allclose(owner(x), base(x), rtol=1e-5, atol=1e-5)
    assert same == unit_scale


def _lycoris_network(fresh, named, plan, export: Path, args: dict[str, str]):
    """LyCORIS's kohya network on `fresh` from the run's network arguments, kept to the modules the export
    holds, every factor of the export shaped as LyCORIS gives it (its file loader takes the shapes from the
    file, so it cannot tell)."""
    from lycoris.modules.lokr import LokrModule
    from peft.tuners.lokr.layer import factorization as peft_factorization

    network = lycoris_kohya.LycorisNetworkKohya
    attrs = ("UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME", "TEXT_ENCODER_TARGET_REPLACE_MODULE")
    saved = {a: list(getattr(network, a)) for a in attrs}
    preset = lycoris_kohya.PRESET["full"]
    # the default preset names the time embedding twice (see `loader`): its class alone here
    names = [n for n in preset["unet_target_name"] if not n.startswith("time_embedding")]
    try:
        lycoris_kohya.PRESET["full"] = {**preset, "unet_target_name": names}
        args = {**args, "algo": "lokr"}
        made = lycoris_kohya.create_network(
            1.0, plan.adapter.rank, plan.adapter.alpha, None, named, fresh.unet, **args
        )
    finally:
        lycoris_kohya.PRESET["full"] = preset
        for attr, value in saved.items():
            setattr(network, attr, value)
    tensors = load_file(str(export))
    held = {k.split(".", 1)[0] for k in tensors}
    made.unet_loras = [m for m in made.unet_loras if m.lora_name in held]
    made.text_encoder_loras = [m for m in made.text_encoder_loras if m.lora_name in held]
    differ = 0
    for lyco in [*made.unet_loras, *made.text_encoder_loras]:
        assert isinstance(lyco, LokrModule)
        assert {f"{lyco.lora_name}.{n}" for n, _ in lyco.named_parameters()} <= set(tensors), lyco.lora_name
        for name, param in lyco.named_parameters():
            key = f"{lyco.lora_name}.{name}"
            if name.startswith("lokr_") and key in tensors:
                assert tuple(tensors[key].shape) == tuple(param.shape), key
        out_dim = lyco.shape[0]
        differ += peft_factorization(out_dim, 16) != general_factorization(out_dim, 16)
    assert differ  # the run holds layers where peft's own split would differ
    for lyco in [*made.unet_loras, *made.text_encoder_loras]:
        own = {n: tensors[f"{lyco.lora_name}.{n}"] for n in lyco.state_dict() if n != "org_weight"}
        lyco.load_state_dict(own, strict=False)
    return made


def general_factorization(dim: int, factor: int) -> tuple[int, int]:
    from lycoris.functional.general import factorization

    return factorization(dim, factor)
