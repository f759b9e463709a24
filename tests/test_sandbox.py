"""The code verifier's sandbox contains hostile programs: every attack from issue 2, in both modes.

    python -m pytest -q tests/test_sandbox.py

Each attack runs under bubblewrap (skipped where bwrap cannot make namespaces) and under the
rlimit+audit-hook fallback. Attacks are written so that success would be visible: the program prints
what it got, or leaves a trace on the host that the test then looks for.
"""

import os
import socket
import tempfile
import threading

import pytest

from verifiers import code, verify_batch

MODES = [pytest.param(True, id="bwrap", marks=pytest.mark.skipif(not code.bwrap_works(), reason="bwrap unusable")),
         pytest.param(False, id="fallback")]


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Sandboxes make their temporary directories here, so a leftover is seen (and not someone else's)."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    assert list(root.iterdir()) == [], "a sandbox left its temporary directory behind"


def processes(predicate) -> list[int]:
    """Pids of live (non-zombie) processes whose (cmdline, real uid) satisfy predicate."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if status["State"].split()[0] != "Z" and predicate(cmdline, int(status["Uid"].split()[0])):
            found.append(int(pid))
    return found


def no_sandbox_processes() -> bool:
    uids = code.sandbox_uids()
    return processes(lambda cmdline, uid: uid in uids) == []


def run(program: str, use_bwrap: bool, **kw) -> dict:
    return code.run_sandboxed(program, use_bwrap=use_bwrap, timeout_s=kw.pop("timeout_s", 1.0), **kw)


def stdio_row(expected: str) -> dict:
    return {"id": "attack", "tests": {"kind": "stdio", "inputs": [""], "outputs": [expected]}}


@pytest.mark.parametrize("use_bwrap", MODES)
def test_honest_program_runs(use_bwrap):
    out = run("import sys, math, json, collections\nprint(sum(map(int, sys.stdin.read().split())))", use_bwrap,
              stdin="1 2 3\n")
    assert (out["exit_code"], out["stdout"], out["timed_out"]) == (0, "6\n", False)


@pytest.mark.parametrize("use_bwrap", MODES)
@pytest.mark.parametrize("program", ["while True: pass", "import time\ntime.sleep(60)",
                                     "import time\nwhile True:\n    try: time.sleep(60)\n    except BaseException: pass"])
def test_infinite_loop_is_killed(use_bwrap, program):
    out = run(program + "\nprint('done')", use_bwrap)
    assert out["exit_code"] != 0 and "done" not in out["stdout"]
    result = code.score(f"```python\n{program}\nprint('done')\n```", stdio_row("done"), timeout_s=1.0,
                        use_bwrap=use_bwrap)
    assert result["reward"] == 0.0 and result["error"] is not None


@pytest.mark.parametrize("use_bwrap", MODES)
def test_fork_bomb_is_contained(use_bwrap):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    out = run(bomb, use_bwrap)
    assert out["exit_code"] != 0
    assert no_sandbox_processes()


@pytest.mark.parametrize("use_bwrap", MODES)
def test_process_limit_binds(use_bwrap):
    """At most max_processes processes: under bwrap by RLIMIT_NPROC on the sandbox uid, in the
    fallback because the guard refuses fork outright."""
    program = ("import os, time\nn = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
               "    n += 1\nprint(n)\n")
    out = run(program, use_bwrap, max_processes=8)
    if use_bwrap:
        assert out["exit_code"] == 0 and 0 < int(out["stdout"]) < 8
    else:
        assert out["exit_code"] == 0 and out["stdout"] == "0\n"
    assert no_sandbox_processes()  # the sleeping children died with the sandbox


@pytest.mark.parametrize("use_bwrap", MODES)
@pytest.mark.parametrize("program", ["x = bytearray(8 << 30)", "x = []\nwhile True:\n    x.append(bytearray(1 << 24))"])
def test_memory_bomb_fails(use_bwrap, program):
    out = run(program + "\nprint('allocated')", use_bwrap, timeout_s=5.0, memory_mb=256)
    assert out["exit_code"] != 0 and "allocated" not in out["stdout"]
    assert not out["timed_out"] and "MemoryError" in out["stderr"]


@pytest.mark.parametrize("use_bwrap", MODES)
def test_huge_output_is_capped(use_bwrap):
    out = run("while True:\n    print('x' * 10000)", use_bwrap, max_output_bytes=100_000)
    assert out["exit_code"] != 0
    assert 0 < len(out["stdout"]) <= 100_000


@pytest.mark.parametrize("use_bwrap", MODES)
def test_cannot_write_outside_its_directory(use_bwrap, tmp_path):
    targets = [f"/tmp/m2rl-escape-{os.getpid()}", str(tmp_path / "escape"),
               os.path.join(os.path.dirname(os.path.dirname(code.__file__)), f"ESCAPE-{os.getpid()}")]
    program = "import os\n" + "".join(
        f"try:\n    open({t!r}, 'w').write('pwned')\n    print('wrote', {t!r})\nexcept OSError as e:\n    print('refused', e)\n"
        for t in targets) + "try:\n    open('../escape', 'w').write('x')\n    print('wrote ..')\nexcept OSError:\n    pass\n"
    out = run(program, use_bwrap)
    for target in targets:
        assert not os.path.exists(target), f"sandbox wrote {target} on the host"
    assert "wrote .." not in out["stdout"]
    # Its own directory is writable: files written there are discarded with the sandbox.
    out = run("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())", use_bwrap)
    assert out["stdout"] == "ok\n"


@pytest.mark.parametrize("use_bwrap", MODES)
def test_cannot_read_project_files(use_bwrap):
    project = os.path.dirname(os.path.dirname(os.path.abspath(code.__file__)))
    secrets = [os.path.abspath(code.__file__), os.path.join(project, "requirements.txt")]
    program = "import os\n" + "".join(
        f"try:\n    print(open({s!r}).read())\nexcept OSError as e:\n    print('refused', type(e).__name__)\n"
        for s in secrets) + f"try:\n    print(os.listdir({project!r}))\nexcept OSError as e:\n    print('refused', type(e).__name__)\n"
    out = run(program, use_bwrap)
    assert out["exit_code"] == 0 and out["stdout"].count("refused") == 3
    assert "SANDBOX_UID_BASE" not in out["stdout"] and "verifiers" not in out["stdout"]


@pytest.mark.parametrize("use_bwrap", MODES)
def test_cannot_open_sockets(use_bwrap):
    received, done = [], threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    port = listener.getsockname()[1]

    def accept():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            received.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'pwned')\nprint('connected')\n")
    result = code.score(program, stdio_row("connected"), think=False, timeout_s=3.0, use_bwrap=use_bwrap)
    done.set()
    thread.join()
    listener.close()
    assert result["reward"] == 0.0 and received == []


@pytest.mark.parametrize("use_bwrap", MODES)
def test_cannot_kill_its_parent_or_the_verifier(use_bwrap):
    # Under bwrap the program is pid 1 of its namespace: getppid() is 0 there (the parent is outside).
    program = ("import os, signal\nfor pid in {os.getppid(), %d} - {0}:\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
               "        print('killed', pid)\n    except OSError as e:\n        print('refused', type(e).__name__)\n" % os.getpid())
    out = run(program, use_bwrap)
    assert "killed" not in out["stdout"]
    # Still here: the verifier (this process) is alive and scores the next completion.
    assert code.score("print(1)", stdio_row("1"), think=False, use_bwrap=use_bwrap)["reward"] == 1.0


def test_kill_everything_inside_bwrap_only_kills_itself():
    if not code.bwrap_works():
        pytest.skip("bwrap unusable")
    # kill(-1) signals every process the caller may signal: inside the sandbox, only its own.
    out = run("import os, time\nfor _ in range(3):\n    os.fork()\nos.kill(-1, 9)\ntime.sleep(0.5)\nprint('ok')", True)
    assert out["exit_code"] == 0 and out["stdout"] == "ok\n"
    assert code.score("print(2)", stdio_row("2"), think=False, use_bwrap=True)["reward"] == 1.0
    assert no_sandbox_processes()


@pytest.mark.parametrize("use_bwrap", MODES)
def test_daemon_does_not_outlive_the_run(use_bwrap):
    tag = f"m2rl-leak-{os.getpid()}-{int(use_bwrap)}"
    program = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               f"        os.execv(sys.executable, [sys.executable, '-S', '-c', 'import time; time.sleep(60)', {tag!r}])\n"
               "    os._exit(0)\nprint('parent done')\n")
    run(program, use_bwrap)
    assert processes(lambda cmdline, uid: tag.encode() in cmdline) == []
    assert no_sandbox_processes()


@pytest.mark.parametrize("use_bwrap", MODES)
@pytest.mark.parametrize("cheat", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()",
                                   "raise SystemExit", "print('all tests passed')"])
def test_assert_tests_cannot_be_skipped_by_exiting(use_bwrap, cheat):
    row = {"tests": {"kind": "assert", "code": "def check(candidate):\n    assert candidate(2) == 4\n",
                     "entry_point": "square"}}
    honest = code.score("def square(x):\n    return x * x\n", row, think=False, use_bwrap=use_bwrap)
    cheating = code.score(f"def square(x):\n    return 0\n{cheat}\n", row, think=False, use_bwrap=use_bwrap)
    assert honest["reward"] == 1.0 and cheating["reward"] == 0.0


def test_batch_runs_in_parallel_on_a_bounded_pool(monkeypatch):
    """All four workers must be inside the sandbox at once (the barrier only opens for four), and
    never more than four (the counter's maximum)."""
    real_run, barrier, lock = code.run_sandboxed, threading.Barrier(4, timeout=20), threading.Lock()
    active, peak = [0], [0]

    def counting_run(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            barrier.wait()
            return real_run(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(code, "run_sandboxed", counting_run)
    rows = [{"id": str(i), "domain": "code", "tests": {"kind": "stdio", "inputs": [f"{i}\n"], "outputs": [f"{2 * i}\n"]}}
            for i in range(8)]
    completions = ["print(2 * int(input()))" if i % 2 == 0 else "print(0)" for i in range(8)]
    results = verify_batch(completions, rows, think=False, workers=4)
    assert [r["reward"] for r in results] == [1.0, 0.0] * 4
    assert peak[0] == 4
