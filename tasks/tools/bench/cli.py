"""The benchmark's command line (`python -m dfota.tools.bench`): its options, its errors as
one line, and the profiles' summaries with `--profile`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.settings import PROJECT_DIR
from dfota.tools import bench
from dfota.tools.bench.options import CASES, DEFAULT_RAM_DISK, REPORT, BenchOptions
from dfota.tools.bench.run import run_benchmark


def profile_summary(prof: Path, limit: int = 25) -> str:
    """The functions of a cProfile output that take the most time, inner time first."""
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return text.getvalue()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dfota.tools.bench",
                                     description=(bench.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=PROJECT_DIR / "build" / "bench",
                        help="folder for the generated pair and the runs [build/bench]")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the pair [1]")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the figures here [BENCHMARKS.md at scale 1, else none]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each of the first steps; the median counts [3]")
    parser.add_argument("--profile", action="store_true",
                        help="run the doit steps under cProfile (times inflated, no report)")
    parser.add_argument("--cases", choices=CASES, default="all",
                        help="all: every step; verify: only doit verify against doit delta, "
                             "on the pair and on the cross-baseline package (goals 6 and 6b; "
                             "BENCHMARKS.md only with --report) [all]")
    parser.add_argument("--ram-disk", metavar="DIR", default=str(DEFAULT_RAM_DISK),
                        help="a folder on a tmpfs where the pair's steps run again with every "
                             "folder on it (a folder of the run's own, removed afterwards); "
                             "none: not at all [%(default)s]")
    parser.add_argument("--before", metavar="REV", default="",
                        help="also run the same steps with the code of git revision REV, in "
                             "turns with this checkout's, and compare each step before and "
                             "after against the noise of its repeats")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.before and args.repeat < 2:
        parser.error("--before needs --repeat 2 or more: the noise is the spread of the repeats")
    report = args.report or (REPORT if args.scale == 1.0 and args.cases == "all" else None)
    ram_disk = None if args.ram_disk in ("", "none") else Path(args.ram_disk)
    options = BenchOptions(args.scale, report, args.profile, args.repeat, args.cases, args.before,
                           ram_disk)
    try:
        run_benchmark(args.work, options, lambda line: print(line, flush=True))
    except DfotaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.profile:
        for prof in sorted((args.work.resolve() / "run" / "logs").glob("*.prof")):
            (prof.with_suffix(".txt")).write_text(profile_summary(prof))
            print(f"bench: profile of {prof.stem}: {prof.with_suffix('.txt')}")
    return 0
