"""Timing and reporting core of the moekit benchmarks (`moekit bench` and the scripts in bench/).

Timing rules (METHOD.md of the device tool, DESIGN.md "Benchmarks"):
  - device time only: CUDA events around the region, median of many repetitions after warm-up;
  - inputs rotated among several sets so that their total exceeds ~4x L2 (no timing of the cache);
  - N calls captured in one CUDA graph, replays timed, divided by N (so launch gaps and Python
    overhead are not what we measure; an eager timing of a Python-heavy peer would measure its CPU);
  - the device-to-device copy bandwidth measured in the same run is the ceiling we compare to.

torch is passed in or imported inside the functions: importing this module imports no framework.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

# Nominal floor bandwidth used in NOTES.md (H100 SXM HBM3 datasheet ~3.35 TB/s; copies reach ~3.0).
FLOOR_BANDWIDTH_BYTES_PER_S = 3.0e12
L2_FALLBACK_BYTES = 50 * 2**20
ROTATION_FACTOR = 4             # working set of all rotated input sets >= 4x L2
MAX_ROTATION_SETS = 64
MAX_ROTATION_BYTES = 8 * 2**30  # never allocate more than this for rotation
GRAPH_TARGET_US = 2000.0        # aim for ~2 ms of device work per graph replay
MAX_GRAPH_CALLS = 200


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout ends with the table."""
    print(msg, file=sys.stderr, flush=True)


def module_version(name: str):
    try:
        mod = __import__(name)
        return getattr(mod, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        return None


def l2_bytes(torch) -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    size = getattr(props, "L2_cache_size", 0) or 0
    return int(size) if size > 0 else L2_FALLBACK_BYTES


def device_info(torch, moekit=None) -> dict:
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    info = {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "l2_bytes": l2_bytes(torch),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": module_version("triton"),
        "python": platform.python_version(),
        "host": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if moekit is not None:
        info["moekit"] = getattr(moekit, "__version__", "unknown")
    te = module_version("transformer_engine")
    if te is not None:
        info["transformer_engine"] = te
    return info


def rotation_count(bytes_per_set: int, l2: int, *, factor: int = ROTATION_FACTOR,
                   max_sets: int = MAX_ROTATION_SETS, max_bytes: int = MAX_ROTATION_BYTES) -> int:
    """How many input sets to rotate among so that together they exceed factor x L2."""
    bytes_per_set = max(int(bytes_per_set), 1)
    wanted = math.ceil(factor * l2 / bytes_per_set)
    affordable = max(max_bytes // bytes_per_set, 1)
    return int(max(1, min(wanted, max_sets, affordable)))


def _events(torch, n):
    return [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(n)]


def _side_stream(torch):
    """Graph capture needs a non-default stream; use the caller's if it already is one."""
    cur = torch.cuda.current_stream()
    if cur == torch.cuda.default_stream():
        return torch.cuda.Stream()
    return cur


def _time_eager(torch, fn, inputs_list, reps, batch):
    """Median device time per call of `batch` back-to-back calls between two events."""
    n = len(inputs_list)
    pairs = _events(torch, reps)
    k = 0
    for start, end in pairs:
        start.record()
        for _ in range(batch):
            fn(*inputs_list[k % n])
            k += 1
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 / batch for s, e in pairs]


def _capture(torch, fn, inputs_list, calls, stream):
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for k in range(calls):
            fn(*inputs_list[k % len(inputs_list)])
    graph.replay()  # first replay uploads the graph
    stream.synchronize()
    return graph


def _replay_times(torch, graph, stream, reps):
    pairs = _events(torch, reps)
    for start, end in pairs:
        start.record(stream)
        graph.replay()
        end.record(stream)
    stream.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in pairs]


def _time_graph(torch, fn, inputs_list, reps, calls=None):
    """CUDA-graph timing: median replay time / calls, rotating inputs inside the graph.

    Without `calls`, a probe graph of one call per input set measures the device time per call
    (no launch overhead, unlike an eager estimate), and the final graph holds enough calls for
    about GRAPH_TARGET_US of work per replay (a multiple of the number of sets).
    """
    n = len(inputs_list)
    stream = _side_stream(torch)
    graphs = []
    try:
        with torch.cuda.stream(stream):
            fn(*inputs_list[0])  # warm-up on the capture stream itself
            stream.synchronize()
            if calls is None:
                graphs.append(_capture(torch, fn, inputs_list, n, stream))
                per_call = statistics.median(_replay_times(torch, graphs[-1], stream, 3)) / n
                calls = n * max(1, min(MAX_GRAPH_CALLS // n, math.ceil(GRAPH_TARGET_US / max(per_call, 1e-3) / n)))
            if not graphs or calls != n:
                graphs.append(_capture(torch, fn, inputs_list, calls, stream))
            samples = _replay_times(torch, graphs[-1], stream, reps)
        return [t / calls for t in samples], calls
    finally:
        graphs.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _syncs(torch, fn, inputs):
    """Whether fn(*inputs) synchronizes the host with the device (which a CUDA graph cannot capture)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn(*inputs)
        return False
    except RuntimeError:
        return True
    finally:
        torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.synchronize()


def time_fn(fn, inputs_list, *, reps: int = 100, warmup: int = 5, mode: str = "auto",
            graph_calls: int | None = None) -> dict:
    """Time fn(*inputs) rotating over inputs_list; device microseconds per call (median).

    mode: "auto" or "graph": N calls captured in a CUDA graph (device time, launch gaps and Python
    overhead excluded), falling back to eager timing if the capture fails (said in "note");
    "eager": back-to-back calls between two events (what a launch-bound eager loop sees).
    Returns {"us", "p10_us", "p90_us", "mode", "calls_per_sample", "reps", "sets", "note"}.
    """
    import torch

    n = len(inputs_list)
    if n == 0:
        raise ValueError("time_fn needs at least one input set")
    for k in range(max(warmup, n)):  # every set at least once (compiles, autotunes, caches)
        fn(*inputs_list[k % n])
    torch.cuda.synchronize()

    note = ""
    samples = None
    if mode == "auto" and _syncs(torch, fn, inputs_list[0]):
        # A failed capture leaves torch's CUDA generator in capture mode (later torch.randn calls fail),
        # so an op that syncs the host is timed eagerly without trying.
        note = "syncs the host (boolean indexing, .item(), ...): eager timing"
        log(f"  note: {note}")
        mode = "eager"
    if mode in ("auto", "graph"):
        try:
            samples, calls = _time_graph(torch, fn, inputs_list, reps, graph_calls)
            used = "graph"
        except Exception as exc:  # noqa: BLE001 - uncapturable op: time it eagerly instead
            note = f"graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); eager timing"
            log(f"  note: {note}")
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001
                pass
    if samples is None:
        # A rough per-call estimate sizes the batch: ~GRAPH_TARGET_US per sample, every set visited.
        estimate = statistics.median(_time_eager(torch, fn, inputs_list, 3, max(n, 4)))
        calls = int(max(n, min(50, math.ceil(GRAPH_TARGET_US / max(estimate, 1e-3)))))
        samples = _time_eager(torch, fn, inputs_list, max(reps // 2, 5), calls)
        used = "eager"
    samples.sort()
    return {
        "us": statistics.median(samples),
        "p10_us": samples[int(0.1 * (len(samples) - 1))],
        "p90_us": samples[int(0.9 * (len(samples) - 1))],
        "mode": used,
        "calls_per_sample": calls,
        "reps": len(samples),
        "sets": n,
        "note": note,
    }


def copy_ceiling(torch, nbytes: int = 2 * 2**30, reps: int = 20) -> dict:
    """Device-to-device copy bandwidth: (bytes read + bytes written) / median time."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    pairs = _events(torch, reps)
    for start, end in pairs:
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    times_s = sorted(s.elapsed_time(e) * 1e-3 for s, e in pairs)
    t = statistics.median(times_s)
    del src, dst
    torch.cuda.empty_cache()
    moved = 2 * nbytes
    return {"bytes": moved, "us": t * 1e6, "gbs": moved / t / 1e9,
            "spread_pct": 100.0 * (times_s[-1] - times_s[0]) / t}


def launch_floor(torch) -> dict:
    """The harness's own floor for small cells: one tiny kernel (a 1-element add) per call, timed as
    every cell is (graph replay over rotated inputs), so that a decode-size cell's microseconds can
    be read against what a launch alone costs here."""
    inputs = [(torch.zeros(1, device="cuda"),) for _ in range(64)]
    return time_fn(lambda x: x.add_(1.0), inputs, reps=50)


def floor_us(nbytes: int, bandwidth: float = FLOOR_BANDWIDTH_BYTES_PER_S) -> float:
    return nbytes / bandwidth * 1e6


def fmt_num(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def format_table(headers, rows) -> str:
    """Aligned text table; text columns left-aligned, everything else right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = []
    for i in range(len(headers)):
        col = [r[i] for r in cells[1:]]
        numeric.append(all(_looks_numeric(c) for c in col) if col else False)
    lines = []
    for j, row in enumerate(cells):
        parts = [c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    if text in ("n/a", "-", ""):
        return True
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return False


def write_json(out_dir: str, name: str, payload: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=_json_default)
        fh.write("\n")
    return path


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
