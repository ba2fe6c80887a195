"""A/B of the accessor overhead between two source trees, in alternating subprocesses.

Each round runs :mod:`bench_accessor`'s measurement (PCA, ``--samples``
samples, raw torch and ``ds.lda`` calls alternating, best of ``--repeat``) once
per tree, each in a fresh process whose ``xlatda`` comes from that tree
(``PYTHONPATH``), trees alternating, so both see the same minutes of a shared
machine. The measurement code is this checkout's for every tree. Printed:
per case and tree the ratio public/raw of each round (best process-CPU
times by default, ``--wall`` for wall-clock), their median, and the median
best times of the raw and the public call (a tree with faster kernels
has a faster raw call, so compare times as well as ratios), and for the dask
cases the ratio public / dask floor (the raw call in one ``map_blocks`` task
per chunk, as in :mod:`bench_accessor`).

Run (a tree made with ``git archive <commit> | tar -x -C /tmp/before``)::

    python benchmarks/ab_accessor.py before=/tmp/before after=. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(samples: int, repeat: int) -> None:
    sys.path.insert(0, str(HERE))
    import torch
    from bench_accessor import _field, _measure

    import xlatda

    torch.set_num_threads(1)
    ds = _field(samples)
    model = xlatda.fit(ds.isel(time=slice(0, 256)), encoder="pca", latent_dim=64, epochs=1,
                       progress=False)
    rows = _measure(ds, model, "pca", samples, repeat)
    print(json.dumps({"xlatda": xlatda.__file__, "rows": rows}))


def main(trees: dict[str, str], rounds: int, samples: int, repeat: int,
         cpu: bool = True) -> dict:
    key = "cpu_ratio" if cpu else "ratio"
    ratios: dict[str, dict[str, list[float]]] = {}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    floors: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": str(Path(path).resolve()), "OMP_NUM_THREADS": "1"}
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--samples", str(samples),
                 "--repeat", str(repeat)],
                env=env, check=True, capture_output=True, text=True, cwd="/tmp",
            ).stdout.strip().splitlines()[-1]
            res = json.loads(out)
            for row in res["rows"]:
                ratios.setdefault(row["case"], {}).setdefault(name, []).append(row[key])
                t_raw, t_xr = ("raw_cpu_s", "xarray_cpu_s") if cpu else ("raw_s", "xarray_s")
                times.setdefault((row["case"], name), []).append((row[t_raw], row[t_xr]))
                if "floor_s" in row:  # dask cases: the public call over the dask floor
                    floors.setdefault((row["case"], name), []).append(
                        row["floor_cpu_ratio" if cpu else "floor_ratio"])
            print(f"round {r + 1} {name} ({res['xlatda']}): "
                  + ", ".join(f"{row['case']} {row[key]:.2f}" for row in res["rows"]),
                  flush=True)
    print()
    print("| case | " + " | ".join(f"{n}: ratio per round | median | torch / xarray [ms]"
                                     for n in trees) + " |")
    print("|---|" + "---|---|---|" * len(trees))
    for case, by_tree in ratios.items():
        cells = []
        for n in trees:
            vals = by_tree[n]
            raw = statistics.median(t[0] for t in times[case, n]) * 1e3
            pub = statistics.median(t[1] for t in times[case, n]) * 1e3
            cells += [" / ".join(f"{v:.2f}" for v in vals), f"{statistics.median(vals):.2f}",
                      f"{raw:.2f} / {pub:.2f}"]
        print(f"| {case} | " + " | ".join(cells) + " |")
    if floors:
        print()
        print("| case | " + " | ".join(f"{n}: ratio to the dask floor per round | median"
                                         for n in trees) + " |")
        print("|---|" + "---|---|" * len(trees))
        for case in sorted({c for c, _ in floors}):
            cells = []
            for n in trees:
                vals = floors.get((case, n), [])
                cells += [" / ".join(f"{v:.2f}" for v in vals),
                          f"{statistics.median(vals):.2f}" if vals else "–"]
            print(f"| {case} | " + " | ".join(cells) + " |")
    return ratios


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("trees", nargs="*", help="name=path of a source tree holding xlatda/")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--repeat", type=int, default=41)
    p.add_argument("--wall", action="store_true", help="wall-clock ratios (default: CPU time)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.samples, a.repeat)
    else:
        main(dict(t.split("=", 1) for t in a.trees), a.rounds, a.samples, a.repeat,
             cpu=not a.wall)
