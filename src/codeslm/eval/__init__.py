"""Evaluation: benchmarks behind one task interface, a sandbox for generated code, reports.

Importing the package registers every benchmark in `TASKS`.
"""

from codeslm.eval import humaneval, infill, repo_lines  # noqa: F401  (they register themselves)
from codeslm.eval.tasks import TASKS, Example, Task, TaskResult, get_task, register

__all__ = ["TASKS", "Example", "Task", "TaskResult", "get_task", "register"]
