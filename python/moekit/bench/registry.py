"""The op families that `moekit check` and `moekit bench` run: each registers itself here.

A family gives two functions, both handed the framework and the package rather than importing them
(importing this module imports no torch):

  check(torch, moekit, reference, rng) -> [(op name, ok, detail), ...]
      small random inputs on the GPU against moekit.reference; ok is True, False, or None when the
      op is not in this build (reported as skipped);
  cells(torch, moekit, quick) -> [Cell, ...]
      what `moekit bench` times; building a cell allocates nothing on the device (make_inputs and the
      fns do, when the runner calls them), so a list of cells is cheap.

A family whose ops are missing from the library in hand may raise Unavailable from either.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

__all__ = ["Cell", "Family", "Unavailable", "register", "families", "family_names", "op_names", "selects"]

# The families that ship with moekit; importing the module registers them.
_BUILTIN_MODULES = ("moekit.bench.families", "moekit.bench.families_ffn", "moekit.bench.families_routing")


class Unavailable(Exception):
    """A family cannot run here (e.g. its ops are not in this build); the message says why."""


@dataclasses.dataclass
class Cell:
    """One benchmark cell: one op at one size, timed for each implementation in fns.

    bytes: the fewest bytes the op must move (GB/s and % of the copy ceiling count these).
    make_inputs(): a new input set (a tuple of tensors); the runner makes enough sets to rotate past L2.
    fns: {"moekit": f, "torch eager": f}, each called as f(*inputs); the runner adds "torch.compile"
    of "torch eager" unless compile is False or --no-compile.
    footprint: device bytes of one input set when more than `bytes` (caps the number of sets).
    """

    op: str
    label: str
    bytes: int
    make_inputs: Callable[[], tuple]
    fns: dict
    footprint: int | None = None
    compile: bool = True
    family: str = ""
    params: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    ops: tuple
    check: Callable
    cells: Callable
    description: str = ""


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register(name, *, ops, check, cells, description=""):
    """Register (or replace) the family `name`, whose ops are the names in `ops`."""
    family = Family(name, tuple(ops), check, cells, description)
    _FAMILIES[name] = family
    return family


def _load_builtin():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def families(names=None):
    """The registered families in registration order; with names (family or op names), those that
    hold one of them. Raises ValueError naming what is unknown."""
    _load_builtin()
    if not names:
        return list(_FAMILIES.values())
    known = set(_FAMILIES) | {op for family in _FAMILIES.values() for op in family.ops}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown op or family {', '.join(unknown)}; known families: "
                         f"{', '.join(_FAMILIES)}; ops: {', '.join(op_names())}")
    wanted = set(names)
    return [f for f in _FAMILIES.values() if f.name in wanted or wanted & set(f.ops)]


def family_names():
    _load_builtin()
    return list(_FAMILIES)


def op_names():
    _load_builtin()
    return [op for family in _FAMILIES.values() for op in family.ops]


def selects(names, family, op):
    """Whether the selection `names` (family or op names; empty: everything) takes `op` of `family`."""
    if not names or family in names:
        return True
    return op in names
