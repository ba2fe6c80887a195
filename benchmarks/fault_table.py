"""Run the whole fault-injection catalogue (slow cases too) and write its table.

    python -m benchmarks.fault_table            # -> benchmarks/out/faults.md
    python -m benchmarks.fault_table --quick    # only the default-run cases

Each case of :mod:`tests.fault_cases` (killed writers, corrupted model
stores, bad inputs) runs in a fresh scratch folder; its outcome is the typed
error it gave or the identical result it checked. A case marked ``xfail``
(a known, documented failure) is expected to fail; one that passes is
reported as ``XPASS``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "faults.md"


def run(quick: bool = False) -> list[dict]:
    from tests.fault_cases import CASES

    rows = []
    for case in CASES:
        if quick and case.slow:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="xlatda-fault-"))
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome = case.run(tmp)
            status = "XPASS" if case.xfail else "ok"
        except AssertionError as err:
            status = "xfail" if case.xfail else "FAIL"
            outcome = str(err).replace("\n", " ")[:160]
        except Exception as err:  # a case's own setup broke
            status = "FAIL"
            outcome = f"{type(err).__name__}: {err}"[:160]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append({"case": case.id, "group": case.group, "status": status,
                     "outcome": outcome.replace("|", "/"), "slow": case.slow,
                     "seconds": time.perf_counter() - start})
    return rows


def write(rows: list[dict], path: Path = OUT) -> str:
    counts = collections.Counter(r["status"] for r in rows)
    groups = collections.defaultdict(collections.Counter)
    for r in rows:
        groups[r["group"]][r["status"]] += 1
    lines = [
        "# Fault-injection catalogue",
        "",
        "Written by `python -m benchmarks.fault_table` (cases: `tests/fault_cases.py`).",
        "",
        f"{len(rows)} cases: " + ", ".join(f"{counts[k]} {k}" for k in
                                          ("ok", "xfail", "XPASS", "FAIL") if counts[k]) + ".",
        "",
        "| group | cases | ok | xfail | XPASS | FAIL |",
        "|---|---|---|---|---|---|",
    ]
    for g, c in groups.items():
        lines.append(f"| {g} | {sum(c.values())} | {c['ok']} | {c['xfail']} | {c['XPASS']} | "
                     f"{c['FAIL']} |")
    lines += ["", "| case | status | slow | s | outcome |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['status']} | {'yes' if r['slow'] else ''} | "
                     f"{r['seconds']:.2f} | {r['outcome']} |")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(quick: bool = False) -> list[dict]:
    rows = run(quick=quick)
    write(rows)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow cases")
    args = parser.parse_args()
    rows = main(quick=args.quick)
    counts = collections.Counter(r["status"] for r in rows)
    print(f"{len(rows)} cases: {dict(counts)} -> {OUT}")
