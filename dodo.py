"""doit entry point: `doit` runs the default chain on the SDK named in pyproject.toml
(the sample SDK unless configured); `doit list` shows every task."""

from tasks.dodo_tasks import (
    Reporter,
    StatChecker,
    db_backend,
    task_bench,
    task_delta,
    task_import_base,
    task_sample,
    task_targetfiles,
    task_verify,
    task_versions,
)

DOIT_CONFIG = {
    "default_tasks": ["targetfiles", "delta", "verify"],
    "backend": db_backend(),
    "dep_file": ".doit.db",
    "action_string_formatting": "new",
    "reporter": Reporter,
    "check_file_uptodate": StatChecker,
}

__all__ = [
    "DOIT_CONFIG",
    "task_bench",
    "task_delta",
    "task_import_base",
    "task_sample",
    "task_targetfiles",
    "task_verify",
    "task_versions",
]
