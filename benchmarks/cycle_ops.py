"""Tensor operations per cycle of ``xlatda.cycle`` beside the bare kernel loop (issue 16).

A count that the machine's load does not change: the torch profiler's aten
operators (nested ones included) per analysis cycle of ``xlatda.cycle`` and
of ``bench_vs_dapper.run_kernel`` for the DEnKF, EnKF and LETKF runs of
``bench_vs_dapper.py`` (``--cycles`` cycles, seed 0, one thread); each
operator costs a few microseconds of dispatch at this size, so the
difference is the public path's tensor overhead (the rest of its overhead
is Python). Compare two trees with ``PYTHONPATH``::

    PYTHONPATH=/tmp/before python benchmarks/cycle_ops.py
    python benchmarks/cycle_ops.py [--cycles 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def count(label: str, cycles: int, data) -> tuple[float, float]:
    """aten operators per cycle of the call and of the kernel loop."""
    import bench_vs_dapper as bench
    from torch.profiler import ProfilerActivity, profile

    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    truth, obs, xx, yy = data
    _, method, members, settings, *_ = next(r for r in bench.RUNS if r[0] == label)

    def call():
        return xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method,
                            members=members, init_std=bench.INIT_STD, seed=0, progress=False,
                            **settings)

    call()  # warm-up (lazy imports, operator caches)
    out = []
    for fn in (call, lambda: bench.run_kernel(label, xx, yy, 0, 0)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        out.append(sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
                   / cycles)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=200)
    a = p.parse_args(argv)
    import bench_vs_dapper as bench
    import torch

    import xlatda

    torch.set_num_threads(1)
    data = bench.make_data(a.cycles, 0)
    print(xlatda.__file__)
    for label in ("DEnKF", "EnKF", "LETKF"):
        c, k = count(label, a.cycles, data)
        print(f"{label}: aten ops per cycle {c:.0f} (xlatda.cycle) vs {k:.0f} (kernel loop), "
              f"{c - k:.0f} beyond")


if __name__ == "__main__":
    main()
