"""xlatda's public ``xlatda.cycle`` side by side with DAPPER, same truth, same observations.

Lorenz-96 in the Sakov & Oke (2008) setting (40 sites, F = 8, RK4 with
dt = 0.05, every site observed every step with R = I): the truth and the
observations are made once here (``xlatda.datasets.lorenz96`` plus N(0, 1)
noise) and handed to DAPPER as arrays through an ``.npz`` file. DAPPER
(PyPI ``dapper`` 1.7.1) runs in its own virtual environment,
``benchmarks/.dapper-venv`` (git-ignored; its pins differ from ours),
driven by a subprocess (``benchmarks/dapper_driver.py``). Both start from
the true initial state perturbed with std 1 and score the analysis-mean RMSE
over the sites, averaged over the cycles after the burn-in.

Methods and settings (published tunings, DAPPER's ``mods/Lorenz96/sakov2008``):

=======  ===  =============================  ===================================
xlatda   N    xlatda settings                DAPPER
=======  ===  =============================  ===================================
etkf     24   inflation 1.013                EnKF('Sqrt', N=24, infl=1.013, rot)
denkf    40   inflation 1.01                 EnKF('DEnKF', N=40, infl=1.01)
enkf     40   inflation 1.06                 EnKF('PertObs', N=40, infl=1.06)
letkf    7    inflation 1.04, radius 4       LETKF(N=7, infl=1.04, loc_rad=4, rot)
3dvar    1    b_std 0.5 (B = 0.25 I)         Var3D(B='eye', xB=0.25)
=======  ===  =============================  ===================================

Speed: cycles per second of the whole call (``xlatda.cycle`` with
``progress=False``; DAPPER's ``xp.assimilate`` with its statistics, live
plotting off). The xlatda side runs in this process with torch's default
thread settings (the script changes none before the ``xlatda.cycle``
calls: the library's own thread policy applies), as a user would call it.
The "kernel" column is the same filter written as a bare tensor loop
(``Lorenz96.step`` + ``method.analyse``) on one torch thread, the
reference of the ``>= 0.6x kernel`` target. The three sides run in rounds
(``--rounds``, default 3): for every method its xlatda, kernel and DAPPER
runs back to back (DAPPER's process serves one run per request), the side
that starts rotating between rounds; the table keeps each side's median
rate, and the note gives the machine's load during the runs.

Shallow water (``--sw``): the shipped demo latent model (32 x 64 grid,
latent 48), latent ETKF with N = 32, 256 observation locations per hour
(height and vorticity): milliseconds per analysis cycle through
``xlatda.cycle`` (median of 3 calls) against the bare kernel loop (latent
ODE forecast + the model error Q that the call adds by default +
``decode_points`` at the observations + ``ETKF.analyse``, one torch thread,
median of 3; the loop without Q, the reference of earlier tables, is
reported too).

Setup once (about 600 MB)::

    python -m venv benchmarks/.dapper-venv
    benchmarks/.dapper-venv/bin/pip install dapper==1.7.1

(or ``--setup``). Run::

    python benchmarks/bench_vs_dapper.py [--cycles 1000] [--burn-in 200] [--rounds 3] [--sw]

writes ``benchmarks/out/vs_dapper.md``. ``--no-dapper`` runs the xlatda side
alone.

RMSE over seeds (``--rmse-seeds K``, default 5): the RMSE of one run is a
time mean of correlated analysis errors and, for the stochastic EnKF, of one
draw of observation perturbations; it differs from seed to seed by more than
the gaps between the two libraries. So for the methods with targets the RMSE
is also measured for seeds ``0..K-1`` (for each seed a new truth, new
observations and a new initial ensemble, shared by both sides; no speeds),
and the table gives their mean ± standard deviation over seeds per side and
the paired difference (xlatda minus DAPPER, same truth and observations)
with its standard error. "Equal or lower RMSE" then means a paired
difference not above zero by more than two standard errors (with one seed:
the seed-0 RMSE at most 0.005 above DAPPER's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "vs_dapper.md"
VENV = HERE / ".dapper-venv"
DT = 0.05
R_STD = 1.0
INIT_STD = 1.0

#: label, xlatda method, members, xlatda settings, DAPPER method, DAPPER keywords
RUNS = [
    ("ETKF", "etkf", 24, {"inflation": 1.013}, "EnKF",
     {"upd_a": "Sqrt", "N": 24, "infl": 1.013, "rot": True}),
    ("DEnKF", "denkf", 40, {"inflation": 1.01}, "EnKF",
     {"upd_a": "DEnKF", "N": 40, "infl": 1.01}),
    ("EnKF", "enkf", 40, {"inflation": 1.06}, "EnKF",
     {"upd_a": "PertObs", "N": 40, "infl": 1.06}),
    ("LETKF", "letkf", 7, {"inflation": 1.04, "radius": 4}, "LETKF",
     {"N": 7, "infl": 1.04, "loc_rad": 4, "rot": True}),
    ("3DVar", "3dvar", 1, {"b_std": 0.5}, "Var3D", {"B": "eye", "xB": 0.25}),
]
#: runs with speed targets (>= 5x DAPPER at equal or lower RMSE)
TARGETS = ("DEnKF", "EnKF", "LETKF")


def setup_venv() -> Path:
    """Create ``benchmarks/.dapper-venv`` with DAPPER 1.7.1 (needs the package index)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "dapper==1.7.1"], check=True)
    return python


def make_data(cycles: int, seed: int):
    """Truth ``(cycles + 1, 40)`` and observations at steps 1..cycles (xarray and numpy)."""
    import xarray as xr

    import xlatda

    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
    rng = np.random.default_rng(seed)
    xx = truth.x.values.astype(float)
    yy = xx[1:] + R_STD * rng.normal(size=xx[1:].shape)
    k = np.tile(np.arange(40.0), cycles)
    t = np.repeat(truth.time.values[1:], 40)
    obs = xr.Dataset({"x": ("obs", yy.ravel(), {"error_std": R_STD})},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    return truth, obs, xx, yy


def _rmse(mean: np.ndarray, xx: np.ndarray, burn: int) -> float:
    return float(np.sqrt(((mean - xx) ** 2).mean(-1))[burn:].mean())


def run_xlatda(label: str, truth, obs, xx, burn: int, seed: int, scoped: bool = False) -> dict:
    """``xlatda.cycle`` for run ``label``, torch threads as the process has them.

    ``scoped``: call it inside ``xlatda._threads.thread_scope`` (what the
    public function does itself once ``cycle.py`` carries the
    ``@with_thread_scope`` line; for measuring before that line is merged).
    """
    import contextlib

    import xlatda
    from xlatda._threads import thread_scope
    from xlatda.dynamics.physical import Lorenz96

    _, method, members, settings, *_ = next(r for r in RUNS if r[0] == label)
    cycles = xx.shape[0] - 1
    scope = thread_scope(members * 40) if scoped else contextlib.nullcontext()
    t0 = time.perf_counter()
    with scope:
        res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=members,
                           init_std=INIT_STD, seed=seed, progress=False, **settings)
    seconds = time.perf_counter() - t0
    mean = res.analysis.x.mean("member").transpose("time", ...).values
    return {"rmse": _rmse(mean, xx[1:], burn), "cycles_per_s": cycles / seconds}


def run_kernel(label: str, xx, yy, burn: int, seed: int) -> dict | None:
    """Run ``label`` as a bare tensor loop on one torch thread (the kernel-level rate);
    None for 3DVar (no kernel loop)."""
    import torch

    from xlatda.dynamics.physical import Lorenz96
    from xlatda.methods.ensemble import ETKF, DEnKF, EnKF
    from xlatda.methods.letkf import LETKF
    from xlatda.methods.localization import IndexDistance

    methods = {"ETKF": ETKF(inflation=1.013), "DEnKF": DEnKF(inflation=1.01),
               "EnKF": EnKF(inflation=1.06), "LETKF": LETKF(inflation=1.04, radius=4.0)}
    if label not in methods:
        return None
    members = next(r[2] for r in RUNS if r[0] == label)
    model = Lorenz96(n=40, forcing=8.0, dt=DT)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            y_all = torch.as_tensor(yy)
            r_std = torch.full((40,), R_STD, dtype=torch.float64)
            locations = IndexDistance(40)
            g = torch.Generator().manual_seed(seed)
            x0 = torch.as_tensor(xx[0])
            ens = x0 + INIT_STD * torch.randn(members, 40, generator=g, dtype=torch.float64)
            means = torch.empty(len(yy), 40, dtype=torch.float64)
            start = time.perf_counter()
            for k in range(len(yy)):
                ens = model.step(ens, DT)
                ens = methods[label].analyse(ens, ens, y_all[k], r_std, generator=g,
                                             locations=locations)
                means[k] = ens.mean(0)
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return {"rmse": _rmse(means.numpy(), xx[1:], burn), "cycles_per_s": len(yy) / seconds}


class DapperServer:
    """DAPPER on the same arrays, in its own environment: a subprocess that runs one
    method per request (``dapper_driver.py --serve``), so its runs interleave with
    xlatda's in one benchmark."""

    def __init__(self, xx, yy, burn: int, seed: int, python: Path, runs=None) -> None:
        runs = RUNS if runs is None else runs
        spec = {"dt": DT, "r_std": R_STD, "init_std": INIT_STD, "burn_in": burn,
                "seed": seed,
                "runs": [{"label": r[0], "dapper": r[4], "dapper_kwargs": r[5]} for r in runs]}
        self.tmp = tempfile.TemporaryDirectory()
        tmp = Path(self.tmp.name)
        data, spec_path = tmp / "l96.npz", tmp / "spec.json"
        np.savez(data, xx=xx, yy=yy)
        spec_path.write_text(json.dumps(spec))
        self.stderr = open(tmp / "stderr.txt", "w+")
        self.proc = subprocess.Popen(
            [str(python), str(HERE / "dapper_driver.py"), str(data), str(spec_path),
             "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, cwd=tmp, env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})

    def run(self, label: str) -> dict:
        self.proc.stdin.write(label + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.stderr.seek(0)
                raise RuntimeError(f"the DAPPER run failed:\n{self.stderr.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.stderr.close()
        self.tmp.cleanup()


def shallow_water(hours: int, seed: int = 1, scoped: bool = False) -> dict[str, float]:
    """Latent ETKF on the demo model: ms per analysis, ``xlatda.cycle`` vs the kernel loop."""
    import torch

    import xlatda
    from xlatda.datasets import shallow_water as sw_data
    from xlatda.demo import demo_model_path
    from xlatda.methods.ensemble import ETKF
    from xlatda.methods.model_noise import add_model_error
    from xlatda.obs import sample_points
    from xlatda.obs.contract import to_tensors

    model = xlatda.open_model(demo_model_path())
    L = model.layout
    nlat, nlon = L.spatial_shape
    spinup = float(model.history.get("settings", {}).get("spinup_hours", 72))
    both = sw_data(nlat=nlat, nlon=nlon, hours=hours, trajectories=2, seed=10_000 + seed,
                   spinup_hours=spinup, progress=False)
    truth = both.isel(trajectory=0, drop=True)
    background = both.isel(trajectory=1, drop=True).isel(time=0)
    background = background.assign_coords(time=truth.time[0])
    std = {v: 0.1 * float(model.normalizer.std[i]) for i, v in enumerate(L.variables)}
    obs = sample_points(truth.isel(time=slice(1, None)), n=256, error_std=std, seed=seed)
    members = 32

    def public():
        if scoped:
            from xlatda._threads import thread_scope

            with thread_scope(members * model.latent_dim):
                return xlatda.cycle(background, obs, model, method="etkf", members=members,
                                    init_std=0.5, seed=seed, progress=False, inflation=1.05)
        return xlatda.cycle(background, obs, model, method="etkf", members=members,
                            init_std=0.5, seed=seed, progress=False, inflation=1.05)

    public()  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        public()
        times.append(time.perf_counter() - t0)
    cycle_ms = float(np.median(times)) / hours * 1e3

    # Kernel loop: the same work on tensors (forecast, observe, analyse).
    table = to_tensors(obs, L)
    times = np.asarray(table.time)
    labels = np.unique(times)
    groups = [np.flatnonzero(times == t) for t in labels]
    dyn = model.require_dynamics()
    etkf = ETKF(inflation=1.05)
    g = torch.Generator().manual_seed(seed)
    # The model error Q the public call adds by default (noise=True: a square root
    # of the forecast ensemble, as LatentSpace.forecast does for one hour).
    cov = None
    if model.model_error is not None:
        cov = model.model_error.covariance().detach().to("cpu", torch.float64)
        acc = getattr(dyn, "noise_covariance", None)
        cov = acc(cov, 1.0).to("cpu", torch.float64) if acc is not None else cov
    with torch.inference_mode():
        x0 = torch.as_tensor(background.lda.to_tensor()).to(model.dtype)
        z = model.encode_tensor(x0).to(torch.float64)
        ens = z + 0.5 * torch.randn(members, z.shape[-1], generator=g, dtype=torch.float64)
        pts = [(model.points_tensor(table.lat[i], table.lon[i]), table.channel[i],
                table.values[i].to(torch.float64), table.error_std[i].to(torch.float64))
               for i in groups]
        tau = torch.tensor([0.0, 1.0], dtype=model.dtype)

        def kernel(with_q):
            e = ens
            for p, ch, y, r in pts:
                e = dyn.evolve(e.to(model.dtype), tau)[..., -1, :].to(torch.float64)
                if with_q and cov is not None:
                    e = add_model_error(e, cov, generator=g)
                hx = model.decode_points(e.to(model.dtype), p, ch).to(torch.float64)
                e = etkf.analyse(e, hx, y, r, generator=g)
            return e

        out = {}
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # as the Lorenz-96 kernel loops (no OpenMP spinning)
        try:
            for with_q in (True, False):
                kernel(with_q)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    kernel(with_q)
                    times.append(time.perf_counter() - t0)
                out[with_q] = float(np.median(times)) / len(pts) * 1e3
        finally:
            torch.set_num_threads(before)
    return {"cycle_ms": cycle_ms, "kernel_ms": out[True], "kernel_noq_ms": out[False],
            "analyses": len(pts), "latent": model.latent_dim, "obs_per_hour": 256}


def rmse_over_seeds(labels, seeds: int, cycles: int, burn: int, python: Path | None,
                    first: dict[str, tuple[float, float | None]], base: int = 0) -> dict:
    """RMSE per seed ``base, ..., base + seeds - 1`` of ``xlatda.cycle`` and DAPPER for
    ``labels`` (seed ``base`` from ``first``: ``{label: (xlatda, dapper)}``, the
    bench's own runs; DAPPER not run where ``python`` is None)."""
    out = {lb: {"x": [first[lb][0]], "d": [first[lb][1]]} for lb in labels}
    runs = [r for r in RUNS if r[0] in labels]
    for seed in range(base + 1, base + seeds):
        truth, obs, xx, yy = make_data(cycles, seed)
        server = DapperServer(xx, yy, burn, seed, python, runs) if python else None
        try:
            for lb in labels:
                out[lb]["x"].append(run_xlatda(lb, truth, obs, xx, burn, seed)["rmse"])
                out[lb]["d"].append(server.run(lb)["rmse"] if server else None)
        finally:
            if server is not None:
                server.close()
        print(f"seed {seed}: " + " ".join(f"{lb} {v['x'][-1]:.4f}/{v['d'][-1]}"
                                           for lb, v in out.items()), flush=True)
    return out


def _seed_stats(values) -> dict | None:
    if any(v is None for v in values):
        return None
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "sd": sd, "se": sd / np.sqrt(len(v))}


def _write(rows_x, rows_k, rows_d, sw, cycles, burn, threads, dapper_note, scoped,
           out: Path = OUT, seeds: dict | None = None) -> str:
    lines = [f"Lorenz-96, {cycles} cycles (RMSE after {burn}), same truth and observations; "
             f"xlatda with torch's default threads ({threads}) in a fresh process; kernel "
             "loops on 1 thread. " + dapper_note
             + (" xlatda.cycle was run inside thread_scope by this script (it does not carry "
                "@with_thread_scope yet): the figures the one-line change gives." if scoped
                else ""), "",
             "| method | N | xlatda RMSE | xlatda cycles/s | kernel cycles/s | cycle / kernel "
             "| DAPPER RMSE | DAPPER cycles/s | xlatda / DAPPER | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, _, members, *_ in RUNS:
        x, k, d = rows_x[label], rows_k.get(label), rows_d.get(label)
        ratio_k = f"{x['cycles_per_s'] / k['cycles_per_s']:.2f}" if k else "–"
        speedup = f"{x['cycles_per_s'] / d['cycles_per_s']:.1f}x" if d else "–"
        target = "–"
        if label in TARGETS and d and k:
            rmse_ok = x["rmse"] <= d["rmse"] + 0.005
            diff = _seed_stats(np.subtract(seeds[label]["x"], seeds[label]["d"])) \
                if seeds and label in seeds and None not in seeds[label]["d"] else None
            if diff is not None and len(seeds[label]["x"]) > 1:
                rmse_ok = diff["mean"] <= 2 * diff["se"]
            ok = (x["cycles_per_s"] >= 5 * d["cycles_per_s"] and rmse_ok
                  and x["cycles_per_s"] >= 0.6 * k["cycles_per_s"])
            target = "met" if ok else "not met"
        kernel = f"{k['cycles_per_s']:.0f}" if k else "–"
        dapper = f"{d['rmse']:.3f} | {d['cycles_per_s']:.0f}" if d else "– | –"
        lines.append(f"| {label} | {members} | {x['rmse']:.3f} | {x['cycles_per_s']:.0f} | "
                     f"{kernel} | {ratio_k} | {dapper} | {speedup} | {target} |")
    if seeds and len(next(iter(seeds.values()))["x"]) > 1:
        n = len(next(iter(seeds.values()))["x"])
        lines += ["", f"RMSE over {n} seeds (a new truth, new observations and a new "
                  "initial ensemble per seed, shared by both sides; mean ± standard deviation "
                  "over seeds; the paired difference xlatda - DAPPER ± its standard error):",
                  "", "| method | xlatda RMSE | DAPPER RMSE | xlatda - DAPPER | per seed "
                  "(xlatda / DAPPER) |", "|---|---|---|---|---|"]
        for label, v in seeds.items():
            sx, sd = _seed_stats(v["x"]), _seed_stats(v["d"])
            diff = _seed_stats(np.subtract(v["x"], v["d"])) if sd else None
            per = " ".join(f"{a:.4f}/{'–' if b is None else f'{b:.4f}'}"
                           for a, b in zip(v["x"], v["d"]))
            lines.append(
                f"| {label} | {sx['mean']:.4f} ± {sx['sd']:.4f} | "
                + (f"{sd['mean']:.4f} ± {sd['sd']:.4f} | {diff['mean']:+.4f} ± "
                   f"{diff['se']:.4f}" if sd else "– | –") + f" | {per} |")
    if sw:
        lines += ["", f"Shallow water, demo latent model (latent {sw['latent']}), latent ETKF "
                  f"N = 32, {sw['obs_per_hour']} locations per hour x 2 fields, "
                  f"{sw['analyses']} analyses:", "",
                  "| path | ms per analysis | rate vs kernel |", "|---|---|---|",
                  f"| xlatda.cycle | {sw['cycle_ms']:.1f} | "
                  f"{sw['kernel_ms'] / sw['cycle_ms']:.2f} |",
                  f"| kernel loop (forecast + Q + decode_points + ETKF.analyse) | "
                  f"{sw['kernel_ms']:.1f} | 1.00 |",
                  f"| kernel loop without Q (the reference before) | "
                  f"{sw['kernel_noq_ms']:.1f} | {sw['kernel_noq_ms'] / sw['kernel_ms']:.2f} |",
                  "", "xlatda.cycle's timing includes the whole call (validation of the "
                  "observations, the initial ensemble, fields decoded for the result); the "
                  "kernel loop adds the model error Q as the call does by default "
                  "(noise=True)."]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--burn-in", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sw", action="store_true", help="also the shallow-water latent ETKF")
    p.add_argument("--sw-hours", type=int, default=24)
    p.add_argument("--no-dapper", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    p.add_argument("--out", default=OUT.name, help="table file under benchmarks/out/")
    p.add_argument("--scoped", action="store_true",
                   help="run xlatda.cycle inside thread_scope when it does not do so itself")
    p.add_argument("--rmse-seeds", type=int, default=5,
                   help="seeds of the RMSE comparison of the target methods (1: seed 0 only)")
    p.add_argument("--setup", action="store_true", help="create the DAPPER venv if missing")
    p.add_argument("--dapper-python", default=str(VENV / "bin" / "python"))
    a = p.parse_args(argv)
    truth, obs, xx, yy = make_data(a.cycles, a.seed)
    import torch

    import xlatda  # imported by xlatda above; its thread setting is left as it is

    threads = torch.get_num_threads()
    scoped = a.scoped and not hasattr(xlatda.cycle, "__wrapped__")
    server, note = None, "DAPPER 1.7.1 in benchmarks/.dapper-venv (subprocess, NumPy defaults)."
    if not a.no_dapper:
        python = setup_venv() if a.setup else Path(a.dapper_python)
        if python.exists():
            server = DapperServer(xx, yy, a.burn_in, a.seed, python)
        else:
            note = f"DAPPER not run: {python} is missing (see --setup)."
    else:
        note = "DAPPER not run (--no-dapper)."
    # Rounds: every method's xlatda, kernel and DAPPER runs back to back (the side
    # that goes first rotates), so a busy machine slows the three alike; the
    # median rate over the rounds is reported (RMSEs are the same in every round).
    load = [os.getloadavg()[0]]
    runs = {label: {"x": [], "k": [], "d": []} for label, *_ in RUNS}
    sides = {"x": lambda lb: run_xlatda(lb, truth, obs, xx, a.burn_in, a.seed, scoped=scoped),
             "k": lambda lb: run_kernel(lb, xx, yy, a.burn_in, a.seed),
             "d": (lambda lb: server.run(lb)) if server is not None else (lambda lb: None)}
    try:
        for r in range(a.rounds):
            for label, *_ in RUNS:
                order = ["x", "k", "d"][r % 3:] + ["x", "k", "d"][:r % 3]
                for side in order:
                    row = sides[side](label)
                    if row is not None:
                        runs[label][side].append(row)
                done = {k: v[-1]["cycles_per_s"] for k, v in runs[label].items() if v}
                print(f"round {r + 1} {label:<6} " + " ".join(
                    f"{k} {v:.0f}/s" for k, v in done.items()), flush=True)
            load.append(os.getloadavg()[0])
    finally:
        if server is not None:
            server.close()

    def median(rows):
        if not rows:
            return None
        return {"rmse": rows[0]["rmse"],
                "cycles_per_s": float(np.median([r["cycles_per_s"] for r in rows]))}

    rows_x = {lb: median(v["x"]) for lb, v in runs.items()}
    rows_k = {lb: median(v["k"]) for lb, v in runs.items() if v["k"]}
    rows_d = {lb: median(v["d"]) for lb, v in runs.items() if v["d"]}
    seeds = None
    if a.rmse_seeds > 1:
        first = {lb: (rows_x[lb]["rmse"], rows_d[lb]["rmse"] if lb in rows_d else None)
                 for lb in TARGETS}
        seeds = rmse_over_seeds(TARGETS, a.rmse_seeds, a.cycles, a.burn_in,
                                python if server is not None else None, first, a.seed)
    sw = shallow_water(a.sw_hours, scoped=scoped) if a.sw else None
    note += (f" Median of {a.rounds} interleaved rounds; 1-minute load average "
             f"{min(load):.1f}-{max(load):.1f} during the runs (2 cores).")
    text = _write(rows_x, rows_k, rows_d, sw, a.cycles, a.burn_in, threads, note, scoped,
                  OUT.parent / a.out, seeds)
    print(text)
    return text


if __name__ == "__main__":
    main()
