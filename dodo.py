"""doit entry point: `doit` runs the default chain (targetfiles, delta, verify) on the SDK
that pyproject.toml's [tool.dfota] names (the sample SDK, in its own workspace, when none);
`doit list` shows every task.

The tasks are made by the project's loader (`[tool.doit] loader = "dfota"` in pyproject.toml)
from the one configuration of the command: see tasks/commands/configure.py.
"""

from dfota.commands.loader import PARALLEL, Reporter, StatChecker, db_backend

DOIT_CONFIG = {
    "default_tasks": ["targetfiles", "delta", "verify"],
    # task processes: what delta asks for is made beside targetfiles (`_delta_ahead`); the
    # loader runs a command that does not run delta in doit's own process
    "num_process": PARALLEL,
    "backend": db_backend(),
    "dep_file": ".doit.db",
    "action_string_formatting": "new",
    "reporter": Reporter,
    "check_file_uptodate": StatChecker,
}
