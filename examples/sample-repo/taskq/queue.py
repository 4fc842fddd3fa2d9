"""A priority queue of jobs with retries."""

import heapq
import itertools
import random


class PriorityQueue:
    def __init__(self):
        self._heap = []
        self._counter = itertools.count()

    def push(self, job, priority=0):
        heapq.heappush(self._heap, (-priority, next(self._counter), job))

    def pop(self):
        if not self._heap:
            raise IndexError("pop from an empty queue")
        return heapq.heappop(self._heap)[2]

    def __len__(self):
        return len(self._heap)


def backoff_delay(attempt, base=0.5, cap=30.0):
    """Exponential backoff with full jitter for retry number `attempt`."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def run_with_retries(job, max_attempts=3, sleep=None):
    for attempt in range(max_attempts):
        try:
            return job()
        except Exception:
            if attempt + 1 == max_attempts:
                raise
            if sleep is not None:
                sleep(backoff_delay(attempt))
