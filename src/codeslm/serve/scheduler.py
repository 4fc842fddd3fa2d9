"""One completion at a time on the model; a client's newest request supersedes its older ones.

Every job runs on a single model thread. Submitting a job for a client cancels that client's
earlier job: one still queued never starts, one running stops at its next decode step
(`CompletionCancelled`), so the model is free for the newest request at once and no queue grows
when a client types faster than the model answers. Cancelled work is logged, not raised as an
error, and counted (jobs and CPU seconds) for the benchmarks.
But: it does not decide what to complete (that is `CompletionEngine`'s) nor speak a protocol.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from codeslm.complete import CompletionCancelled

log = logging.getLogger("codeslm.serve")


@dataclass
class Job:
    """A unit of model work for one client; `cancel` may be called from any thread."""

    client: str
    label: str = "completion"
    submitted: float = field(default_factory=time.perf_counter)
    reason: str = ""  # why it was cancelled: "superseded", "disconnected", "cancelled"
    future: Future | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class SchedulerStats:
    completed: int = 0
    cancelled: int = 0  # jobs that were cancelled, started or not
    cancelled_cpu_s: float = 0.0  # CPU seconds the model thread spent on them before they stopped
    busy_cpu_s: float = 0.0  # CPU seconds the model thread spent on all jobs


class CompletionScheduler:
    """Runs jobs on one model thread, newest-per-client first to finish.

    Example:
        >>> scheduler = CompletionScheduler()
        >>> job = scheduler.submit("nvim-1", lambda cancelled: engine.complete(request, cancelled=cancelled))
        >>> job.future.result().text
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codeslm-model")
        self._lock = threading.Lock()
        self._latest: dict[str, Job] = {}
        self.stats = SchedulerStats()

    def submit(self, client: str, work: Callable[[Callable[[], bool]], object],
               label: str = "completion") -> Job:
        """Queue `work(cancelled)` for `client`, cancelling that client's previous job."""
        job = Job(client, label)
        with self._lock:
            previous = self._latest.get(client)
            if previous is not None:
                previous.cancel("superseded")
            self._latest[client] = job
        job.future = self._executor.submit(self._run, job, work)
        return job

    def run_exclusive(self, work: Callable[[], object]) -> Future:
        """Run `work()` on the model thread between completions (swapping an index, say)."""
        return self._executor.submit(work)

    async def run(self, client: str, work, label: str = "completion",
                  disconnected: Callable[[], object] | None = None, poll_s: float = 0.02):
        """Await `work`'s result; cancel the job once the awaitable `disconnected()` says so.

        Raises `CompletionCancelled` when the job was superseded, cancelled or disconnected.
        """
        job = self.submit(client, work, label)
        waiting = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=poll_s)
                if done:
                    return waiting.result()
                if disconnected is not None and await disconnected():
                    job.cancel("disconnected")
        except asyncio.CancelledError:
            job.cancel("disconnected")
            raise

    def _run(self, job: Job, work):
        if job.is_cancelled():
            self._forget(job)
            self._count_cancelled(job, 0.0, started=False)
            raise CompletionCancelled(job.reason)
        cpu = time.thread_time()
        try:
            result = work(job.is_cancelled)
        except CompletionCancelled:
            self._count_cancelled(job, time.thread_time() - cpu, started=True)
            raise CompletionCancelled(job.reason) from None
        finally:
            with self._lock:
                self.stats.busy_cpu_s += time.thread_time() - cpu
            self._forget(job)
        with self._lock:
            self.stats.completed += 1
        return result

    def _forget(self, job: Job) -> None:
        with self._lock:
            if self._latest.get(job.client) is job:
                del self._latest[job.client]

    def _count_cancelled(self, job: Job, cpu_s: float, started: bool) -> None:
        with self._lock:
            self.stats.cancelled += 1
            self.stats.cancelled_cpu_s += cpu_s
        waited = (time.perf_counter() - job.submitted) * 1000
        log.info("%s for %s cancelled (%s) %s after %.0f ms", job.label, job.client,
                 job.reason or "cancelled", "while running" if started else "before it started", waited)

    def close(self) -> None:
        with self._lock:
            for job in self._latest.values():
                job.cancel("shutting down")
        self._executor.shutdown(wait=True, cancel_futures=True)
