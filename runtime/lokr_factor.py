"""LoKr's Kronecker split as LyCORIS's LokrModule makes it, on peft's LoKr layers.

peft's `peft.tuners.lokr.layer.factorization(dim, factor)` returns (factor, dim / factor) whenever the factor
divides the dimension, the factor first even when it is the larger part; LyCORIS's
`lycoris.functional.general.factorization` (what kohya's `lycoris.kohya` network trains with) always puts the
smaller part first. LyCORIS's LokrModule builds `lokr_w1` from the first part of each split (out_l x in_m) and
`lokr_w2` from the second, so with a factor above the square root of a dimension (dim 320, factor 32: peft
(32, 10), LyCORIS (10, 32)) the two train other Kronecker structures and save other shapes. LyCORIS's
`unbalanced_factorization` also swaps the output split (out_l, out_k = out_k, out_l), the input one kept.

`lycoris_factors` swaps peft's module-level `factorization` for LyCORIS's while peft builds its LoKr layers
(peft's `update_layer` splits the input dimension first, then the output one, for Linear, Conv1d and
Conv2d alike); the layers keep peft's classes, parameter names and saved layout, and draw their random init
in the same order. `plan.adapter.lokr_factorization` says which split a run trains ("peft" for runs saved
before, which keep their shapes and resume)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from dbspec.plan.lokr import factorization


class _Splits:
    """peft's `factorization` as LyCORIS's; with `unbalanced` every second call (the output dimension's
    split, peft asking for the input's first) swapped. `factors`: the layers (peft's module keys) split by a
    factor of their own (a block's `factor`); `shapes`: layers whose (output, input) splits are given (read
    off saved weights); `unbalanced_layers`: layers whose block sets its own unbalanced_factorization."""

    def __init__(
        self,
        unbalanced: bool,
        factors: dict | None = None,
        shapes: dict | None = None,
        unbalanced_layers: dict[str, bool] | None = None,
    ) -> None:
        self.unbalanced = unbalanced
        self.factors = factors or {}
        self.shapes = shapes or {}
        self.unbalanced_layers = unbalanced_layers or {}
        self.layer = ""  # the layer peft is building (set by lycoris_factors' _create_and_replace)
        self.calls = 0

    def __call__(self, dimension: int, factor: int = -1) -> tuple[int, int]:
        self.calls += 1
        if self.layer in self.shapes:
            out_split, in_split = self.shapes[self.layer]
            return in_split if self.calls % 2 else out_split
        m, n = factorization(dimension, self.factors.get(self.layer, factor))
        if self.unbalanced_layers.get(self.layer, self.unbalanced) and self.calls % 2 == 0:
            return n, m
        return m, n


@contextmanager
def lycoris_factors(
    unbalanced: bool = False,
    factors: dict | None = None,
    shapes: dict | None = None,
    options: dict[str, dict[str, bool]] | None = None,
    unbalanced_layers: dict[str, bool] | None = None,
) -> Iterator[None]:
    """peft builds its LoKr layers with LyCORIS's split (module docstring) inside the block; `factors` /
    `shapes` / `unbalanced_layers` (by module path): layers with a factor, splits or an unbalanced output
    split of their own (_Splits); `options` (by module path): layers built with a peft LoKrConfig
    `decompose_both` / `use_effective_conv2d` of their own (a block's, LyCORIS's map entries)."""
    from peft.tuners.lokr import layer
    from peft.tuners.lokr.model import LoKrModel

    original, create = layer.factorization, LoKrModel._create_and_replace
    splits = _Splits(unbalanced, factors, shapes, unbalanced_layers)
    options = options or {}

    def create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        splits.layer = current_key  # peft splits the layer's dimensions inside, by the module's path
        if current_key in options:  # update_layer reads these off the config it is handed
            config = dataclasses.replace(config, **options[current_key])
        return create(self, config, adapter_name, target, target_name, parent, current_key)

    layer.factorization, LoKrModel._create_and_replace = splits, create_and_replace
    try:
        yield
    finally:
        layer.factorization, LoKrModel._create_and_replace = original, create


def _first_factor(dims: tuple[int, int], factor: int, split: tuple[str, bool]) -> tuple[int, int]:
    """(out_l, in_m): the first Kronecker factor's shape of a layer (out, in) under `split`."""
    from peft.tuners.lokr.layer import factorization as peft_factorization

    out_dim, in_dim = dims
    if split[0] == "peft":
        return peft_factorization(out_dim, factor)[0], peft_factorization(in_dim, factor)[0]
    out = factorization(out_dim, factor)
    return (out[1] if split[1] else out[0]), factorization(in_dim, factor)[0]


def split_of_state(module, state: dict, factor: int) -> tuple[str, bool]:
    """The split ("lycoris" or "peft", unbalanced) that built the LoKr weights of peft adapter state dict
    `state` (keys without the adapter name) for `module` before injection: read off each layer's first
    factor (a folder's weights carry no plan: `dbspec sample` on a run's final/)."""
    shapes = {}
    for key, value in state.items():
        path, _, name = key.rpartition(".")
        if name == "lokr_w1":
            shapes[path] = tuple(value.shape)
        elif name == "lokr_w1_a":
            shapes[path] = (value.shape[0], state[f"{path}.lokr_w1_b"].shape[1])
    dims = {}
    for path in shapes:
        weight = module.get_submodule(path).weight
        dims[path] = (weight.shape[0], weight.shape[1])
    for split in (("lycoris", False), ("lycoris", True), ("peft", False)):
        if all(_first_factor(dims[p], factor, split) == shapes[p] for p in shapes):
            return split
    return ("layers", False)  # none fits every layer: layers with a factor of their own (shapes_of_state)


def options_of_state(state: dict, config) -> dict[str, dict[str, bool]]:
    """{path: peft LoKr options} of the saved layers built otherwise than peft's `config` says (a run whose
    [[adapter.blocks]] gave layers their own decompose_both or tucker): a low-rank first factor
    (`lokr_w1_a`) is decompose_both's, a Tucker core (`lokr_t2`) use_effective_conv2d's
    (apply_switches_for_state then makes a full_matrix layer's factors full)."""
    names: dict[str, set[str]] = {}
    for key in state:
        path, _, name = key.rpartition(".")
        names.setdefault(path, set()).add(name)
    out = {}
    for path, held in names.items():
        if not held & {"lokr_w1", "lokr_w1_a"}:
            continue
        # off where the saved factor is full: the same shapes as on (a rank at half the factor or more)
        own = {"decompose_both": "lokr_w1_a" in held, "use_effective_conv2d": "lokr_t2" in held}
        theirs = {
            "decompose_both": config.decompose_both,
            "use_effective_conv2d": config.use_effective_conv2d,
        }
        if own != theirs:
            out[path] = own
    return out


def shapes_of_state(module, state: dict) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """{path: ((out_l, out_k), (in_m, in_n))}: each LoKr layer's splits read off its saved first factor
    (a run whose [[adapter.blocks]] gave layers a factor of their own)."""
    out = {}
    for key, value in state.items():
        path, _, name = key.rpartition(".")
        if name == "lokr_w1":
            first = tuple(value.shape)
        elif name == "lokr_w1_a":
            first = (value.shape[0], state[f"{path}.lokr_w1_b"].shape[1])
        else:
            continue
        weight = module.get_submodule(path).weight  # (out, in, ...): a convolution's in per group
        out[path] = ((first[0], weight.shape[0] // first[0]), (first[1], weight.shape[1] // first[1]))
    return out
