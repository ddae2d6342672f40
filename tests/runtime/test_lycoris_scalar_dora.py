"""LyCORIS's `use_scalar` with `dora_wd` (adapter.scalar with LyCORIS's weight decomposition, DoRA on LoHa
and LoKr, `dora_form = "lycoris"` on LoRA/LoCon) against lycoris-lora's LoConModule, LohaModule and LokrModule
built with both: the trained scalar multiplies the update before the weight is renormalised to `dora_scale`.
The same forward once the factors, scalar and magnitude are copied over, peft's merge equal to LyCORIS's
weight, the export (scalar folded in) loaded by LyCORIS giving it too; then tiny SD models train
and load back in LyCORIS's kohya loader (tests/runtime/test_lycoris.py's check)."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_switches import layer_scalar
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime import test_lycoris_switches as switches
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

pytest.importorskip("lycoris.modules")


def _theirs_weight(lyco) -> torch.Tensor:
    """LyCORIS's rebuilt weight (its forward's): base + ΔW x scalar, renormalised to dora_scale."""
    with torch.no_grad():
        base = lyco._current_weight()
        if type(lyco).__name__ == "LoConModule":  # make_weight holds the scalar
            diff = lyco.make_weight().view(lyco.shape) * lyco.scale
        else:  # get_weight leaves it to the forward
            diff = lyco.get_weight(lyco.shape) * lyco.scalar
        return lyco.apply_weight_decompose(base + diff, 1)


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize(
    "kind, extra",
    [("lora", {}), ("lora", {"tucker": True}), ("loha", {}), ("lokr", {}), ("lokr", {"tucker": True})],
)
def test_scalar_with_dora_equals_lycoris_modules(kind, extra, axis):
    from dbspec.runtime.lycoris_export import _layers

    dora = {"dora": True, "dora_axis": axis, "dora_form": "lycoris"}
    net, base = switches._adapted(kind, scalar=True, **dora, **extra)
    x = switches._inputs(torch.Generator().manual_seed(2))
    for name in ("proj", "conv"):  # scalar 0: the base model, though the zeroed factor starts random
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    generator = torch.Generator().manual_seed(11)
    switches._randomise(net, generator)
    with torch.no_grad():  # the magnitudes away from the base norms too
        for name in ("proj", "conv"):
            scale = dora_scale_of(getattr(net, name), "default")
            scale.mul_(1 + 0.2 * torch.rand(scale.shape, generator=generator))
    x = switches._inputs(generator)
    exported = {name: (weights, alpha) for name, weights, alpha in _layers(net)}
    for name in ("proj", "conv"):
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = switches._lycoris(
            kind,
            name,
            reference,
            use_scalar=True,
            use_tucker=extra.get("tucker", False),
            weight_decompose=True,
            wd_on_out=axis == "output",
        )
        switches._copy_into(lyco, layer, scalar=True)
        with torch.no_grad():
            lyco.dora_scale.copy_(dora_scale_of(layer, "default"))
        assert float(layer_scalar(layer).detach()) != 0.0
        lyco.apply_to()
        out, ref = layer(x[name]), reference(x[name])
        assert not torch.allclose(out, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=generator)  # the scalar's gradient too
        (out * weights).sum().backward()
        (ref * weights).sum().backward()
        torch.testing.assert_close(layer_scalar(layer).grad, lyco.scalar.grad, rtol=1e-4, atol=1e-5)
        weight = _theirs_weight(lyco)
        merged = copy.deepcopy(layer)
        merged.merge()
        torch.testing.assert_close(merged.base_layer.weight, weight, rtol=1e-5, atol=1e-5)
        tensors = {k: v.detach() for k, v in exported[name][0].items()}
        assert "dora_scale" in tensors
        with torch.no_grad():  # LyCORIS's loader: the file's factors hold the scalar, loaded at scalar 1
            if axis == "output" and "lokr_t2" not in tensors:
                loaded = switches._load_like_lycoris(
                    kind, name, copy.deepcopy(getattr(base, name)), tensors, exported[name][1]
                )
            else:  # lycoris-lora 4.1.3's make_module_from_state_dict builds wd_on_out modules only
                loaded = _built(kind, name, getattr(base, name), tensors, exported[name][1], axis)
        assert float(loaded.scalar.detach()) == 1.0 and loaded.wd
        torch.testing.assert_close(_theirs_weight(loaded), weight, rtol=1e-4, atol=1e-4)


def _built(kind, name, base, tensors, alpha, axis):
    """A LyCORIS module built with the file's switches (scalar off: LyCORIS's files fold it in), its tensors
    loaded."""
    tucker = "lokr_t2" in tensors or "hada_t1" in tensors or "lora_mid.weight" in tensors
    loaded = switches._lycoris(
        kind, name, copy.deepcopy(base), use_tucker=tucker, weight_decompose=True, wd_on_out=axis == "output"
    )
    loaded.load_state_dict({**tensors, "alpha": torch.tensor(alpha)})
    return loaded


SCALAR_DORA = {
    "locon_scalar_dora": (
        'kind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\ndora = true\n'
        'dora_form = "lycoris"\n',
        {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True", "use_scalar": "True"},
        {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    ),
    "loha_scalar_dora": (
        'kind = "loha"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\ndora = true\n'
        "rank_dropout = 0.2\nmodule_dropout = 0.2\n",
        {
            "algo": "loha",
            "conv_dim": "2",
            "conv_alpha": "1",
            "dora_wd": "True",
            "use_scalar": "True",
        },
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha", "dora_scale"},
    ),
    "lokr_scalar_dora": (
        'kind = "lokr"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\ndora = true\n',
        {
            "algo": "lokr",
            "conv_dim": "2",
            "conv_alpha": "1",
            "factor": "-1",
            "dora_wd": "True",
            "use_scalar": "True",
        },
        {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha", "dora_scale"},
    ),
}


@pytest.mark.parametrize("kind", list(SCALAR_DORA))
def test_scalar_with_dora_trains_resumes_bit_exact_and_loads_back_in_lycoris(
    tmp_path,
    kind,
    loader,  # noqa: F811
    monkeypatch,
):
    """The loaded LyCORIS modules' weights: their own forward's (the scalar 1, folded into the file). The
    magnitude per output row: lycoris-lora 4.1.3's loader cannot build a per-input-column one. The runs
    train and load back; their state (a scalar, DoRA's magnitudes, each kind's weights) resumes bit-exact in
    test_lycoris_switches' locon_scalar and test_lycoris' dora / loha / lokr runs."""
    monkeypatch.setitem(lycoris_runs.KINDS, kind, SCALAR_DORA[kind])
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, kind, loader, steps=2, resume=False)
