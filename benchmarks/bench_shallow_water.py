"""Benchmark of the spectral shallow-water model (xlatda.dynamics.shallow_water).

Measures

* the wall time of one model day of the Galewsky jet at 64 x 128 (T42) with
  the default time step (450 s, 192 RK4 steps), target under 2 s on 2 CPU
  cores;
* RK4 steps per second at 32 x 64, 64 x 128 and 128 x 256, for one state and
  for a batch of members, in float64 and float32;

and writes a markdown table to ``benchmarks/out/shallow_water.md``.
Every timing is the best of several repeats (the minimum is the least
disturbed by other processes on the machine).

Run ``python benchmarks/bench_shallow_water.py`` (add ``--full`` for more
repeats and the larger batch).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from xlatda.dynamics.shallow_water import ShallowWater, galewsky

OUT = Path(__file__).resolve().parent / "out" / "shallow_water.md"


def _best(fn, repeats: int) -> float:
    """Smallest wall time (s) of ``repeats`` calls of ``fn`` (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(quick: bool = True, threads: tuple[int, ...] = (2, 1)) -> list[dict]:
    """Run the benchmark and write ``benchmarks/out/shallow_water.md``.

    Parameters
    ----------
    quick : bool
        Fewer repeats and a smaller batch (about a minute per thread count on
        an idle 2-core machine).
    threads : tuple of int
        Values of ``torch.set_num_threads`` to measure with (the setting is
        restored afterwards).

    Returns
    -------
    list of dict
        One row per measurement: ``case``, ``grid``, ``threads``, ``dtype``,
        ``members``, ``dt_s``, ``steps``, ``seconds``, ``steps_per_s``,
        ``model_days_per_s``.
    """
    old = torch.get_num_threads()
    rows: list[dict] = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            rows += _measure(quick, n)
    finally:
        torch.set_num_threads(old)
    _write(rows)
    return rows


def _measure(quick: bool, threads: int) -> list[dict]:
    repeats = 3 if quick else 7
    rows: list[dict] = []

    def record(case, model, dtype, members, steps, seconds):
        rows.append(
            {
                "case": case,
                "grid": f"{model.nlat}x{model.nlon} (T{model.sht.lmax})",
                "threads": threads,
                "dtype": str(dtype).replace("torch.", ""),
                "members": members,
                "dt_s": model.dt,
                "steps": steps,
                "seconds": seconds,
                "steps_per_s": steps / seconds,
                "model_days_per_s": steps * model.dt / 86400.0 / seconds,
            }
        )

    # one model day at 64 x 128
    model = ShallowWater(64, 128)
    x = galewsky(64, 128)
    steps = round(86400.0 / model.dt)
    with torch.inference_mode():
        for dtype in (torch.float64, torch.float32):
            xd = x.to(dtype)
            sec = _best(lambda xd=xd: model.integrate(xd, steps, every=steps), repeats + 2)
            record("one model day", model, dtype, 1, steps, sec)

        # steps per second
        sizes = [(32, 64), (64, 128), (128, 256)]
        batches = [1, 8] if quick else [1, 8, 32]
        for nlat, nlon in sizes:
            model = ShallowWater(nlat, nlon)
            n = 24 if nlat < 128 else 8
            for members in batches:
                speeds = torch.linspace(70.0, 90.0, members)
                xb = galewsky(nlat, nlon, jet_speed=speeds)
                for dtype in (torch.float64, torch.float32):
                    xd = xb.to(dtype)
                    sec = _best(lambda m=model, xd=xd, n=n: m.integrate(xd, n, every=n), repeats)
                    record("steps/s", model, dtype, members, n, sec)
    return rows


def _write(rows: list[dict]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        load = "n/a"
    lines = [
        "# Shallow-water model benchmark",
        "",
        f"torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at the end {load}. Best of several repeats.",
        "Galewsky jet, RK4 with the default step and hyperdiffusion, `integrate` in spectral"
        " space; every Legendre sum is one batched matmul over the orders.",
        "",
        "| case | grid | threads | dtype | members | dt (s) | steps | seconds | steps/s |"
        " model days/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['grid']} | {r['threads']} | {r['dtype']} | {r['members']} | "
            f"{r['dt_s']:g} | "
            f"{r['steps']} | {r['seconds']:.3f} | {r['steps_per_s']:.1f} | "
            f"{r['model_days_per_s']:.2f} |"
        )
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more repeats and a larger batch")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    for row in main(quick=not args.full, threads=tuple(args.threads)):
        print(
            f"{row['case']:>14} {row['grid']:>18} {row['threads']}t {row['dtype']:>8} "
            f"x{row['members']:<3} "
            f"{row['seconds']:8.3f} s  {row['steps_per_s']:8.1f} steps/s"
        )
    print(f"wrote {OUT}")
