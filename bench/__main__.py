"""``python -m bench``: run the benchmark scenarios, print a table, write the JSON results.

Every figure is a ratio or a difference against a baseline measured side by side in the same
run (interleaved, repeated over rounds); the table shows the median over rounds, the min..max
spread and, where there is a target, PASS or MISS.

Options:
  --smoke          a seconds-long run with tiny sizes (LiteLLM skipped, real Ollama only when
                   named with --only), for CI
  --only NAME      run only these scenarios (repeat or comma-separate)
  --rounds N       override the number of rounds
  --out PATH       JSON output (default bench/results/latest.json; smoke: smoke.json)
  --self-check     A/A run: the "proxy" is the simulator itself; ratios ~1, differences ~0
  --keep-logs      keep the work directory (process logs, model stores)

The JSON's ``meta.commit`` is the commit measured (``+local changes`` when the working tree
differs from it); set ``BENCH_COMMIT`` when running from an exported tree without ``.git``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.context import Bench, full_profile, smoke_profile
from bench.loadgen import LoadGen
from bench.report import ScenarioResult, render_table, write_json
from bench.scenarios import SCENARIOS

RESULTS = Path(__file__).resolve().parent / "results"
_MEASURED = ("proxy", "deployment_package", "bench", "pyproject.toml", "uv.lock")
"""The paths whose code the figures measure."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"scenarios to run: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument(
        "--self-check", action="store_true", help="A/A: measure the simulator against itself"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    return parser


def _selected(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    return names or list(SCENARIOS)


def _git_commit() -> str:
    """The measured code's commit: ``$BENCH_COMMIT`` (for a run from an exported tree), else
    ``git rev-parse``, marked ``+local changes`` when the measured paths differ from it."""
    if given := os.environ.get("BENCH_COMMIT"):
        return given
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=False, cwd=repo
            )
        except OSError:
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    changed = git("diff", "--quiet", "HEAD", "--", *_MEASURED)
    dirty = changed is not None and changed.returncode == 1
    return head.stdout.strip() + (" +local changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit status 1 when a scenario failed to run (a MISS is not a failure)."""
    args = _parser().parse_args(argv)
    names = _selected(args.only)
    profile = smoke_profile() if args.smoke else full_profile()
    if args.rounds:
        profile = dataclasses.replace(profile, rounds=args.rounds)
    out = args.out or RESULTS / ("smoke.json" if args.smoke else "latest.json")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    load_before = os.getloadavg()
    started = time.monotonic()
    results: list[ScenarioResult] = []
    failed = False
    with LoadGen() as loadgen:
        named = tuple(names) if args.only else ()
        bench = Bench(profile, loadgen, workdir, aa=args.self_check, named=named)
        try:
            for name in names:
                module = SCENARIOS[name]
                t0, load0 = time.monotonic(), os.getloadavg()[0]
                print(f"== {name}: {module.TITLE}", file=sys.stderr, flush=True)
                try:
                    result = module.run(bench)
                except Exception as exc:
                    traceback.print_exc()
                    result = ScenarioResult(
                        name, module.TITLE, error=f"{type(exc).__name__}: {exc}"
                    )
                    failed = True
                result.extra["seconds"] = round(time.monotonic() - t0, 1)
                # Other work on the machine shows here: the 1-minute load around the scenario.
                result.extra["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                results.append(result)
        finally:
            bench.close()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "rounds": profile.rounds,
        "self_check": args.self_check,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.monotonic() - started, 1),
        "method": "figures are medians over rounds of per-round comparisons, baseline and "
        "subject interleaved in each round; spread is min..max over rounds",
    }
    write_json(out, results, meta)
    print(render_table(results))
    print(
        f"\nprofile {profile.name}, {profile.rounds} rounds, {meta['seconds']} s; load average "
        f"before {meta['loadavg_before'][0]}, after {meta['loadavg_after'][0]} on "
        f"{meta['cpus']} cores; JSON: {out}"
    )
    if args.keep_logs or failed:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
