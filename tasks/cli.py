"""`dfota`: doit on this project's tasks, with exit codes that tell failures apart. It needs
no dodo.py and no pyproject.toml where it runs: the package gives doit its configuration.

doit itself exits 1 for any failed task. A nightly job needs more:

    0  everything done (or already up to date)
    1  bad input: a file the user gave is wrong; the error line names it
    2  internal error: a bug in the tool (the traceback is in the run's log file)
    3  usage error: unknown task or option (doit's own message)
    4  a check failed: a package did not prove out on the host (moved to out/rejected/), or,
       with several bases, at least one of them failed
    5  the workspace is busy: another run holds its lock
    6  upgrade: refused before anything was pushed (see dfota.upgrade.upgrade)
    7  upgrade: the module reported a failure
    8  upgrade: contact with a module lost, or timed out
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from doit.doit_cmd import DoitMain

from dfota.commands.loader import BACKEND_PLUGIN, CREATORS, DEFAULT_TASKS, DfotaLoader
from dfota.commands.params import CHAIN_PARAMS
from dfota.core.errors import (
    EXIT_CHECK,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    worst_upgrade,
)

__all__ = ["EXIT_CHECK", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "main"]


def exit_code(doit_code: int, failures: Sequence[str]) -> int:
    if doit_code == 0:
        return EXIT_OK
    upgrades = [int(f.split(":", 1)[1]) for f in failures if f.startswith("exit:")]
    if upgrades:  # `upgrade`: the worst module's code
        return worst_upgrade(upgrades)
    if "check" in failures:
        return EXIT_CHECK
    if doit_code == 2:  # an exception in a task: never the user's fault
        return EXIT_INTERNAL
    if "input" in failures:
        return EXIT_INPUT
    return EXIT_USAGE if doit_code == 3 else doit_code


def version_line() -> str:
    from doit import __version__ as doit_version

    from dfota import __version__

    return f"dfota {__version__} (doit {'.'.join(map(str, doit_version))})"


def tasks_first(args: Sequence[str]) -> list[str]:
    """The command line with the default tasks named before a chain-wide option that comes
    before any task (`dfota --wait 600`): doit takes a task's options only after a task."""
    chain_options = {f"--{p[key]}" for p in CHAIN_PARAMS for key in ("long", "inverse")
                     if key in p}
    commands = {cmd.get_name() for cmd in DoitMain.DOIT_CMDS}
    for pos, word in enumerate(args):
        if word.split(":", 1)[0] in CREATORS or word in commands:
            break
        if word.split("=", 1)[0] in chain_options:
            return [*args[:pos], *DEFAULT_TASKS, *args[pos:]]
    return list(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        print(version_line())
        return EXIT_OK
    loader = DfotaLoader()
    code = DoitMain(loader, extra_config={"BACKEND": BACKEND_PLUGIN}).run(tasks_first(args))
    return exit_code(code, loader.failure_kinds)


if __name__ == "__main__":
    sys.exit(main())
