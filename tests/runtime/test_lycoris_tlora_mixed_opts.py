"""An algo=tlora network's options beside its preset file's entries (issue 12; each was DBS403): Diag-OFT /
BOFT entries with the network's `dropout` (no module reads it outside bypass_mode: TLoraModule drops in its
bypass forward alone, DiagOFTModule too, ButterflyOFTModule never), with their own `bypass_mode` (their
block's `bypass`: the bypass forward on those layers alone) and with `--scale_weight_norms` (each module's
own apply_max_norm); T-LoRA entries' own `bypass_mode` beside the network's dropout (each TLoraModule drops in
its own bypass forward alone, as each TloraLayer does). The plan's U-Net built by runtime/prepare.py (as a run
builds it) and lycoris-lora 4.1.3's network from the same network_args and file on tiny SD 1.x, holding the
same weights (TLoraModule's frozen start its own SVD of the same base weights): each module's forward mode,
eval and training-mode outputs, the generator state after each forward and every trained tensor's gradient
equal; with the max norm, apply_max_norm_regularization's count, mean and largest norm and the weights after.
"""

from __future__ import annotations

import pytest
import torch

from peft.tuners.lora import LoraLayer

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.lycoris_oft import DiagOftLayer
from dbspec.runtime.lycoris_tlora import TloraLayer
from tests.runtime.test_lycoris_algo_maps import _converted_plan, pipe  # noqa: F401 (pipe: a fixture)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of
from tests.runtime.test_lycoris_tlora import _no_gc

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# T-LoRA (the network's dim 4, alpha 1) on the transformers' attention, the entry on their feed-forwards
FILE = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.FeedForward]
algo = "{algo}"
{extra}
"""
# id: (the entry's algo, its own options, network_args): module_dropout everywhere, so the training
# forwards draw
CASES = {
    # the network's dropout, which neither TLoraModule nor DiagOFTModule / ButterflyOFTModule reads here
    "diag_oft_network_dropout": ("diag-oft", "", {"dropout": "0.1"}),
    "boft_network_dropout": ("boft", "", {"dropout": "0.1"}),
    # the entries' own bypass_mode (with the network's rank_dropout, which DiagOFTModule's bypass forward
    # never reads and TLoraModule never; BOFT's with the dropout, which ButterflyOFTModule never reads)
    "diag_oft_own_bypass": ("diag-oft", "bypass_mode = true", {"rank_dropout": "0.1"}),
    "boft_own_bypass_network_dropout": ("boft", "bypass_mode = true", {"dropout": "0.1"}),
    # T-LoRA entries' own bypass_mode beside the network's dropout: the feed-forwards drop, the attention not
    "tlora_own_bypass_network_dropout": ("tlora", "bypass_mode = true", {"dropout": "0.3"}),
    # and the reverse: the network in bypass_mode with its dropout, the feed-forwards in the default forward
    "tlora_own_default_network_bypass_dropout": (
        "tlora",
        "bypass_mode = false",
        {"bypass_mode": "True", "dropout": "0.3"},
    ),
    # the network's bypass_mode beside LoCon entries (their bypass forward: the default one), with its
    # rank_dropout LoConModule's bypass rank mask (torch.rand(rank)), which TLoraModule never reads
    "locon_network_bypass": ("locon", "", {"bypass_mode": "True"}),
    "locon_network_bypass_rank_dropout": ("locon", "", {"bypass_mode": "True", "rank_dropout": "0.3"}),
}
MODULE = "0.3"


def _built(pipe, tmp_path, monkeypatch, algo: str, extra: str, args: dict, flags: str = "", text: str = ""):  # noqa: F811
    """The converted plan, our U-Net (every trained tensor moved at random) and lycoris-lora's network and
    U-Net from the same file (FILE, or `text`) and network_args, our weights loaded into it."""
    _no_gc(monkeypatch)
    args = {**args, "module_dropout": MODULE}
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    text = text or FILE.format(algo=algo, extra=extra)
    path, plan = _converted_plan(tmp_path, "tlora_mixed", "tlora", f"{given} {flags}", text=text)
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, "tlora", path, **args)
    result = made.load_state_dict(
        lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False
    )
    assert not result.unexpected_keys, result
    assert all(k.rsplit(".", 1)[-1].startswith("base_") for k in result.missing_keys), result
    return plan, ours, made, theirs


def _mode(layer, lycoris: bool) -> bool:
    """Our layer's LyCORIS bypass_mode (a LoRA layer's: inert, the default forward's update, its rank mask in
    the plan's rank_dropout_form: LyCORIS's `lycoris`)."""
    if isinstance(layer, TloraLayer):
        return layer.tlora_bypass
    return layer.oft_bypass if isinstance(layer, DiagOftLayer) else lycoris


@pytest.mark.parametrize("case", sorted(CASES))
def test_tlora_network_options_beside_entries_are_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, extra, args = CASES[case]
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, algo, extra, args)
    a = plan.adapter
    classes = {type(m).__name__ for m in made.unet_loras}
    want = {"diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule", "tlora": "TLoraModule"}.get(
        algo, "LoConModule"
    )
    assert classes == {"TLoraModule", want}
    modes = set()
    for module in made.unet_loras:  # each layer in its module's forward, the dropout where it reads it
        layer = _layer_of(ours, module.lora_name)
        assert isinstance(layer, (TloraLayer, DiagOftLayer, LoraLayer)), module.lora_name
        assert _mode(layer, bool(module.bypass_mode)) == bool(module.bypass_mode), module.lora_name
        modes.add((type(module).__name__, bool(module.bypass_mode)))
        rate = getattr(module.drop, "p", 0.0)  # LycorisBaseModule's: handed to every module
        assert rate == float(args.get("dropout", 0)), module.lora_name
        if isinstance(layer, TloraLayer):  # the adapter's, applied in the bypass forward alone (as LyCORIS)
            assert layer.tlora_dropout == a.bypass_dropout, module.lora_name
    network = args.get("bypass_mode") == "True"
    own = "bypass_mode = true" in extra if "bypass_mode" in extra else network
    assert modes == {("TLoraModule", network), (want, own)}
    # the plan: the dropout the adapter's where some T-LoRA layer runs the bypass forward, else left out
    assert a.bypass_dropout == (float(args["dropout"]) if algo == "tlora" else 0.0)
    kind = {"tlora": "adapter", "locon": "lora"}.get(algo, algo)
    assert [(b.kind, b.bypass) for b in a.blocks] == [(kind, own)]
    if algo == "locon":  # LoConModule's in bypass_mode: the ranks
        assert (a.rank_dropout, a.rank_dropout_form) == (
            (0.3, "lycoris_bypass") if "rank_dropout" in args else (0.0, "kohya")
        )
    calm_then_dropped(ours, theirs, made, pipe.unet)
    held = {"tlora": ("lambda_layer", "q_layer"), "locon": ("lambda_layer", "lora_up")}
    held = held.get(algo, ("lambda_layer", "oft_blocks"))
    grads_as_lycoris(ours, made, held)


def test_tlora_entries_own_bypass_beside_diag_oft_entries_and_the_dropout(pipe, tmp_path, monkeypatch):  # noqa: F811
    """Both at once: the transformer blocks' T-LoRA entry in its own bypass_mode (their attention: the
    feed-forwards' Diag-OFT entry inside it takes theirs, as create_modules_ recurses) drops at the
    network's rate, proj_in / proj_out's T-LoRA layers and the Diag-OFT ones (default forward) nowhere."""
    own = '[module_algo_map.BasicTransformerBlock]\nalgo = "tlora"\nbypass_mode = true'
    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, "diag-oft", own, {"dropout": "0.3"})
    a = plan.adapter
    assert (a.bypass, a.bypass_dropout) == (False, 0.3)
    assert sorted((b.kind, b.bypass) for b in a.blocks) == [("adapter", True), ("diag-oft", False)]
    modes = set()
    for module in made.unet_loras:
        layer = _layer_of(ours, module.lora_name)
        assert _mode(layer, False) == bool(module.bypass_mode), module.lora_name
        modes.add((type(module).__name__, bool(module.bypass_mode)))
    assert modes == {("TLoraModule", True), ("TLoraModule", False), ("DiagOFTModule", False)}
    calm_then_dropped(ours, theirs, made, pipe.unet)
    grads_as_lycoris(ours, made, ("lambda_layer", "oft_blocks"))


def test_diag_oft_entries_in_bypass_mode_with_the_dropout_stop_lycoris():
    """What the converter's DBS402 says: DiagOFTModule in bypass_mode with a dropout raises on a layer's
    first training forward (its rotations times a mask shaped like the output)."""
    from lycoris.modules.diag_oft import DiagOFTModule

    layer = torch.nn.Linear(16, 32)
    module = DiagOFTModule("x", layer, 1.0, 4, 0, dropout=0.1, bypass_mode=True)
    module.apply_to()
    module.train()
    with pytest.raises(RuntimeError):
        module(torch.randn(2, 5, 16))


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_tlora_network_max_norm_beside_oft_entries_is_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """--scale_weight_norms on a T-LoRA network with Diag-OFT / BOFT entries: lycoris.kohya's
    apply_max_norm_regularization over TLoraModule (its update's norm scaled twice, its trained singular
    values scaled) and DiagOFTModule / ButterflyOFTModule (the norm of their blocks, scaled): the same count,
    mean and largest norm, and every weight after, as runtime/max_norm.py's over the plan's U-Net."""
    from dbspec.runtime.max_norm import apply_lycoris_max_norm, lycoris_norm_modules

    plan, ours, made, theirs = _built(pipe, tmp_path, monkeypatch, algo, "", {}, "--scale_weight_norms=1")
    a = plan.adapter
    assert (a.max_norm, a.max_norm_form) == (1.0, "lycoris")
    with torch.no_grad():  # every other module's trained values far above the limit, the rest as they are
        moved = [
            p for n, p in ours.named_parameters() if p.requires_grad and ("lambda" in n or "oft_blocks" in n)
        ]
        for p in moved[::2]:
            p.mul_(40.0)
    made.load_state_dict(lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32"), strict=False)
    ours.train(), theirs.train(), made.train()
    limit = 0.5
    mine = apply_lycoris_max_norm(lycoris_norm_modules(ours, []), limit)
    count, mean, largest = made.apply_max_norm_regularization(limit, "cpu")
    assert 0 < mine[0] < len(made.unet_loras)
    assert mine[0] == int(count)
    torch.testing.assert_close(
        torch.tensor([mine[1], mine[2]]), torch.tensor([float(mean), float(largest)]), rtol=1e-5, atol=1e-6
    )
    after = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    theirs_state = made.state_dict()
    compared = 0
    for key, value in after.items():
        if key.endswith(".alpha"):
            continue
        torch.testing.assert_close(
            value, theirs_state[key].reshape(value.shape), rtol=1e-5, atol=1e-6, msg=key
        )
        compared += 1
    assert compared > 20
