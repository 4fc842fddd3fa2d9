"""The process side of the sandbox: isolates itself once, then runs untrusted programs by fork.

`setup` (started by `codeslm.eval.sandbox` as `python -I -S -c SOURCE setup CONFIG`) enters new
mount, network, IPC and UTS namespaces, makes the filesystem read-only with an empty /proc and a
private tmpfs for work, then execs a fresh interpreter as the `zygote`, so no ctypes is loaded
where untrusted code runs. Per job the zygote forks the program under a dropped uid, rlimits
and a wall clock, watches it, and afterwards kills every process of that uid.
But: it never decides pass or fail; the harness checks the nonce. Stdlib only, Linux only.
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import resource
import select
import shutil
import signal
import stat
import struct
import sys
import time

RESULT_FD = 3
RESULT_CAP = 1 << 16
READY = b"R"  # first byte of every result: the child finished its setup
SETUP_FAILED = b"E"  # ... or this, from the child's own code, when the setup failed

# Modules that HumanEval-style programs import; loading them once in the zygote makes every
# execution skip their import time, and they are then covered by the tamper check.
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "string", "heapq",
           "bisect", "hashlib", "random", "fractions", "statistics", "copy", "operator")

# Introspection that could reach the supervisor's memory (and so the nonce) or skip asserts.
BLOCKED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
    "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents",
})
BLOCKED_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_testcapi", "_testinternalcapi"})


# --- setup: runs once per worker, as root where possible, then execs the zygote -----------

def _setup(config: dict) -> None:
    import ctypes  # only here: the zygote and the programs it runs never load ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, fstype, flags, data=None):
        args = [None if s is None else s.encode() for s in (src, target, fstype)]
        if libc.mount(*args, flags, None if data is None else data.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    class MountAttr(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64)
                    for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    def make_readonly(path: str, recursive: bool) -> bool:
        attr = MountAttr(1 | 2, 0, 0, 0)  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
        # 442 is mount_setattr on every architecture; -100 is AT_FDCWD; 0x8000 AT_RECURSIVE.
        return libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0,
                            ctypes.byref(attr), ctypes.sizeof(attr)) == 0

    clone_newns, clone_newuts, clone_newipc = 0x00020000, 0x04000000, 0x08000000
    clone_newuser, clone_newnet = 0x10000000, 0x40000000
    ms_rdonly, ms_nosuid, ms_nodev, ms_remount = 1, 2, 4, 32
    ms_bind, ms_move, ms_rec, ms_private = 4096, 8192, 16384, 1 << 18

    isolation = {"network": False, "readonly_fs": False, "uid": None,
                 "containment": "process group"}
    uid, base = config["uid"], config["base"]
    prefix = sys.base_prefix
    hidden = _hidden_ancestor(prefix)
    if os.geteuid() == 0 and uid is not None:
        if libc.unshare(clone_newns | clone_newnet | clone_newipc | clone_newuts) == 0:
            isolation["network"] = True
            mount(None, "/", None, ms_rec | ms_private)
            stage = os.path.join(base, ".stage")
            if hidden:
                os.mkdir(stage)
                mount(prefix, stage, None, ms_bind | ms_rec)
            isolation["readonly_fs"] = make_readonly("/", recursive=True)
            if hidden:
                # The interpreter lives under a directory closed to other users (/root):
                # cover that directory with an empty tmpfs and put only the interpreter back.
                mount("tmpfs", hidden, "tmpfs", ms_nosuid | ms_nodev, "mode=755,size=1m")
                target = os.path.join(hidden, os.path.relpath(prefix, hidden))
                os.makedirs(target, mode=0o755)
                mount(stage, target, None, ms_move)
                mount(None, hidden, None, ms_remount | ms_bind | ms_rdonly | ms_nosuid | ms_nodev)
                hidden = None
            mount("tmpfs", "/proc", "tmpfs", ms_rdonly | ms_nosuid | ms_nodev, "mode=555,size=4k")
            mount("tmpfs", base, "tmpfs", ms_nosuid | ms_nodev,
                  f"mode=711,size={config['tmpfs_bytes']}")
        if hidden is None:
            isolation["uid"] = uid
            isolation["containment"] = "uid"
    elif libc.unshare(clone_newuser | clone_newnet) == 0:
        isolation["network"] = True
    # Orphans of the programs are re-parented to the zygote (which reaps them), and nothing
    # below may gain privileges through set-uid files.
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    source = sys.orig_argv[sys.orig_argv.index("-c") + 1]
    exe = os.path.realpath(sys.executable)
    os.execv(exe, [exe, "-I", "-S", "-c", source, "zygote",
                   json.dumps(dict(config, isolation=isolation))])


def _hidden_ancestor(path: str) -> str | None:
    """The highest directory above `path` that other users cannot enter (e.g. /root)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


# --- the untrusted program: runs in a child of the supervisor ------------------------------

def _audit_hook():
    """An audit hook that blocks the routes to the supervisor's memory and to skipping asserts.

    Everything it uses is bound here, so the program cannot rebind it through `__main__` or
    `builtins`; the hook itself is reachable only through the blocked `gc`.
    """
    blocked_events, blocked_attrs, blocked_imports = BLOCKED_EVENTS, BLOCKED_ATTRS, BLOCKED_IMPORTS
    realpath, value_error, runtime_error = os.path.realpath, ValueError, RuntimeError

    def hook(event: str, args: tuple) -> None:
        if event in blocked_events:
            # ValueError is what sys._getframe raises past the stack's end, so the stdlib's
            # callers (namedtuple, enum, typing) fall back gracefully.
            raise value_error(f"{event} is not allowed in the sandbox")
        if event.startswith("ctypes.") or (
                event == "object.__getattr__" and args[1] in blocked_attrs) or (
                event == "import" and args[0].partition(".")[0] in blocked_imports):
            raise runtime_error(f"{event} {args[0]!r} is not allowed in the sandbox")
        if event == "open" and type(args[0]) is str and realpath(args[0]).startswith("/proc/"):
            raise runtime_error(f"opening {args[0]} is not allowed in the sandbox")

    return hook


def _tamper_check():
    """Snapshot builtins, sys.modules and the preloaded modules' attributes; return a check
    naming the first one replaced since.

    The check closes over the original objects, so rebinding names in `builtins`, `sys` or
    `__main__` cannot blind it.
    """
    missing = object()
    builtin_dict = builtins.__dict__
    builtin_before = dict(builtin_dict)
    modules = sys.modules
    sys_dict = sys.__dict__
    module_before = []
    for name, mod in list(modules.items()):
        # Attributes are compared for the modules programs and tests use; comparing all of
        # them would copy most of the zygote's memory into every child.
        keep = (mod.__dict__, dict(mod.__dict__)) if name in PRELOAD else None
        module_before.append((name, mod, keep))

    def check() -> str | None:
        if sys_dict.get("modules", missing) is not modules:
            return "sys.modules"
        for key, value in builtin_before.items():
            if builtin_dict.get(key, missing) is not value:
                return f"builtins.{key}"
        for name, mod, keep in module_before:
            if modules.get(name, missing) is not mod:
                return f"sys.modules[{name!r}]"
            if keep is not None:
                attrs, before = keep
                for key, value in before.items():
                    if attrs.get(key, missing) is not value:
                        return f"{name}.{key}"
        return None

    return check


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:  # a hostile __str__ must not decide the verdict
        text = "exception with an unprintable message"
    return text[:2000]


def _run_untrusted(program: str, test: str, nonce: bytes, check) -> None:
    """Execute the program, then the trusted test, then prove completion with the nonce.

    Every name used after the program starts is a local bound before it starts: the program
    may rebind anything global, but it cannot reach this frame (frame access is audited).
    """
    write, exit_, exec_, dict_, base = os.write, os._exit, exec, dict, BaseException
    describe, fd, pristine = _describe, RESULT_FD, dict(builtins.__dict__)
    write(fd, READY)  # the sandbox is set up; whatever happens next is the program's doing
    try:
        program_code = compile(program, "<candidate>", "exec")
        test_code = compile(test, "<tests>", "exec")
        candidate = {"__name__": "__candidate__", "__builtins__": builtins}
        exec_(program_code, candidate)
        tampered = check()
        if tampered is None:
            # The tests see the original builtins even if the program replaced some.
            exec_(test_code, dict_(candidate, __builtins__=pristine, __name__="__tests__"))
            tampered = check()
    except base as exc:  # SystemExit and KeyboardInterrupt are failures too
        try:
            message = describe(exc).encode("utf-8", "replace")
        except base:
            message = b"exception"
        write(fd, b"FAIL " + message)
        exit_(1)
    if tampered is not None:
        write(fd, b"FAIL tampered with " + tampered.encode("utf-8", "replace"))
        exit_(1)
    write(fd, b"PASS " + nonce)
    exit_(0)


def _set_limits(limits: dict, timeout: float) -> None:
    for res, value in ((resource.RLIMIT_AS, limits["memory_bytes"]),
                       (resource.RLIMIT_NPROC, limits["nproc"]),
                       (resource.RLIMIT_FSIZE, limits["file_size_bytes"]),
                       (resource.RLIMIT_NOFILE, limits["nofile"]),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    cpu = int(timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _child(job: dict, workdir: str, out_fd: int, result_w: int, uid: int | None, check) -> None:
    """The sandboxed process: own session, fresh fds, dropped uid, limits, then the program."""
    os.setsid()
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(result_w, RESULT_FD)
    os.closerange(RESULT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _set_limits(job["limits"], job["timeout"])
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir,
                      LANG="C.UTF-8", OMP_NUM_THREADS="1")
    program, test, nonce = job.pop("program"), job.pop("test"), job.pop("nonce").encode()
    # Line-buffered so the captured output is complete even though the child ends in _exit.
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.addaudithook(_audit_hook())
    _run_untrusted(program, test, nonce, check)


# --- supervision: the zygote forks one child per job and watches it ----------------------

def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`, including detached ones (setsid, double fork).

    kill(-1) from a process of that uid reaches all of them; a fork racing the signal is
    aborted by the kernel, so repeating until nothing is left converges at once.
    """
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(50):
                os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _reap_leftovers(uid: int | None) -> bool:
    """Kill and reap what the program left running; True if there was anything.

    The zygote is a child subreaper, so every process the program started and abandoned is
    now its child: no children means nothing survived, which keeps the usual case cheap.
    Without a uid of its own, survivors cannot be told apart safely: they are only reported.
    """
    try:
        first = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    if uid is not None:
        _kill_uid(uid)
    try:
        while uid is not None or first != (0, 0):
            first = os.waitpid(-1, 0 if uid is not None else os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def _supervise(job: dict, config: dict, number: int, check) -> dict:
    """Fork the sandboxed child, enforce the wall clock, collect what it reported."""
    uid = config["isolation"]["uid"]
    workdir = os.path.join(config["base"], f"job-{number}")
    output = os.path.join(config["base"], f"out-{number}")
    os.mkdir(workdir, 0o700)
    if uid is not None:
        os.chown(workdir, uid, uid)
    out_fd = os.open(output, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    result_r, result_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(job, workdir, out_fd, result_w, uid, check)
        except BaseException as exc:
            # Only reachable before the program starts (the program always ends in _exit).
            try:
                os.write(RESULT_FD, SETUP_FAILED + f"{type(exc).__name__}: {exc}".encode())
            except OSError:
                pass
        finally:
            os._exit(70)
    os.close(result_w)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(result_r, select.POLLIN)
    deadline = start + job["timeout"]
    result, timed_out, exited = b"", False, False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            else:
                chunk = os.read(result_r, 65536)
                if not chunk:
                    poller.unregister(result_r)
                elif len(result) < RESULT_CAP:
                    result += chunk
    _, status = os.waitpid(pid, 0)
    wall = time.monotonic() - start
    os.close(pidfd)
    if uid is None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    leftovers = _reap_leftovers(uid)
    os.set_blocking(result_r, False)
    try:
        while len(result) < RESULT_CAP and (chunk := os.read(result_r, 65536)):
            result += chunk
    except BlockingIOError:
        pass
    os.close(result_r)
    output_text = os.pread(out_fd, job["output_bytes"], 0).decode("utf-8", "replace")
    os.close(out_fd)
    os.unlink(output)
    shutil.rmtree(workdir, ignore_errors=True)
    if not result.startswith(READY) and not timed_out:
        # The child died before the program started: a fault of the sandbox, not the sample.
        why = result[len(SETUP_FAILED):].decode("utf-8", "replace") if result.startswith(
            SETUP_FAILED) else output_text[-1000:] or "no message"
        return {"setup_error": f"the sandboxed child failed to start: {why}"}
    return {
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "wall_s": wall,
        "result": result[len(READY):RESULT_CAP].decode("latin-1"),
        "output": output_text,
        "leftover_processes": leftovers,
    }


# --- zygote: a clean, preloaded interpreter that runs one job at a time -------------------

def _read_frame(fd: int) -> bytes | None:
    header = _read_exact(fd, 4)
    return None if header is None else _read_exact(fd, struct.unpack(">I", header)[0])


def _read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(struct.pack(">I", len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _zygote(config: dict) -> None:
    """Preload, snapshot, then run jobs one at a time until stdin closes."""
    for name in PRELOAD:
        __import__(name)
    uid = config["isolation"]["uid"]
    if uid is not None:
        _kill_uid(uid)  # leftovers of an earlier sandbox that was killed mid-job
    # Taken once here, before any program runs; each child checks against this copy.
    check = _tamper_check()
    gc.freeze()  # children's collections then skip (and do not copy) the zygote's objects
    _write_frame(1, json.dumps({"ready": True, "isolation": config["isolation"]}).encode())
    number = 0
    while (frame := _read_frame(0)) is not None:
        number += 1
        job = json.loads(frame)
        del frame
        try:
            report = _supervise(job, config, number, check)
        except Exception as exc:
            report = {"setup_error": f"{type(exc).__name__}: {exc}"}
        del job
        _write_frame(1, json.dumps(report).encode())


if __name__ == "__main__":
    mode, config_json = sys.argv[1], sys.argv[2]
    if mode == "setup":
        _setup(json.loads(config_json))
    else:
        _zygote(json.loads(config_json))
