"""The sandbox against hostile programs, each run for real.

Every hostile program also defines a wrong `f` (or its own, tampering one), and the trusted
test asserts the right answer, so a pass can only come from the attack. For each: the harness returns, the sample fails, and
nothing outside the sandbox's temporary directory changes.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

from codeslm.eval.sandbox import Limits, Outcome, Sandbox, _Zygote, job_payload, verdict

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the sandbox needs Linux")

WRONG = "\ndef f():\n    return 0\n"
TEST = "assert f() == 1\n"
SECRET = "hunter2-not-a-real-secret"


@pytest.fixture(scope="module")
def box():
    os.environ["CODESLM_FAKE_SECRET"] = SECRET  # in the harness's own environment
    try:
        with Sandbox(workers=2, limits=Limits(timeout_s=2.0)) as sandbox:
            yield sandbox
    finally:
        del os.environ["CODESLM_FAKE_SECRET"]


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def test_correct_and_wrong_programs(box):
    right = box.run("def f():\n    return 1\n", TEST)
    assert right.passed and not right.left_processes
    wrong = box.run(WRONG, TEST)
    assert wrong.status == "failed" and wrong.error == "AssertionError"
    assert box.run("def f(:\n", TEST).error.startswith("SyntaxError")


def test_reports_isolation(box):
    isolation = box.isolation
    assert set(isolation) >= {"network", "readonly_fs", "uid", "containment"}
    if os.geteuid() == 0:
        assert isolation["network"] and isolation["readonly_fs"]
        assert isolation["containment"] == "uid" and isolation["uid"] >= 1_000_000_000


def test_limits_must_be_positive():
    from codeslm.errors import EvalError

    with pytest.raises(EvalError, match="timeout_s=0"):
        Limits(timeout_s=0)


def test_only_the_exact_nonce_after_a_clean_exit_passes():
    report = {"result": "PASS abc", "exit": 0, "signal": None, "timed_out": False,
              "output": "", "wall_s": 0.0, "leftover_processes": False}
    assert verdict(report, "abc").passed
    assert not verdict(dict(report, result="PASS abd"), "abc").passed
    assert not verdict(dict(report, result="PASS abcPASS abc"), "abc").passed
    assert not verdict(dict(report, exit=1), "abc").passed
    assert verdict(dict(report, timed_out=True), "abc").status == "timed out"
    assert verdict(dict(report, result="", exit=0), "abc").error.startswith("exited with code 0")


HOSTILE = {
    "early exit(0)": "exit(0)\n",
    "early sys.exit(0)": "import sys\nsys.exit(0)\n",
    "early os._exit(0)": "import os\nos._exit(0)\n",
    "SystemExit raised in the tested function": "def f():\n    raise SystemExit(0)\n",
    "os._exit(0) in the tested function": "import os\ndef f():\n    os._exit(0)\n",
    "KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "kill itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "forged result line": (
        "import os\nfor fd in range(3, 20):\n    try:\n"
        "        os.write(fd, b'PASS ' + b'0' * 32)\n    except OSError:\n        pass\n"
        "os._exit(0)\n"),
    "patched builtins": (
        "import builtins\nbuiltins.abs = lambda x: 0\n"
        "builtins.AssertionError = type('Quiet', (Exception,), {})\n"),
    "patched builtins inside the tested function": (
        "import builtins\ndef f():\n    builtins.isinstance = lambda *a: True\n    return 1\n"),
    "patched sys.modules": (
        "import sys, types\nfake = types.ModuleType('math')\nfake.isclose = lambda *a, **k: True\n"
        "sys.modules['math'] = fake\n"),
    "patched module attribute": "import math\nmath.isclose = lambda *a, **k: True\n",
    "trace function to skip asserts": (
        "import sys\ndef skip(frame, event, arg):\n    return None\nsys.settrace(skip)\n"),
    "introspection for the nonce": textwrap.dedent("""\
        import gc, os, sys, re
        found = set()
        def grab(obj):
            for m in re.findall(r"[0-9a-f]{32}", repr(obj)):
                found.add(m)
        for attempt in (lambda: sys._getframe(1).f_locals, lambda: gc.get_objects(),
                        lambda: [v for v in vars(sys.modules['__main__']).values()],
                        lambda: __import__('ctypes'), lambda: open('/proc/self/environ').read()):
            try:
                grab(attempt())
            except BaseException:
                pass
        try:
            raise ValueError
        except ValueError as e:
            try:
                grab(e.__traceback__.tb_frame.f_back.f_locals)
            except BaseException:
                pass
        for nonce in found:
            os.write(3, b'PASS ' + nonce.encode())
        os._exit(0)
        """),
    "closing stdout and stderr": "import os, sys\nos.close(1)\nos.close(2)\nsys.stdout.close()\n",
    "killing the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill(-1)": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "huge allocation": "x = bytearray(1 << 40)\n",
    "growing allocation": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))\n",
    "unbounded output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "unbounded stderr": "import sys\nwhile True:\n    print('y' * 65536, file=sys.stderr)\n",
    "infinite loop": "while True:\n    pass\n",
    "sleep forever": "import time\ntime.sleep(10 ** 6)\n",
    "deep recursion": "def g(n):\n    return g(n + 1)\ng(0)\n",
}


@pytest.fixture(scope="module")
def hostile_outcomes(box) -> dict[str, Outcome]:
    names = list(HOSTILE)
    # The hostile code comes last, so a hostile `f` replaces the wrong one.
    jobs = [(WRONG + HOSTILE[name], "import math\nassert math.isclose(abs(f() - 1), 0)\n")
            for name in names]
    start = time.monotonic()
    # Filling a gigabyte takes seconds on a loaded machine; it must end by the memory limit.
    outcomes = box.run_many(jobs, timeout_s=6.0)
    assert time.monotonic() - start < 60
    return dict(zip(names, outcomes, strict=True))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_never_passes(hostile_outcomes, name):
    outcome = hostile_outcomes[name]
    assert not outcome.passed, f"{name}: {outcome}"


def test_hostile_programs_fail_for_the_right_reason(hostile_outcomes):
    errors = {name: o.error for name, o in hostile_outcomes.items()}
    assert "tampered with builtins" in errors["patched builtins"]
    assert "tampered with builtins.isinstance" in errors["patched builtins inside the tested function"]
    assert "tampered with sys.modules['math']" in errors["patched sys.modules"]
    assert "tampered with math.isclose" in errors["patched module attribute"]
    assert "sys.settrace" in errors["trace function to skip asserts"]
    assert "before the tests finished" in errors["early os._exit(0)"]
    assert errors["early sys.exit(0)"] == "SystemExit: 0"
    assert errors["SystemExit raised in the tested function"] == "SystemExit: 0"
    assert "MemoryError" in errors["huge allocation"]
    assert "MemoryError" in errors["growing allocation"]
    assert "RecursionError" in errors["deep recursion"]
    # Python ignores SIGXFSZ, so the write past the file-size limit fails with EFBIG.
    assert "File too large" in errors["unbounded output"]
    assert "File too large" in errors["unbounded stderr"]
    assert hostile_outcomes["infinite loop"].status == "timed out"
    assert hostile_outcomes["sleep forever"].status == "timed out"
    assert len(hostile_outcomes["unbounded output"].output) <= Limits().output_bytes


def test_fork_flood_and_detached_children_are_contained(box):
    # Bounded: at most 300 forks, so a broken sandbox cannot take the machine down.
    flood = textwrap.dedent("""\
        import os, time
        for i in range(300):
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid == 0:
                if i % 2:
                    os.setsid()
                    if os.fork():
                        os._exit(0)
                time.sleep(1000)
                os._exit(0)
        time.sleep(1000)
        """)
    outcome = box.run(flood + WRONG, TEST, timeout_s=1.0)
    assert outcome.status == "timed out" and outcome.left_processes
    for zygote in box._zygotes:
        if zygote.uid is not None:
            assert processes_of(zygote.uid) == []
    assert box.run("def f():\n    return 1\n", TEST).passed


def test_files_outside_the_sandbox_stay_untouched(box, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    stray = Path("/tmp") / f"codeslm-sandbox-stray-{os.getpid()}"
    program = textwrap.dedent(f"""\
        import os, shutil
        for attempt in (lambda: open({str(sentinel)!r}, "w").write("pwned"),
                        lambda: os.remove({str(sentinel)!r}),
                        lambda: os.rename({str(sentinel)!r}, {str(sentinel)!r} + ".moved"),
                        lambda: shutil.rmtree({str(tmp_path)!r}),
                        lambda: open({str(tmp_path / "new.txt")!r}, "w").write("x"),
                        lambda: open({str(stray)!r}, "w").write("x"),
                        lambda: os.chmod({str(sentinel)!r}, 0o777)):
            try:
                attempt()
            except OSError:
                pass
        open("inside.txt", "w").write("the sandbox's own directory is writable")
        def f():
            return open("inside.txt").read().startswith("the sandbox")
        """)
    outcome = box.run(program, "assert f() is True\nassert False, 'stop here'\n")
    assert outcome.error == "AssertionError: stop here"  # it ran to the end
    assert sentinel.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    assert oct(sentinel.stat().st_mode & 0o777) != oct(0o777)
    assert not stray.exists()


def test_environment_secrets_are_not_visible(box):
    program = textwrap.dedent("""\
        import os
        seen = [os.environ.get("CODESLM_FAKE_SECRET", "")]
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            try:
                seen.append(open(f"/proc/{entry}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        print(seen)
        def f():
            return "\\n".join(seen)
        """)
    outcome = box.run(program, f"assert {SECRET!r} in f()\n")
    assert not outcome.passed
    assert SECRET not in outcome.output


def test_network_is_unreachable(box):
    if not box.isolation["network"]:
        pytest.skip("network namespaces are not permitted here")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    program = textwrap.dedent(f"""\
        import socket
        def f():
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                return 1
            except OSError:
                return 0
        """)
    try:
        assert not box.run(program, TEST).passed
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_closing_stdout_does_not_fail_a_correct_program(box):
    program = "import os, sys\nos.close(1)\nos.close(2)\ndef f():\n    return 1\n"
    assert box.run(program, TEST).passed


def test_sandbox_survives_its_own_process_dying(box):
    zygote = box._zygotes[0]

    def kill_soon():
        time.sleep(0.5)
        os.kill(zygote.proc.pid, 9)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    outcomes = box.run_many([("import time\ntime.sleep(3)\n" + WRONG, TEST)] * 2)
    killer.join()
    assert not any(o.passed for o in outcomes)
    assert any("restarted" in o.error for o in outcomes)
    assert box.run("def f():\n    return 1\n", TEST).passed


def test_without_a_uid_of_its_own_still_runs_and_judges():
    zygote = _Zygote(Limits())
    zygote.uid = None  # what a non-root user gets
    try:
        zygote.start()
        assert zygote.isolation["uid"] is None
        assert zygote.isolation["containment"] == "process group"
        assert zygote.send(job_payload("def f():\n    return 1\n", TEST, "n" * 32, 2.0, Limits()))
        assert verdict(zygote.receive(10), "n" * 32).passed
    finally:
        zygote.close()


def test_a_child_that_cannot_start_is_a_sandbox_error_not_a_failed_sample():
    from codeslm.errors import EvalError

    # More open files than the kernel allows: setrlimit fails before any program runs.
    with Sandbox(workers=1, limits=Limits(nofile=10 ** 9)) as broken:
        with pytest.raises(EvalError, match="failed to start.*ValueError"):
            broken.run("def f():\n    return 1\n", TEST)
