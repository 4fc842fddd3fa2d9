"""taskq: a small priority task queue."""

from taskq.config import Config, load_config
from taskq.queue import PriorityQueue

__all__ = ["Config", "PriorityQueue", "load_config"]
