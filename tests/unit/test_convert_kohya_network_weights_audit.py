"""kohya `--network_weights` / `--dim_from_weights` on SD 1.x (issue 12 audit): realistic command lines and
config files with networks.lora and lycoris.kohya (LoCon, LoHa, LoKr, a preset file) over files in kohya's key
layout (`lora_unet_*` / `lora_te_*` modules as networks/lora.py and lycoris/kohya.py save them), present or
not. Each conversion and refusal that depends on them: a file of the network's kind starts the adapter
(adapter.init_weights, init_partial: load_state_dict(strict=False)); with --dim_from_weights the plan's ranks
and alphas are the file's (networks/lora.py create_network_from_weights; LyCORIS's builds each module as the
class its keys name, whatever the algo); a file kohya cannot read stops it (DBS402); a torch.save `.pt` /
`.ckpt` file converts as its .safetensors twin (another suffix, or torch's legacy format: DBS403); a file of
another kind, which kohya would load nothing of (every key unexpected to load_state_dict(strict=False)), is
refused by the plan naming the file and its first tensor (DBS356 / DBS357), as one whose ranks are not the
network's (kohya stops on load_state_dict's size mismatch); a file that is not here converts and the plan
names it (DBS357); lycoris.kohya --dim_from_weights from a file LyCORIS builds no module from stops kohya (an
empty optimizer: DBS402)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from convert_kit import (
    GPU,
    KOHYA_LORA,
    codes,
    errors,
    exact,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    out_path,
    plan_of,
    write,
)
from safetensors.numpy import save_file

from dbspec.frontend import plan_spec

LYCORIS = KOHYA_LORA.replace("networks.lora", "lycoris.kohya")
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 320 -> 320
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # 768 -> 768
RES = "lora_unet_down_blocks_0_resnets_0_conv1"  # 3x3, 320 -> 320
WEIGHTS = "--network_weights prev/w.safetensors"


def _t(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32) * 0.01


def _alpha(name: str, alpha: float) -> dict[str, np.ndarray]:
    return {f"{name}.alpha": np.array(alpha, np.float32)}


def lora(name: str, out: int, inp: int, rank: int = 4, alpha: float = 1.0, k: int = 0) -> dict:
    """networks.lora's LoRAModule (LyCORIS's LoConModule alike): lora_down, lora_up, alpha."""
    down, up = (_t(rank, inp, k, k), _t(out, rank, 1, 1)) if k else (_t(rank, inp), _t(out, rank))
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, **_alpha(name, alpha)}


def loha(name: str, out: int, inp: int, rank: int = 4, alpha: float = 1.0) -> dict:
    """LyCORIS's LohaModule on a Linear: hada_w1_a / _b, hada_w2_a / _b, alpha."""
    tensors = {"hada_w1_a": _t(out, rank), "hada_w1_b": _t(rank, inp)}
    tensors |= {"hada_w2_a": _t(out, rank), "hada_w2_b": _t(rank, inp)}
    return {f"{name}.{k}": v for k, v in tensors.items()} | _alpha(name, alpha)


def lokr(name: str, rank: int = 4, alpha: float = 1.0) -> dict:
    """LyCORIS's LokrModule on a 320 x 320 Linear (factor -1: 16 x 20), w2 low-rank."""
    tensors = {"lokr_w1": _t(16, 16), "lokr_w2_a": _t(20, rank), "lokr_w2_b": _t(rank, 20)}
    return {f"{name}.{k}": v for k, v in tensors.items()} | _alpha(name, alpha)


# LyCORIS's own wrapper's names (LycorisNetwork.LORA_PREFIX `lycoris`) for the U-Net module Q
WRAPPER_NAMES = {f"lycoris_{k[len('lora_unet_') :]}": v for k, v in lora(Q, 320, 320).items()}


def _file(tmp: Path, tensors: dict, name: str = "w.safetensors") -> None:
    (tmp / "prev").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "prev" / name))


def _plan_refusal(tmp: Path, code: str) -> str:
    planned = plan_spec(out_path(tmp), GPU)
    assert planned.plan is None
    return " ".join(d.message for d in planned.diagnostics if d.code == code)


# ---- conversions


def test_lora_file_starts_the_lora(tmp_path):
    _file(tmp_path, lora(Q, 320, 320) | lora(TE, 768, 768))
    plan = plan_of(exact(kohya_lora(tmp_path, f"--network_dim 4 --network_alpha 1 {WEIGHTS}")), tmp_path)
    a = plan.adapter
    assert a.kind == "lora" and (a.rank, a.alpha) == (4, 1.0)
    assert a.init_partial and a.init_weights.endswith("prev/w.safetensors") and a.init_layers == 2


def test_lora_dim_from_weights_takes_the_files_ranks_and_alphas(tmp_path):
    _file(tmp_path, lora(Q, 320, 320, rank=2, alpha=2.0) | lora(TE, 768, 768, rank=8, alpha=4.0))
    outcome = kohya_lora(tmp_path, f"--network_dim 32 --network_alpha 16 {WEIGHTS} --dim_from_weights")
    a = plan_of(exact(outcome), tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 4.0)  # the text encoder's (its modules the most frequent pair)
    assert any((b.rank, b.alpha) == (2, 2.0) for b in a.blocks)  # the U-Net module at its own
    assert a.blocks[-1].pattern == "^" and a.blocks[-1].rank == 0  # no module where the file has none
    assert a.init_weights.endswith("prev/w.safetensors") and a.init_layers == 2
    assert fate(outcome, "network_dim") == "inert" and fate(outcome, "dim_from_weights") == "mapped"


@pytest.mark.parametrize(
    ("algo", "tensors", "layers"),
    [
        ("locon", lora(Q, 320, 320) | lora(RES, 320, 320, k=3), 2),
        ("loha", loha(Q, 320, 320) | loha(TE, 768, 768), 2),
        ("lokr", lokr(Q), 1),
    ],
)
def test_lycoris_file_of_the_algo_starts_it(tmp_path, algo, tensors, layers):
    _file(tmp_path, tensors)
    args = f'--network_dim 4 --network_alpha 1 --network_args "algo={algo}" "preset=attn-mlp" {WEIGHTS}'
    if algo == "locon":
        args = args.replace('"preset=attn-mlp"', '"preset=full" "conv_dim=4" "conv_alpha=1"')
    outcome = kohya_lora(tmp_path, args, LYCORIS)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.init_partial and a.init_layers == layers


@pytest.mark.parametrize(
    ("tensors", "kind", "rank", "alpha"),
    [
        (loha(Q, 320, 320, alpha=2.0) | loha(TE, 768, 768, alpha=2.0), "loha", 4, 2.0),
        (lokr(Q, alpha=2.0), "lokr", 4, 2.0),
    ],
)
def test_lycoris_dim_from_weights_builds_the_files_kind(tmp_path, tensors, kind, rank, alpha):
    """create_network_from_weights reads no network_args (DBS405): the file's keys make each module."""
    _file(tmp_path, tensors)
    outcome = kohya_lora(tmp_path, f'--network_args "algo=locon" {WEIGHTS} --dim_from_weights', LYCORIS)
    assert not {"DBS402", "DBS403"} & codes(outcome) and fate(outcome, "network_args") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == (kind, rank, alpha) and a.init_weights.endswith("w.safetensors")


def test_preset_file_network_starts_from_the_file(tmp_path):
    write(
        tmp_path / "preset.toml",
        'unet_target_module = ["Transformer2DModel"]\ntext_encoder_target_module = ["CLIPAttention"]\n',
    )
    _file(tmp_path, lora(Q, 320, 320) | lora(TE, 768, 768))
    outcome = kohya_lora(tmp_path, f'--network_args "algo=locon" "preset=preset.toml" {WEIGHTS}', LYCORIS)
    a = plan_of(exact(outcome), tmp_path).adapter
    assert a.kind == "lora" and a.init_partial and a.init_layers == 2


def test_config_file_holds_the_options(tmp_path):
    """kohya's --config_file TOML: the same keys as the command line."""
    _file(tmp_path, loha(Q, 320, 320, alpha=2.0) | loha(TE, 768, 768, alpha=2.0))
    write(
        tmp_path / "cfg.toml",
        '[network]\nnetwork_args = ["algo=loha"]\nnetwork_weights = "prev/w.safetensors"\n'
        "dim_from_weights = true\n",
    )
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=LYCORIS)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("loha", 4, 2.0) and a.init_layers == 2


def _pt_file(tmp: Path, tensors: dict, name: str) -> None:
    """A torch.save file of `tensors`, as kohya's save_model_as ckpt / pt writes one (the bare state dict)."""
    import torch

    (tmp / "prev").mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}, tmp / "prev" / name)


@pytest.mark.parametrize("name", ["w.pt", "w.ckpt", "w.bin"])
@pytest.mark.parametrize("base", [KOHYA_LORA, LYCORIS])
def test_a_torch_save_file_starts_the_adapter_as_its_safetensors_twin(tmp_path, name, base):
    """kohya torch.loads a --network_weights name other than `.safetensors` (load_weights), whatever the
    suffix: the file maps to adapter.init_weights and plans as the same tensors in a .safetensors file (was
    DBS403)."""
    tensors = lora(Q, 320, 320) | lora(TE, 768, 768)
    adapters = []
    for suffix_name, folder in ((name, tmp_path / "pt"), ("w.safetensors", tmp_path / "st")):
        (_pt_file if suffix_name != "w.safetensors" else _file)(folder, tensors, suffix_name)
        args = f"--network_dim 4 --network_alpha 1 --network_weights prev/{suffix_name}"
        outcome = kohya_lora(folder, args, base)
        assert not {"DBS402", "DBS403"} & codes(outcome) and fate(outcome, "network_weights") == "mapped"
        adapters.append(plan_of(outcome, folder).adapter)
    torch_file, twin = adapters
    assert (
        torch_file.init_weights.endswith(f"prev/{name}") and torch_file.init_layers == twin.init_layers == 2
    )
    assert (torch_file.kind, torch_file.rank, torch_file.alpha) == (twin.kind, twin.rank, twin.alpha)


def test_dim_from_weights_reads_a_ckpt_files_ranks_and_alphas(tmp_path):
    _pt_file(tmp_path, lora(Q, 320, 320, rank=2, alpha=2.0) | lora(TE, 768, 768, rank=8, alpha=4.0), "w.ckpt")
    outcome = kohya_lora(tmp_path, "--network_dim 32 --network_weights prev/w.ckpt --dim_from_weights")
    a = plan_of(exact(outcome), tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 4.0) and any((b.rank, b.alpha) == (2, 2.0) for b in a.blocks)


# ---- refusals


@pytest.mark.parametrize("name", ["w.pt", "w.bin"])
@pytest.mark.parametrize("base", [KOHYA_LORA, LYCORIS])
def test_a_corrupt_torch_save_file_stops_kohya(tmp_path, base, name):
    """Any name but `.safetensors` is torch.load's in kohya, which raises on a file that is no torch.save
    zip (a `.bin` too: was DBS403 for its suffix)."""
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / name).write_bytes(b"<html>404 Not Found</html>")
    outcome = kohya_lora(tmp_path, f"--network_weights prev/{name}", base)
    assert not outcome.written and fate(outcome, "network_weights") == "invalid"
    said = messages(outcome, "DBS402")
    assert f"`{name}` is no torch.save file" in said and "torch.load" in said


def test_a_legacy_pt_file_is_dbs403_naming_what_to_do(tmp_path):
    """torch's pre-1.6 format: kohya's torch.load reads it, dbspec cannot without torch."""
    import torch

    (tmp_path / "prev").mkdir()
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in lora(Q, 320, 320).items()}
    torch.save(tensors, tmp_path / "prev" / "w.pt", _use_new_zipfile_serialization=False)
    outcome = kohya_lora(tmp_path, "--network_weights prev/w.pt --dim_from_weights")
    assert "DBS402" not in codes(outcome)
    said = messages(outcome, "DBS403")
    assert "legacy" in said and ".safetensors" in said, errors(outcome)


@pytest.mark.parametrize("base", [KOHYA_LORA, LYCORIS])
@pytest.mark.parametrize("dim", ["", "--dim_from_weights"])
def test_a_file_that_is_no_safetensors_file_stops_kohya(tmp_path, base, dim):
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "w.safetensors").write_bytes(b"<html>404 Not Found</html>")
    outcome = kohya_lora(tmp_path, f"{WEIGHTS} {dim}", base)
    assert not outcome.written and fate(outcome, "network_weights") == "invalid"
    said = messages(outcome, "DBS402")
    assert "`w.safetensors` is no safetensors file" in said and "load_file" in said


@pytest.mark.parametrize("base", [KOHYA_LORA, LYCORIS])
def test_a_torch_save_file_named_safetensors_stops_kohya(tmp_path, base):
    """kohya picks its loader by the name: a `.safetensors` name goes to safetensors' load_file, which raises
    on a torch.save zip (dbspec, which reads a file by its first bytes, would have read it)."""
    _pt_file(tmp_path, lora(Q, 320, 320), "w.safetensors")
    outcome = kohya_lora(tmp_path, WEIGHTS, base)
    assert not outcome.written and fate(outcome, "network_weights") == "invalid"
    said = messages(outcome, "DBS402")
    assert "`w.safetensors` is a torch.save file" in said and "load_file" in said


@pytest.mark.parametrize(
    ("base", "args", "tensors", "code", "named"),
    [
        (KOHYA_LORA, "", loha(Q, 320, 320), "DBS357", f"`{Q}.hada_w1_a` is not in kohya's LoRA layout"),
        (KOHYA_LORA, "", lokr(Q), "DBS357", f"`{Q}.lokr_w1` is not in kohya's LoRA layout"),
        (
            LYCORIS,
            '"algo=loha"',
            lora(Q, 320, 320),
            "DBS356",
            f"`{Q}.lora_down.weight` is not LyCORIS loha's",
        ),
        (LYCORIS, '"algo=lokr"', loha(Q, 320, 320), "DBS356", f"`{Q}.hada_w1_a` is not LyCORIS lokr's"),
        (LYCORIS, '"algo=locon"', lokr(Q), "DBS357", f"`{Q}.lokr_w1` is not in kohya's LoRA layout"),
        # LyCORIS's own wrapper (LycorisNetwork) names its modules `lycoris_*`, not kohya's `lora_unet_*`
        (LYCORIS, '"algo=locon"', WRAPPER_NAMES, "DBS357", "`lycoris_down_blocks_0"),
    ],
)
def test_a_file_of_another_kind_is_refused_naming_it(tmp_path, base, args, tensors, code, named):
    """kohya's load_state_dict(strict=False) would load none of its modules (every key unexpected; the
    alphas alone into the alpha buffers) and train a fresh network: dbspec refuses such a file, surely a
    mistake, when the plan reads it (the conversion writes it as adapter.init_weights)."""
    _file(tmp_path, tensors)
    network_args = f"--network_args {args}" if args else ""
    outcome = kohya_lora(tmp_path, f"--network_alpha 1 {network_args} {WEIGHTS}", base)
    assert outcome.written and fate(outcome, "network_weights") == "mapped"
    said = _plan_refusal(tmp_path, code)
    assert "prev/w.safetensors" in said and named in said


def test_a_file_of_other_ranks_stops_kohya_and_the_plan_names_it(tmp_path):
    """load_state_dict(strict=False) still raises on a size mismatch: the plan refuses naming the tensor."""
    _file(tmp_path, lora(Q, 320, 320, rank=8))
    outcome = kohya_lora(tmp_path, f"--network_dim 4 --network_alpha 1 {WEIGHTS}")
    assert outcome.written
    said = _plan_refusal(tmp_path, "DBS356")
    assert "w.safetensors" in said and f"`{Q}.lora_down.weight` has rank 8" in said


def test_a_file_not_here_converts_and_the_plan_names_it(tmp_path):
    outcome = kohya_lora(tmp_path, WEIGHTS)
    assert outcome.written and fate(outcome, "network_weights") == "mapped"
    said = _plan_refusal(tmp_path, "DBS357")
    assert "prev/w.safetensors" in said and "not found" in said


def test_lycoris_dim_from_weights_from_a_file_of_no_module_stops_kohya(tmp_path):
    _file(tmp_path, WRAPPER_NAMES)
    outcome = kohya_lora(tmp_path, f'--network_args "algo=locon" {WEIGHTS} --dim_from_weights', LYCORIS)
    assert not outcome.written and fate(outcome, "dim_from_weights") == "invalid"
    said = messages(outcome, "DBS402")
    assert "`w.safetensors`" in said and "empty parameter list" in said


def test_networks_lora_dim_from_weights_with_a_lycoris_file_stops_kohya(tmp_path):
    """networks.lora's create_network_from_weights takes the ranks from `lora_down` keys alone: a LoHa file
    builds no module and kohya stops on the empty optimizer (ValueError): DBS402 naming the file and
    lycoris.kohya (was DBS403; tests/unit/test_convert_kohya_weights_missing.py too)."""
    _file(tmp_path, loha(Q, 320, 320))
    outcome = kohya_lora(tmp_path, f"{WEIGHTS} --dim_from_weights")
    assert not outcome.written and fate(outcome, "dim_from_weights") == "invalid"
    said = messages(outcome, "DBS402")
    assert "`w.safetensors`" in said and "empty parameter list" in said and "lycoris.kohya" in said


@pytest.mark.parametrize("module", ["lycoris.kohya", "networks.lora_flux"])
@pytest.mark.parametrize("dim", ["", "--dim_from_weights"])
def test_flux_file_that_is_no_safetensors_file_stops_kohya(tmp_path, module, dim):
    """Every reader of the file says it alike (weights_file.report_weights): Flux's too (was DBS403 with
    --dim_from_weights, the plan's DBS357 without)."""
    from convert_kit import FLUX_LYCORIS, component_file

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    (tmp_path / "w.safetensors").write_bytes(b"<html>404 Not Found</html>")
    command = FLUX_LYCORIS.replace("lycoris.kohya", module)
    outcome = kohya(tmp_path, command=f"{command}--network_weights w.safetensors {dim}")
    assert not outcome.written and "DBS403" not in codes(outcome), errors(outcome)
    assert "`w.safetensors` is no safetensors file" in messages(outcome, "DBS402")


def test_flux_lycoris_dim_from_weights_from_a_file_of_no_module_stops_kohya(tmp_path):
    """On Flux alike (model.py's Flux / SD3 reader): LyCORIS's wrapper's `lycoris_*` names build nothing."""
    from convert_kit import FLUX_LYCORIS, component_file

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    name = "lycoris_double_blocks_0_img_attn_proj"
    tensors = {f"{name}.lora_down.weight": _t(4, 3072), f"{name}.lora_up.weight": _t(3072, 4)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    outcome = kohya(tmp_path, command=f"{FLUX_LYCORIS}--network_weights w.safetensors --dim_from_weights")
    assert not outcome.written and fate(outcome, "dim_from_weights") == "invalid"
    assert "empty parameter list" in messages(outcome, "DBS402")
