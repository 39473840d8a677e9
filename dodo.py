"""doit entry point: `doit` runs the default chain (targetfiles, delta, verify) on the SDK
that pyproject.toml's [tool.dfota] names (the sample SDK, in its own workspace, when none);
`doit list` shows every task.

The tasks are made by the project's loader (`[tool.doit] loader = "dfota"` in pyproject.toml)
from the one configuration of the command: see tasks/commands/.
"""

from dfota.commands.loader import db_backend, doit_config

DOIT_CONFIG = doit_config(db_backend())
