"""The project's own tools as tasks: `sample` (the sample SDK, in a checkout of the project)
and `bench` (the benchmark of the chain).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from dfota.commands.action import TaskDict, always_run, guarded
from dfota.commands.configure import Configuration, sample_is_here
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.settings import PROJECT_DIR, SAMPLE_DIR, Workspace, resolve_path


def sample(conf: Configuration) -> TaskDict:
    """generate the sample SDK (sample_sdk/): a base firmware package and the next SDK build"""
    return {
        "actions": [guarded("sample", None, lambda log: _sample())],
        "uptodate": [_sample_is_current],
        "verbosity": 1,
    }


def bench(conf: Configuration) -> TaskDict:
    """measure the chain on a production-size SDK pair against the alternatives"""
    ws = conf.workspace
    return always_run("bench", ws.log_dir, lambda log: _bench(ws, conf.bench_options, log))


def _sample() -> None:
    from dfota.tools.sample.generate import generate_sample

    if not sample_is_here():  # never into the folder an installed package lives in
        raise DfotaError("the sample SDK is made in a checkout of the project, beside its "
                         "package; this package is installed", SAMPLE_DIR)
    generate_sample(SAMPLE_DIR)


def _sample_is_current() -> bool:
    from dfota.tools.sample.generate import sample_is_current

    return sample_is_current(SAMPLE_DIR)


def _bench(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.tools.bench.run import BenchOptions, run_benchmark

    folder = resolve_path(str(options["folder"])) if options["folder"] else ws.state_dir / "bench"
    report = PROJECT_DIR / "BENCHMARKS.md" if options["update_benchmarks"] else None
    ram_disk = str(options["ram_disk"])
    try:
        run_benchmark(folder, BenchOptions(report=report, before=str(options["before"]),
                                           ram_disk=None if ram_disk in ("", "none")
                                           else resolve_path(ram_disk)), log.say)
    finally:
        if not options["keep_data"]:
            shutil.rmtree(folder, ignore_errors=True)
    if report is None:
        log.say("bench: BENCHMARKS.md left as it is (--update-benchmarks rewrites it)")
