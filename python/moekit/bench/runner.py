"""`moekit check` and `moekit bench`: run the registered families on the GPU.

check: each family's ops on small random inputs against moekit.reference, a PASS / FAIL / SKIP line each.
bench: each family's cells timed for moekit, torch eager and torch.compile (moekit/bench/_timing.py:
CUDA-graph replay over input sets rotated past L2, median; the copy ceiling measured in the same run),
with a progress display on stderr, then the table on stdout, <out>/moekit-bench.json and .png.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
import traceback

from . import _timing as timing
from . import plot
from .registry import Unavailable, families, selects

OUT_NAME = "moekit-bench"
PEERS = ("torch eager", "torch.compile")
REPS, REPS_QUICK = 60, 30
INSTALL_HINT = "pip install 'moekit[bench]'"


class CannotRun(Exception):
    """This machine cannot run the command; the message says why (printed as is, exit status 1)."""


def setup(command):
    """(torch, moekit) with a CUDA device and the library loaded, else CannotRun with the reason."""
    try:
        import torch
    except ImportError as exc:
        raise CannotRun(f"moekit {command}: needs PyTorch with CUDA for the device arrays "
                        f"(pip install 'moekit[torch]'): {exc}") from None
    if not torch.cuda.is_available():
        raise CannotRun(f"moekit {command}: torch {torch.__version__} sees no CUDA device")
    import importlib

    import moekit

    try:
        importlib.import_module("moekit._lib")  # loads libmoekit and checks its ABI
    except ImportError as exc:
        raise CannotRun(f"moekit {command}: {exc}") from None
    return torch, moekit


# ---- check -------------------------------------------------------------------------------------------


def run_check(names=None, seed=None):
    """Print one line per op (PASS / FAIL / SKIP, with the error measured) and a summary; 0 if none failed."""
    import numpy as np

    torch, moekit = setup("check")
    reference = moekit.reference
    seed = secrets.randbits(32) if seed is None else seed
    tally = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    start = time.perf_counter()
    for index, family in enumerate(families(names)):
        rng = np.random.default_rng([seed, index])
        try:
            results = family.check(torch, moekit, reference, rng)
        except Unavailable as exc:
            results = [(op, None, str(exc)) for op in family.ops]
        except Exception as exc:  # noqa: BLE001 - a family that crashes fails, the others still run
            traceback.print_exc()
            results = [(family.name, False, f"{type(exc).__name__}: {exc}")]
        for op, ok, detail in results:
            if not selects(names, family.name, op.split(" ")[0]):
                continue
            verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
            tally[verdict] += 1
            print(f"{verdict}  {family.name:<9} {op:<46} {detail}", flush=True)
    device = torch.cuda.get_device_name()
    print(f"{tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} skipped on {device} in "
          f"{time.perf_counter() - start:.1f} s (seed {seed}: moekit check --seed {seed} repeats it)")
    return 1 if tally["FAIL"] else 0


# ---- bench -------------------------------------------------------------------------------------------


class Progress:
    """What runs now and how many cells are left, on stderr: tqdm's bar on a terminal when tqdm is
    installed, else one line redrawn in place on a terminal, or one line per step in a log."""

    def __init__(self, total):
        self.total, self.done, self.width = total, 0, 0
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True, leave=False)

    def show(self, text):
        if self.bar is not None:
            self.bar.set_description_str(text)
            return
        line = f"[{min(self.done + 1, self.total)}/{self.total}] {text}"
        if self.tty:
            line = line[: shutil.get_terminal_size().columns - 1]
            sys.stderr.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def note(self, text):
        """A line that stays (an error, a skipped family)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
            return
        self._clear()
        print(text, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self._clear()

    def _clear(self):
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            self.width = 0


def _compile(torch, fn):
    """torch.compile for one cell's static shapes; the graphs of earlier cells are dropped first."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _error(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _time_cell(torch, cell, *, l2, ceiling_gbs, reps, compile_, progress):
    sets = timing.rotation_count(cell.bytes, l2)
    if cell.footprint:  # never allocate more than MAX_ROTATION_BYTES of inputs
        sets = min(sets, max(1, timing.MAX_ROTATION_BYTES // cell.footprint))
    record = {"family": cell.family, "op": cell.op, "size": cell.label, "bytes": cell.bytes, "sets": sets,
              "params": cell.params, "timings": {}, "errors": {}, "gbs": {}}
    fns = dict(cell.fns)
    if compile_ and cell.compile and "torch eager" in fns:
        fns["torch.compile"] = _compile(torch, fns["torch eager"])
    name = f"{cell.family} {cell.op} {cell.label}"
    try:
        progress.show(f"{name} (inputs: {sets} sets)")
        inputs = [cell.make_inputs() for _ in range(sets)]
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the cell is reported empty
        record["errors"]["inputs"] = _error(exc)
        progress.note(f"{name}: inputs: {record['errors']['inputs']}")
        inputs, fns = [], {}
    for impl, fn in fns.items():
        progress.show(f"{name} ({impl})")
        try:
            record["timings"][impl] = timing.time_fn(fn, inputs, reps=reps)
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            record["errors"][impl] = _error(exc)
            progress.note(f"{name} ({impl}): {record['errors'][impl]}")
        torch.cuda.empty_cache()
    del inputs, fns
    torch.cuda.empty_cache()
    us = {impl: t["us"] for impl, t in record["timings"].items() if t.get("us")}
    record["gbs"] = {impl: cell.bytes / t / 1e3 for impl, t in us.items()}
    mine = us.get("moekit")
    peers = {p: us[p] for p in PEERS if p in us}
    best = min(peers, key=peers.get) if peers else None
    record["pct_of_copy"] = 100.0 * record["gbs"]["moekit"] / ceiling_gbs if mine else None
    record["best_peer"] = best
    record["speedup_vs_best_peer"] = peers[best] / mine if best and mine else None
    return record


def _table(records):
    headers = ["op", "size", "moekit us", "eager us", "compile us", "moekit GB/s", "% of copy",
               "x best peer"]
    rows = []
    for r in records:
        def us(impl):
            if impl in r["errors"]:
                return "error"
            return timing.fmt_num((r["timings"].get(impl) or {}).get("us"), 2)
        speedup = r["speedup_vs_best_peer"]
        rows.append([r["op"], r["size"], us("moekit"), us("torch eager"), us("torch.compile"),
                     timing.fmt_num(r["gbs"].get("moekit"), 0), timing.fmt_num(r["pct_of_copy"]),
                     "n/a" if speedup is None else f"{speedup:.2f}x"])
    return headers, rows


def run_bench(names=None, *, quick=False, out_dir="moekit-bench", compile_=True, draw=True):
    """Time the selected families' cells, print the table, write the JSON and the PNG; 0 if every cell
    timed moekit."""
    torch, moekit = setup("bench")
    started = time.perf_counter()
    cells, skipped = [], {}
    for family in families(names):
        try:
            built = family.cells(torch, moekit, quick)
        except Unavailable as exc:
            skipped[family.name] = str(exc)
            continue
        for cell in built:
            cell.family = family.name
            if selects(names, family.name, cell.op):
                cells.append(cell)
    for family, why in skipped.items():
        print(f"skipped {family}: {why}", file=sys.stderr)
    if not cells:
        raise CannotRun("moekit bench: nothing to run" + (f" ({'; '.join(skipped.values())})" if skipped else ""))

    info = timing.device_info(torch, moekit)
    progress = Progress(len(cells))
    progress.show("copy ceiling (device-to-device copy of 2 GiB)")
    ceiling = timing.copy_ceiling(torch)
    floor = timing.launch_floor(torch)
    l2 = timing.l2_bytes(torch)
    records = []
    try:
        while cells:  # popped, so that each cell's buffers go when it is done
            cell = cells.pop(0)
            records.append(_time_cell(torch, cell, l2=l2, ceiling_gbs=ceiling["gbs"], compile_=compile_,
                                      reps=REPS_QUICK if quick else REPS, progress=progress))
            progress.advance()
            del cell
    finally:
        progress.close()
    elapsed = time.perf_counter() - started

    headers, rows = _table(records)
    mode = "quick" if quick else "full"
    print(f"moekit {moekit.__version__} on {info['device']}: copy ceiling {ceiling['gbs']:.0f} GB/s, "
          f"launch floor {floor['us']:.2f} us (a 1-element kernel per call); "
          f"{len(records)} cells ({mode}{'' if compile_ else ', no torch.compile'}) in {elapsed:.0f} s")
    print(timing.format_table(headers, rows))
    payload = {"command": "moekit bench", "moekit": moekit.__version__, "mode": mode, "torch_compile": compile_,
               "ops": list(names or []), "elapsed_s": round(elapsed, 1), "device": info, "copy_ceiling": ceiling,
               "skipped": skipped, "launch_floor": floor, "records": records, "table": {"headers": headers, "rows": rows}}
    json_path = timing.write_json(out_dir, OUT_NAME, payload)
    png = None
    if draw:
        png = plot.draw(records, ceiling["gbs"], f"moekit {moekit.__version__} on {info['device']} ({mode})",
                        os.path.join(out_dir, OUT_NAME + ".png"))
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    if draw and png is None:
        print(f"no plot: matplotlib is not installed ({INSTALL_HINT})")
    return 0 if all("moekit" in r["timings"] for r in records) else 1
