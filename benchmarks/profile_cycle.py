"""Where the time of ``xlatda.cycle`` goes, per cycle, beside the kernel loop (issue 16).

The Lorenz-96 runs of ``bench_vs_dapper.py`` (same truth, observations and
settings) through ``xlatda.cycle``, with CPU-time counters wrapped around
its pieces (forecast, observation operator, kernel step and its diagnostics,
divergence monitor, recorder, result building; one wrapper costs ~1 us a
call, so small pieces read high), and the aten operators per cycle of the
call and of the bench's bare kernel loop (torch profiler, nested operators
included). Run::

    python benchmarks/profile_cycle.py [--method DEnKF] [--cycles 1000] [--threads 1]

``--threads`` sets torch's thread count before the calls (default: torch's
own; ``xlatda.cycle`` applies its thread policy either way). Prints a
table: microseconds of CPU time per cycle of each piece (one method per run:
the wrappers stay installed).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_dapper as bench

#: (module, attribute path, label); pieces nested in another are indented
PIECES = [
    ("xlatda.windows", "ObservationWindow.generator", "window generator"),
    ("xlatda.spaces", "PhysicalSpace.forecast", "forecast"),
    ("xlatda.dynamics.physical", "Lorenz96.step", "  model step (kernel loop too)"),
    ("xlatda.spaces", "PhysicalSpace.observe", "observe the background"),
    ("xlatda.methods.adapters", "EnsembleFilter.analyse", "adapter analyse"),
    ("xlatda.methods.ensemble", "EnsembleMethod.step", "  kernel step"),
    ("xlatda.methods.ensemble", "EnsembleMethod._cycle_step", "  kernel step (host diagnostics)"),
    ("xlatda.methods.ensemble", "_host_diagnostics", "    host diagnostics"),
    ("xlatda.methods.ensemble", "EnsembleMethod._analysis", "    the update itself"),
    ("xlatda.methods.ensemble", "_check_inputs", "    input checks"),
    ("xlatda.methods.ensemble", "spread_ratio_scaled", "    spread ratio"),
    ("xlatda.methods.consistency", "DivergenceMonitor.update", "  divergence monitor"),
    ("xlatda.cycle", "check_finite", "finiteness checks in the loop"),
    ("xlatda.cycle_records", "CycleRecorder.add", "recorder add"),
    ("xlatda.cycle_records", "CycleRecorder.result", "result (once, per cycle)"),
    ("xlatda.cycle", "_drive", "the loop (_drive)"),
]


def _wrap(acc, counts, module, path, label):
    mod = importlib.import_module(module)
    *owners, name = path.split(".")
    owner = mod
    for o in owners:
        owner = getattr(owner, o, None)
        if owner is None:
            return
    f = getattr(owner, name, None)
    if f is None:
        return

    def timed(*args, **kwargs):
        t0 = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            acc[label] += time.process_time() - t0
            counts[label] += 1

    setattr(owner, name, timed)


def profile(label: str, cycles: int, truth, obs, xx, yy) -> list[str]:
    """The table rows of one method."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    _, method, members, settings, *_ = next(r for r in bench.RUNS if r[0] == label)

    def call():
        return xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method,
                            members=members, init_std=bench.INIT_STD, seed=0, progress=False,
                            **settings)

    call()
    best = min(_cpu(call) for _ in range(3))
    kernel = min(_cpu(lambda: bench.run_kernel(label, xx, yy, 0, 0)) for _ in range(3))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    ops_cycle = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.run_kernel(label, xx, yy, 0, 0)
    ops_kernel = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    acc, counts = collections.defaultdict(float), collections.Counter()
    for piece in PIECES:
        _wrap(acc, counts, *piece)
    call()
    rows = [f"{label}: xlatda.cycle {best / cycles * 1e6:.0f} us/cycle, kernel loop "
            f"{kernel / cycles * 1e6:.0f} us/cycle (CPU, best of 3; ratio "
            f"{kernel / best:.2f}); aten ops per cycle {ops_cycle / cycles:.0f} vs "
            f"{ops_kernel / cycles:.0f}", "", "| piece (wrapped run) | us/cycle | calls |",
            "|---|---|---|"]
    rows += [f"| {k} | {v / cycles * 1e6:.1f} | {counts[k]} |" for k, v in acc.items()]
    return rows


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="DEnKF", choices=[r[0] for r in bench.RUNS[:4]])
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    truth, obs, xx, yy = bench.make_data(a.cycles, 0)
    # one method per process: the wrappers stay installed after its run
    print("\n".join(profile(a.method, a.cycles, truth, obs, xx, yy)))


if __name__ == "__main__":
    main()
