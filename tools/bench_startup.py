#!/usr/bin/env python
"""Start-up of the ``bsmamba2`` command: seconds until it has answered, for the answers that
need no model (issue 13 item 6: ``--version`` and ``--help`` ≤ 1 s, an input error ≤ 1.5 s on
a 2-core machine).

Each case runs ``python -m bsmamba2 ...`` from this checkout ``--repeat`` times in fresh
processes (after one unmeasured warm-up run that fills the OS file cache); the table gives
the median and the fastest run, and the one-minute load average before the runs, since other
work on a small machine adds to every number. Example:
``python tools/bench_startup.py --json docs/results/bench_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(folder: Path) -> dict[str, list[str]]:
    empty = folder / "empty.wav"
    empty.touch()
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        "separate --help": ["separate", "--help"],
        "separate empty.wav (input error)": ["separate", str(empty)],
        "separate missing.wav (input error)": ["separate", str(folder / "missing.wav")],
    }


def timed(argv: list[str]) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "bsmamba2", *argv], capture_output=True, env=env)
    return time.perf_counter() - start, run.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per case (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in cases(Path(tmp)).items():
            timed(argv)
            runs = [timed(argv) for _ in range(args.repeat)]
            seconds = [s for s, _ in runs]
            rows.append({
                "case": name, "exit_code": runs[0][1], "median_s": statistics.median(seconds),
                "min_s": min(seconds), "runs_s": seconds,
            })
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  exit  median     min")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['exit_code']:>4}  {r['median_s']:5.2f} s  {r['min_s']:5.2f} s")
    print(f"load average before: {load:.2f}, {os.cpu_count()} CPUs")
    if args.json:
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "load_average_1min": load, "platform": platform.platform(),
                        "python": platform.python_version()},
            "repeat": args.repeat,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
