"""In-process hooks of the library for tests and benchmarks (kernels/common/hooks.h): not a public
API, no compatibility promise.

- Tuning overrides: a knob ("router.radix_min_k", "pdl", ...) replaces a cut-off of a family's
  tuning table for every later call in the process. PRESETS names the sets that force each kernel
  path, so that tests, the sanitizer cases and the benchmarks reach every path in one process.
- Plan-only mode: on the calling thread, entry points validate and plan as usual for the given
  device properties, then record the plan instead of launching (no GPU needed).
"""

import contextlib
import importlib


def _c():
    """The loaded library (imported on first use: PRESETS needs none)."""
    return importlib.import_module(f"{__package__}._lib")

# Device properties of an H100 SXM (the plans' reference device), for plan-only mode.
H100 = dict(sm_count=132, cc_major=9, cc_minor=0, smem_per_block_optin=232448, smem_per_sm=233472)

_NO_TEAM_OR_WIDE = {"router.team_max_k": 0, "router.wide_max_k": 0}
_EVERY_TEAM_ROW = {"router.team_max_k": 9999, "router.team_any_score": 1, "router.team_pack_f32_min_t": 1,
                   "router.wide_max_k": 9999}

# name -> knobs. Each forces one family of kernel paths wherever it applies (elsewhere the plan
# falls back to the paths that do).
PRESETS = {
    # warp and block rows with K rounds (clearing rounds, or packed rounds on 16-bit softmax-post keys)
    "rounds": {"router.radix_min_k": 99999, "router.filter_min_keys_per_lane": 0, **_NO_TEAM_OR_WIDE},
    # warp and block rows with radix select
    "radix": {"router.radix_min_k": 1, "router.filter_min_keys_per_lane": 0, **_NO_TEAM_OR_WIDE},
    # warp rows with filtered top-k wherever K <= 32 (rounds behind it)
    "filtered": {"router.radix_min_k": 99999, "router.filter_min_keys_per_lane": 1, **_NO_TEAM_OR_WIDE},
    # team rows of 16 keys per lane for every score mode up to E = 512; wide rows from E = 513
    "team16": {**_EVERY_TEAM_ROW, "router.team_chunks": 2, "router.wide_min_experts": 513},
    # team rows of 8 keys per lane (128 < E <= 256); wide rows from E = 257
    "team8_wide257": {**_EVERY_TEAM_ROW, "router.team_chunks": 1, "router.wide_min_experts": 257},
}


def set_tuning(name, value):
    """Override one knob for the whole process (ValueError for an unknown name)."""
    lib = _c()
    lib.check(lib.lib.moekit_internal_set_tuning(name.encode(), int(value)))


def reset_tuning():
    """Every override gone: the tuning tables again."""
    _c().lib.moekit_internal_reset_tuning()


def tuning_names():
    return _c().lib.moekit_internal_tuning_names().decode().split()


def apply(knobs):
    """Overrides `knobs`: a dict of knob -> value, a PRESETS name, or None (nothing)."""
    if isinstance(knobs, str):
        knobs = PRESETS[knobs]
    for name, value in (knobs or {}).items():
        set_tuning(name, value)


@contextlib.contextmanager
def tuning(knobs):
    """apply(knobs) inside the block, then every override reset (blocks do not nest)."""
    try:
        apply(knobs)
        yield
    finally:
        reset_tuning()


@contextlib.contextmanager
def plan_only(device=H100):
    """Inside the block, this thread's calls plan and record instead of launching. device: a dict
    like H100, or None for the current device's properties."""
    d = device or {}
    lib = _c().lib
    lib.moekit_internal_plan_only(
        1, d.get("sm_count", 0), d.get("cc_major", 0), d.get("cc_minor", 0),
        d.get("smem_per_block_optin", 0), d.get("smem_per_sm", 0))  # fmt: skip
    try:
        yield
    finally:
        lib.moekit_internal_plan_only(0, 0, 0, 0, 0, 0)


def last_plan():
    """The plan this thread's last call recorded in plan-only mode, as {key: value} (values as str)."""
    text = _c().lib.moekit_internal_last_plan().decode()
    return dict(item.split("=", 1) for item in text.split())


def plan_of(function, *args, device=H100, **kwargs):
    """The plan `function(*args, **kwargs)` (an op of moekit) would run, without running it."""
    with plan_only(device):
        function(*args, **kwargs)
        plan = last_plan()
    if not plan:
        raise ValueError("the call recorded no plan (T == 0 launches nothing, so it has none)")
    return plan
