"""train.t5 with LyCORIS's other algos (issue 12; was DBS403 / DBS568): GLoRA, DyLoRA, Diag-OFT, BOFT and IA^3
on T5-XXL's attention and gated-MLP Linears, through the text encoders' runtime path (adapters.add_lora, as
on CLIP). Each is checked against lycoris-lora 4.1.3 run in-process: its create_network over the tiny T5
with a preset naming T5's classes (as lycoris.kohya builds T5 modules from a preset file or a file's
`lora_te2_` / `lora_te3_` names) builds its module on exactly the layers dbspec adapts; dbspec's layers start
at the base output, as LyCORIS's do; after a random step of every trained parameter the export's T5 keys are
LyCORIS's state_dict keys with its shapes, and LyCORIS's modules loaded from them compute dbspec's T5
output. A file of LyCORIS's own T5 modules (lycoris.kohya --network_weights into a preset's network; was
DBS403) starts dbspec's T5 layers at LyCORIS's outputs (GLoRA, Diag-OFT, BOFT, IA^3: DyLoRA loads only the
file's alphas)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dbspec.families import lycoris_text_prefixes, t5_text_encoders
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.prepare import configure_models
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# kind: (the [adapter] lines, create_network's network_dim and alpha, its other keyword arguments)
KINDS = {
    "glora": ('kind = "glora"\nrank = 2\nalpha = 1.0\n', 2, 1.0, {}),
    "dylora": (
        'kind = "dylora"\nrank = 4\nalpha = 2.0\nunit = 2\ndylora_form = "lycoris"\n',
        4,
        2.0,
        {"block_size": 2},
    ),
    "diag-oft": ('kind = "diag-oft"\nblock_size = 4\n', 4, 1.0, {}),
    "boft": ('kind = "boft"\nblock_size = 16\n', 16, 1.0, {}),
    "ia3": ('kind = "ia3"\n', 4, 1.0, {}),
}
PRESET = (
    "unet_target_module = []\nunet_target_name = []\n"
    'text_encoder_target_module = ["T5Attention", "T5DenseGatedActDense"]\n'
)


def _encoders(pipe) -> list:
    names = ["text_encoder", "text_encoder_2", "text_encoder_3"]
    return [getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None]


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("flux", "glora"),
        ("flux", "dylora"),
        ("flux", "diag-oft"),
        ("flux", "boft"),
        ("flux", "ia3"),
        ("sd3", "glora"),
    ],
)
def test_t5_adapter_of_each_lycoris_kind_is_lycoris_module(tmp_path, family, kind):
    fields, dim, alpha, extra = KINDS[kind]
    spec = write_spec(
        tmp_path, base=f"builtin:tiny-{family}", steps=1, extra=f"[adapter]\n{fields}\n[train]\nt5 = true\n"
    )
    plan = compile_spec(spec, ["model.t5_max_length=8"])
    assert plan.adapter.kind == kind and plan.adapter.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    index = ["text_encoder", "text_encoder_2", "text_encoder_3"].index(t5_text_encoders(family)[0])
    ours = comps.text_encoders[index].float().eval()
    base = _encoders(build_pipeline(f"builtin:tiny-{family}"))[index].float().eval()
    # LyCORIS's network over kohya's text-encoder list (T5-XXL last), a preset naming T5's classes
    preset = tmp_path / "t5.toml"
    preset.write_text(PRESET)
    theirs = copy.deepcopy(base)
    encoders = [*(nn.Module() for _ in range(index)), theirs]
    network = lycoris_kohya.create_network(
        1.0, dim, alpha, None, encoders, nn.Module(), preset=str(preset), algo=kind, **extra
    )
    network.apply_to(encoders, nn.Module(), apply_text_encoder=True, apply_unet=False)
    prefix = lycoris_text_prefixes(family)[-1]
    built = {m.lora_name for m in network.text_encoder_loras}
    adapted = {prefix + p.replace(".", "_") for p, m in ours.named_modules() if hasattr(m, "base_layer")}
    assert built == adapted and len(built) == 14  # tiny T5: 2 blocks x (q, k, v, o, wi_0, wi_1, wo)
    ids = torch.arange(9).unsqueeze(0) % base.config.vocab_size
    with torch.no_grad():
        plain = base(ids).last_hidden_state
        torch.testing.assert_close(ours(ids).last_hidden_state, plain, rtol=0, atol=1e-6)
        torch.testing.assert_close(theirs(ids).last_hidden_state, plain, rtol=0, atol=1e-6)
        torch.manual_seed(1)
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    encoders_ours = [*(nn.Module() for _ in range(index)), ours]  # T5-XXL is the last encoder
    state = lycoris_state(unet=None, text_encoders=encoders_ours, family=family, dtype="fp32")
    saved = {k: v for k, v in state.items() if k.startswith(prefix)}
    expected = network.state_dict()
    assert saved.keys() == expected.keys()
    assert all(saved[k].shape == expected[k].shape for k in saved)
    if kind == "dylora":  # DyLoraModule saves lora_down / lora_up, which its network rebuilds from the file
        theirs = copy.deepcopy(base)
        encoders = [*(nn.Module() for _ in range(index)), theirs]
        network, _ = lycoris_kohya.create_network_from_weights(
            1.0, None, None, encoders, nn.Module(), weights_sd=saved, for_inference=True
        )
        network.apply_to(encoders, nn.Module(), apply_text_encoder=True, apply_unet=False)
    network.load_state_dict(saved, strict=kind != "dylora")
    with torch.no_grad():
        trained = ours(ids).last_hidden_state
        assert (trained - plain).abs().max() > 1e-3
        torch.testing.assert_close(theirs(ids).last_hidden_state, trained, rtol=0, atol=1e-5)
    if kind != "dylora":  # LyCORIS's own T5 modules as a --network_weights file start dbspec's T5 layers
        _starts_from_lycoris_file(tmp_path, spec, network, theirs, index, ids, plain)


def _starts_from_lycoris_file(tmp_path, spec, network, theirs, index: int, ids, plain) -> None:
    """LyCORIS's T5 modules moved and saved as kohya's save_weights does (its state_dict) start the run's T5
    layers (init_weights with init_partial, load_weights' strict=False) at LyCORIS's outputs, to 1e-5."""
    with torch.no_grad():
        torch.manual_seed(2)
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        expected = theirs(ids).last_hidden_state
    file = tmp_path / "lycoris_t5.safetensors"
    save_file({k: v.detach().contiguous() for k, v in network.state_dict().items()}, str(file))
    # the preset's network: T5's modules alone, the denoiser untrained (so no fused layer: any
    # fused_projections fits, the plan's file check asks none)
    starts = [f"adapter.init_weights={file}", "adapter.init_partial=true", "train.denoiser=false"]
    plan = compile_spec(spec, ["model.t5_max_length=8", *starts])
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == 14
    with torch.no_grad():
        started = comps.text_encoders[index].float().eval()(ids).last_hidden_state
    assert (started - plain).abs().max() > 1e-3  # the file's modules, not a fresh start
    torch.testing.assert_close(started, expected, rtol=0, atol=1e-5)
