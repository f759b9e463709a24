"""Code verifier: run the completion's Python program against row["tests"] in a sandbox.

    from verifiers import code
    row = {"tests": {"kind": "stdio", "inputs": ["2 3\\n"], "outputs": ["5\\n"]}}
    code.verify("```python\\na, b = map(int, input().split())\\nprint(a + b)\\n```", row)   # 1.0

The program is the last ```python fenced block of the graded text (else the last ``` block, else the
whole text). Test kinds (row["tests"]["kind"]):
  "stdio"   one run per input; the exit status must be 0 and stdout must match the expected output
            by LiveCodeBench's rule (`outputs_match`: line by line after stripping, numbers compared
            as decimals, so "2.50" matches "2.5" and a leading space does not matter).
  "assert"  HumanEval style: one run of program + tests["code"] + "check(<entry_point>)".
tests["prelude"] = "livecodebench" (LiveCodeBench rows, data/loaders.py) puts LiveCodeBench's standard
imports before the program, as its harness does (PRELUDES): a solution that uses List, defaultdict or
heapq without importing them runs there, so it runs here.
Reward 1.0 only if every test passes; `score` also reports "passed" and "total". A run stopped by the
wall clock or by the CPU-time limit gets the one verdict "timeout" (which of the two fires first on a
busy loop is a race, so both read the same), and one stopped at the output-size limit "output limit";
after such a run the remaining stdio tests are counted failed without running, so a program stuck in
a loop costs one timeout, not one per test.

Two graders (grader=...): "lenient" (default) runs every test of the row; "paper" is the paper's code
reward, pass-all on at most 20 of the row's stdio tests (`paper_tests`: drawn once per row id, so
every completion of a row meets the same ones), and no reward without `</think>` when think=True.

Accepted and refused completions (tests/test_verifiers.py and tests/test_sandbox.py):

    | completion                                          | reward | error                      |
    |-----------------------------------------------------|--------|----------------------------|
    | ```python block that prints the right output        | 1      |                            |
    | right output, then exit status 1                    | 0      |                            |
    | right on 1 test of 2                                | 0      | (passed 1, total 2)        |
    | does not compile                                    | 0      | does not compile: ...      |
    | while True: pass                                    | 0      | timeout                    |
    | assert kind: sys.exit(0) / os._exit(0) before check | 0      |                            |
    | prints without end                                  | 0      | output limit               |

Sandbox (one fresh process per test run, see `run_sandboxed`):
  * always: a new session whose whole process group is SIGKILLed at the wall-clock timeout; rlimits
    on CPU seconds, address space (memory), file size (which also caps the captured stdout: stdout
    goes to a file), open files and, where the kernel enforces it, processes; a minimal environment;
    python -I -S (no site-packages, no PYTHON* variables, no user site); a fresh temporary directory,
    removed afterwards.
  * with bubblewrap (`bwrap` on PATH and working; checked once): new pid, network, ipc, uts and cgroup
    namespaces, so there is no network at all (not even loopback to the host) and every process the
    program starts dies with the sandbox. The filesystem is a fresh root holding only read-only /usr,
    /lib* and the Python installation (wherever it is: a virtualenv under /tmp is bound inside the
    sandbox's own /tmp, symlinks to the interpreter are recreated), a private /proc and /dev, and
    size-capped tmpfs at /tmp and at the working directory /sandbox; the project, /root, /home, /work
    and the host's /tmp do not exist.
    When the verifier runs as root (as in CI), the program drops to its own unprivileged uid before it
    starts (one uid per concurrent run), so RLIMIT_NPROC binds (root is exempt from it), it cannot
    signal the verifier or any other run, and it has no capabilities.
  * without bubblewrap (fallback, weaker): the same rlimits, environment and temporary directory as
    working directory, plus a Python audit hook installed before the program runs that refuses
    sockets, fork/exec/subprocess, kill, ctypes, and opening or changing files outside the working
    directory (reading the Python installation, /usr and /lib is allowed). The hook is a guard, not a
    boundary: it does not stop a program that gets at native code some other way, and the program
    runs with the verifier's uid, so RLIMIT_NPROC does not bind for root. Install bubblewrap
    (`apt-get install bubblewrap`) for real isolation.

Assert-kind results cannot be faked by exiting early (sys.exit(0), os._exit(0), ...): the run passes
only if the harness, after check() returns, prints a random per-run token that it read from stdin
(then replaced stdin with /dev/null). A program that walks the interpreter's frames to find the token
could still forge a pass, and one whose results compare equal to anything (an object with __eq__
always True) passes asserts written with ==, as in HumanEval's own harness.
"""

import functools
import hashlib
import json
import math as _pymath
import os
import queue
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from decimal import Decimal, InvalidOperation

from verifiers.common import graded_text, result

# --- program extraction ----------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(text: str) -> str:
    """The last ```python (or ```py / ```python3) block, else the last ``` block, else the whole text.

    A block left open at the end (a truncated completion) runs to the end of the text.
    """
    blocks = _FENCE.findall(text)
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python_blocks:
        return python_blocks[-1]
    return blocks[-1][1] if blocks else text


# --- the sandbox -----------------------------------------------------------------------------------

# Runs inside the sandbox as the program's __main__ wrapper: python -I -S -c _HARNESS <args>.
# Order matters: limits first (raising them needs root), read the program and the token, drop root,
# install the fallback guard, then run the program. Arguments: mode ("stdio" | "marker"), uid to
# drop to (-1: keep), cpu seconds, memory bytes, file-size bytes, processes, guard roots ("" = none).
_HARNESS = r"""
import os, resource, sys
def _main():
    mode, uid, cpu_s, memory, fsize, nproc, guard = sys.argv[1:8]
    uid, cpu_s, memory, fsize, nproc = int(uid), int(cpu_s), int(memory), int(fsize), int(nproc)
    for limit, value in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_NPROC, (nproc, nproc)),
                         (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(limit, value)
    with open("prog.py", encoding="utf-8") as f:
        code = compile(f.read(), "prog.py", "exec")
    token = None
    if mode == "marker":
        token = sys.stdin.buffer.read()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if uid >= 0 and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if guard:
        _install_guard(guard.split(os.pathsep), os.getcwd())
    sys.argv = ["prog.py"]
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    if token is not None:
        sys.stdout.flush()
        os.write(1, b"\n" + token + b"\n")

def _install_guard(read_roots, workdir):
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked_prefixes = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn",
                        "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "os.system",
                        "pty.", "winreg.", "_posixsubprocess.")
    path_events = {"os.remove": True, "os.rename": True, "os.rmdir": True, "os.mkdir": True,
                   "os.chmod": True, "os.chown": True, "os.symlink": True, "os.link": True,
                   "os.truncate": True, "os.utime": True, "os.listdir": False, "os.scandir": False,
                   "os.chdir": False}
    def inside(path, roots):
        if isinstance(path, int):
            return True  # an already-open descriptor: the open itself was checked
        path = os.path.realpath(os.fsdecode(path))
        return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
    def hook(event, args):
        if event.startswith(blocked_prefixes) or (event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess")):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args[0] is not None:
            writing = (args[2] or 0) & write_flags or any(c in (args[1] or "") for c in "wax+")
            if not inside(args[0], [workdir, os.devnull] if writing else read_roots + [workdir, os.devnull, "/dev/urandom"]):
                raise PermissionError(f"sandbox: opening {args[0]!r} is not allowed")
        elif event in path_events and args and args[0] is not None:
            paths = [args[0], args[1]] if event in ("os.rename", "os.symlink", "os.link") else [args[0]]
            roots = [workdir] if path_events[event] else read_roots + [workdir]
            if not all(inside(p, roots) for p in paths if isinstance(p, (str, bytes, os.PathLike))):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
    sys.addaudithook(hook)

_main()
"""

SANDBOX_UID_BASE = 1_000_000_000  # + pid * 256 + slot: unused by real accounts, below 2**31
_MAX_SLOTS = 256  # concurrent sandboxes per verifier process
_free_slots: "queue.Queue[int]" = queue.Queue()
for _slot in range(_MAX_SLOTS):
    _free_slots.put(_slot)


def sandbox_uids() -> range:
    """The uids this process's sandboxed programs run as when the verifier is root (one per slot)."""
    base = SANDBOX_UID_BASE + (os.getpid() % (1 << 22)) * _MAX_SLOTS  # pid_max is at most 2**22
    return range(base, base + _MAX_SLOTS)


def _python_roots() -> list[str]:
    """Directories holding the Python installation the sandboxed program runs with."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    roots = sorted(r for r in roots if r != "/")
    # a root inside another is bound with it (a venv's prefix inside a conda prefix, say)
    return [r for r in roots if not any(r.startswith(o.rstrip("/") + "/") for o in roots if o != r)]


# Mount points the sandbox makes its own (fresh tmpfs, /proc, /dev): the host's are never bound there whole.
_PRIVATE = ("/tmp", "/sandbox", "/proc", "/dev")


def _interpreter_links(roots: list[str]) -> list[tuple[str, str]]:
    """(target, link) for each symlink on the way to sys.executable, as typed, that lies outside the bound roots
    (a python reached through a symlinked folder or file): recreated inside the sandbox, so the path that
    run_sandboxed starts resolves there as on the host."""
    inside = lambda p: any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots + ["/usr"])  # noqa: E731
    links, path, done = [], os.path.abspath(sys.executable), ""
    for _ in range(40):   # each round follows one link; 40 like the kernel's own limit
        rest = [c for c in path.split("/") if c]
        done = ""
        for i, c in enumerate(rest):
            done += "/" + c
            if os.path.islink(done) and not inside(done):
                target = os.readlink(done)
                links.append((target, done))
                path = os.path.normpath(os.path.join(os.path.dirname(done), target, *rest[i + 1:]))
                break
        else:
            return links
    return links


def _bwrap_argv(workdir: str, disk_bytes: int) -> list[str]:
    """bwrap options: fresh namespaces and a root with only the system, Python and a private workdir.
    The private /tmp and /sandbox come first and the Python installation after, so that an interpreter under
    /tmp (a virtualenv at /tmp/venv) is bound, read-only, inside the sandbox's own /tmp rather than hidden by it."""
    # --as-pid-1: the program itself is the pid namespace's pid 1, so when it exits (or is killed) the
    # kernel kills every other process in the namespace before bwrap sees it exit. With bwrap's own
    # reaper as pid 1, bwrap would exit first and the program's children would die moments later.
    argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--as-pid-1", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(disk_bytes), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(disk_bytes), "--tmpfs", "/sandbox"]
    roots = []
    for root in _python_roots():
        if root == "/usr" or root.startswith("/usr/"):
            continue
        if root in _PRIVATE:   # Python installed with --prefix=/tmp: its own folders only, not the host's /tmp
            roots += [os.path.join(root, n) for n in sorted(os.listdir(root))
                      if n in ("bin", "lib", "lib64", "include", "pyvenv.cfg")]
        else:
            roots.append(root)
    made = set(_PRIVATE)
    links = _interpreter_links(roots)
    for path in roots + [link for _, link in links]:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):  # bwrap would copy the host's modes (/root is 0700): make them 0755
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
    for root in roots:
        argv += ["--ro-bind", root, root]
    for target, link in links:
        argv += ["--symlink", target, link]
    argv += ["--ro-bind", os.path.join(workdir, "prog.py"), "/sandbox/prog.py", "--chdir", "/sandbox"]
    return argv


@functools.cache
def _bwrap_probe() -> tuple[bool, str]:
    """(works, why not): start one empty program under bwrap, once per process."""
    if shutil.which("bwrap") is None:
        return False, "bwrap is not installed"
    workdir = tempfile.mkdtemp(prefix="m2rl-sandbox-")
    try:
        with open(os.path.join(workdir, "prog.py"), "w") as f:
            f.write("")
        argv = _bwrap_argv(workdir, 1 << 20) + [sys.executable, "-I", "-S", "-c", "pass"]
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, timeout=30)
        if run.returncode != 0:
            message = run.stderr.decode(errors="replace").strip().splitlines()
            return False, f"bwrap is installed but failed (exit status {run.returncode}: {message[-1] if message else 'no message'})"
        return True, ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap is installed but could not start: {type(e).__name__}: {e}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bwrap_works() -> bool:
    """True if `bwrap` is installed and can start a sandbox here (it needs namespaces; checked once)."""
    return _bwrap_probe()[0]


def sandbox_status() -> str:
    """One line naming the sandbox that code runs in, and why it is the fallback when it is."""
    works, why = _bwrap_probe()
    if works:
        return "code sandbox: bubblewrap (namespaces, read-only system, no network) + rlimits"
    return f"code sandbox: FALLBACK to rlimits + audit hook, weaker isolation ({why}; apt-get install bubblewrap)"


def _exits_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for proc to exit, at most timeout_s; True if it did. Uses a pidfd where the kernel has
    them (Linux 5.3+): Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be most of
    the time of a typical 30 ms test run."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _kill(proc: subprocess.Popen, bwrap_info_fd: int | None) -> None:
    """Kill a sandbox that ran out of time; return once none of its processes is left.

    Under bwrap, SIGKILL to the sandbox's pid 1 (the program) makes the kernel kill every process in
    its pid namespace, and pid 1 only counts as dead (so bwrap, its parent, only exits) once all of
    them are gone; killing bwrap instead would return while the program's processes were still dying.
    Otherwise, and as a backstop, the whole process group goes, while its leader is unreaped (so the
    group id cannot have been reused).
    """
    if bwrap_info_fd is not None and select.select([bwrap_info_fd], [], [], 0)[0]:
        try:
            os.kill(json.loads(os.read(bwrap_info_fd, 1 << 16))["child-pid"], signal.SIGKILL)
            proc.wait(timeout=10)
            return
        except (ValueError, KeyError, ProcessLookupError, subprocess.TimeoutExpired):
            pass  # bwrap had not started its namespace yet, or it did not exit: kill the group
    os.killpg(proc.pid, signal.SIGKILL)


def _execute(argv: list[str], cwd: str, env: dict | None, files: dict, timeout_s: float,
             info_fds: tuple[int, int] | None) -> tuple[int, bool]:
    """Start argv in a new session with the stdin/stdout/stderr files, wait at most timeout_s, kill
    it if need be. Returns (exit status, timed out). Closes info_fds (bwrap's --info-fd pipe)."""
    info_read, info_write = info_fds or (None, None)
    try:
        with open(files["stdin"], "rb") as fin, open(files["stdout"], "wb") as fout, \
                open(files["stderr"], "wb") as ferr:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=fin, stdout=fout, stderr=ferr,
                                    start_new_session=True, pass_fds=() if info_write is None else (info_write,))
            if info_write is not None:
                os.close(info_write)  # only bwrap writes to it
                info_write = None
            if _exits_within(proc, timeout_s):
                return proc.wait(), False
            _kill(proc, info_read)
            return proc.wait(), True
    finally:
        for fd in (info_read, info_write):
            if fd is not None:
                os.close(fd)


def run_sandboxed(source: str, stdin: str = "", *, marker: bool = False, timeout_s: float = 5.0,
                  memory_mb: int = 1024, max_output_bytes: int = 1 << 20, max_processes: int = 32,
                  disk_mb: int = 64, use_bwrap: bool | None = None) -> dict:
    """Run Python `source` as __main__ in a fresh sandbox with `stdin`; see the module docstring.

    Returns {"exit_code": int, "stdout": str, "stderr": str (its last 4 kB), "timed_out": bool,
    "finished": bool | None}. exit_code is negative when Popen saw the process die of that signal,
    128 + n when bwrap reports its child died of signal n. With marker=True, "finished" says whether
    the program ran to its end (the harness printed the secret token, which is cut from stdout).
    use_bwrap: None = bubblewrap when it works, True = require it, False = the rlimit+guard fallback.
    """
    if use_bwrap is None:
        use_bwrap = bwrap_works()
    elif use_bwrap and not bwrap_works():
        raise RuntimeError("use_bwrap=True but bubblewrap is not installed or cannot create namespaces")
    workdir = tempfile.mkdtemp(prefix="m2rl-sandbox-")  # mode 0700: other users cannot look in
    slot = _free_slots.get()  # blocks only if _MAX_SLOTS runs are already going in this process
    try:
        token = secrets.token_hex(16) if marker else None
        files = {name: os.path.join(workdir, name) for name in ("prog.py", "stdin", "stdout", "stderr")}
        with open(files["stdin"], "w", encoding="utf-8") as f:
            f.write(token if marker else stdin)
        if use_bwrap:
            with open(files["prog.py"], "w", encoding="utf-8") as f:
                f.write(source)
            info_fds = os.pipe()  # bwrap writes the host pid of the sandbox's pid 1 here
            argv = _bwrap_argv(workdir, disk_mb << 20) + ["--info-fd", str(info_fds[1])]
            cwd, env, uid, guard = workdir, None, sandbox_uids()[slot], ""
        else:
            # The working directory holds only prog.py; the stdin/stdout/stderr files sit one level
            # up, outside what the guard lets the program open.
            cwd = os.path.join(workdir, "work")
            os.mkdir(cwd)
            with open(os.path.join(cwd, "prog.py"), "w", encoding="utf-8") as f:
                f.write(source)
            argv, info_fds, env = [], None, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd}
            # Without bwrap the host's permissions apply, and an unprivileged uid could not even
            # read a Python installed under /root; so the program keeps the verifier's uid.
            uid, guard = -1, os.pathsep.join(_python_roots() + ["/usr", "/lib", "/lib64"])
        # The CPU limit is a backstop for a killer that died; one second above the wall clock, so the
        # wall clock normally stops a busy loop first. Either way the verdict is "timeout" (_verdict).
        cpu_s = _pymath.ceil(timeout_s) + 1
        argv += [sys.executable, "-I", "-S", "-c", _HARNESS, "marker" if marker else "stdio", str(uid),
                 str(cpu_s), str(memory_mb << 20), str(max_output_bytes), str(max_processes), guard]
        exit_code, timed_out = _execute(argv, cwd, env, files, timeout_s, info_fds)
        with open(files["stdout"], "rb") as f:
            stdout = f.read(max_output_bytes + 1024).decode("utf-8", errors="replace")
        with open(files["stderr"], "rb") as f:
            f.seek(max(0, os.path.getsize(files["stderr"]) - 4096))
            stderr = f.read().decode("utf-8", errors="replace")
    finally:
        _free_slots.put(slot)
        shutil.rmtree(workdir, ignore_errors=True)
    finished = None
    if marker:
        body, _, last = stdout.rstrip("\n").rpartition("\n")
        finished = last == token and exit_code == 0
        stdout = body if finished else stdout
    return {"exit_code": exit_code, "stdout": stdout, "stderr": stderr, "timed_out": timed_out,
            "finished": finished}


# --- the verifier ----------------------------------------------------------------------------------


# Exit statuses of a run the kernel stopped at a limit (negative: Popen's signal number; 128+n: bwrap
# reporting its child's death by signal n): SIGXCPU at the soft CPU-time limit, SIGKILL at the hard one
# (for a program that catches SIGXCPU), SIGXFSZ at the output-size limit.
_CPU_KILLED = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}
_OUTPUT_KILLED = {-signal.SIGXFSZ, 128 + signal.SIGXFSZ}


def _verdict(run: dict) -> str | None:
    """Why a run was stopped ("timeout", "output limit"), or None if it ended by itself.

    The wall clock and the CPU-time limit both give "timeout": a busy loop spends CPU time as fast as
    wall time, so which of the two stops it first is a race, and one verdict for both keeps the result
    the same from run to run.
    """
    if run["timed_out"] or run["exit_code"] in _CPU_KILLED:
        return "timeout"
    if run["exit_code"] in _OUTPUT_KILLED:
        return "output limit"
    return None


def normalize_output(text: str) -> str:
    """Strip the whole output, then each of its lines (LiveCodeBench's first comparison step)."""
    return "\n".join(line.strip() for line in text.strip().split("\n"))


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def outputs_match(actual: str, expected: str) -> bool:
    """LiveCodeBench's stdio rule: after stripping the whole output, the same number of lines, and each
    line equal after stripping, or else made of the same numbers ("2.50" == "2.5", "1e3" == "1000").
    Leading and trailing spaces of a line and trailing blank lines never matter; a blank line inside
    the output does. The numbers compare exactly, as decimals: "0.333" is not "0.3333"."""
    got, want = actual.strip().split("\n"), expected.strip().split("\n")
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        a, b = a.strip(), b.strip()
        if a != b and (_as_decimals(a) is None or _as_decimals(a) != _as_decimals(b)):
            return False
    return True


# What LiveCodeBench's harness runs before every program (lcb_runner/evaluation/testing_util.py): star imports
# of these standard modules, the modules themselves, and a recursion limit of 50000.
_LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
PRELUDES = {"livecodebench": "".join(f"from {m} import *\n" for m in _LCB_MODULES)
            + "".join(f"import {m}\n" for m in _LCB_MODULES if m not in ("builtins", "typing"))
            + "sys.setrecursionlimit(50000)\n"}


def _tests_error(tests) -> str | None:
    """Why row["tests"] is malformed, or None."""
    if not isinstance(tests, dict):
        return "'tests' must be a dict"
    if tests.get("prelude") is not None and tests["prelude"] not in PRELUDES:
        return f"unknown tests prelude {tests['prelude']!r} (known: {', '.join(PRELUDES)})"
    if tests.get("kind") == "stdio":
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) \
                or not inputs or not all(isinstance(s, str) for s in inputs + outputs):
            return "stdio tests need 'inputs' and 'outputs': equal-length non-empty lists of str"
        return None
    if tests.get("kind") == "assert":
        if not isinstance(tests.get("code"), str) or not isinstance(tests.get("entry_point"), str) \
                or not tests["entry_point"].isidentifier():
            return "assert tests need 'code' (str) and 'entry_point' (an identifier)"
        return None
    return f"unknown tests kind {tests.get('kind')!r} (expected 'stdio' or 'assert')"


# The compile precheck's SyntaxWarnings ("invalid decimal literal" ...) would print to stderr on every
# malformed completion; they are silenced for this file name only.
_PRECHECK_NAME = "<m2rl completion>"
warnings.filterwarnings("ignore", category=SyntaxWarning, module=re.escape(_PRECHECK_NAME))


PAPER_MAX_TESTS = 20  # the paper's code reward: pass all of at most 20 sampled tests


def paper_tests(tests: dict, row_id) -> dict:
    """At most PAPER_MAX_TESTS of a stdio row's tests, drawn without replacement by a generator seeded
    with the row id, so that every completion of a row meets the same tests, in every run."""
    if tests["kind"] != "stdio" or len(tests["inputs"]) <= PAPER_MAX_TESTS:
        return tests
    seed = int.from_bytes(hashlib.sha256(repr(row_id).encode()).digest()[:8], "big")
    keep = sorted(random.Random(seed).sample(range(len(tests["inputs"])), PAPER_MAX_TESTS))
    return {**tests, "inputs": [tests["inputs"][i] for i in keep], "outputs": [tests["outputs"][i] for i in keep]}


def score(completion: str, row: dict, *, think: bool = True, grader: str = "lenient", timeout_s: float = 5.0,
          memory_mb: int = 1024, use_bwrap: bool | None = None) -> dict:
    """{"reward", "error", "passed", "total"}: reward 1.0 only if every test in row["tests"] passes.

    grader="paper" runs at most 20 of a row's stdio tests (`paper_tests`) and refuses a completion
    without `</think>` when think=True; "lenient" runs them all.
    """
    tests = row.get("tests")
    problem = _tests_error(tests)
    if problem:
        return result(0.0, f"row {row.get('id')!r}: {problem}", passed=0, total=0)
    if grader == "paper":
        tests = paper_tests(tests, row.get("id"))
    total = len(tests["inputs"]) if tests["kind"] == "stdio" else 1
    text, error = graded_text(completion, think, grader)
    if text is None:
        return result(0.0, error, passed=0, total=total)
    program = extract_program(text)
    if not program.strip():
        return result(0.0, "empty program", passed=0, total=total)
    try:  # compiling runs nothing; a program that does not compile would fail every test, so skip the sandbox
        compile(program, _PRECHECK_NAME, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return result(0.0, f"does not compile: {type(e).__name__}", passed=0, total=total)
    try:
        return _run_tests(program, tests, total, dict(timeout_s=timeout_s, memory_mb=memory_mb, use_bwrap=use_bwrap))
    except OSError as e:  # the sandbox could not be set up (e.g. out of file descriptors)
        return result(0.0, f"sandbox failed: {e}", passed=0, total=total)


def _run_tests(program: str, tests: dict, total: int, limits: dict) -> dict:
    if tests.get("prelude"):
        program = PRELUDES[tests["prelude"]] + "\n" + program
    if tests["kind"] == "assert":
        source = f"{program}\n\n{tests['code']}\n\ncheck({tests['entry_point']})\n"
        run = run_sandboxed(source, marker=True, **limits)
        return result(float(run["finished"]), _verdict(run), passed=int(run["finished"]), total=1)
    passed, error = 0, None
    for stdin, expected in zip(tests["inputs"], tests["outputs"]):
        run = run_sandboxed(program, stdin, **limits)
        passed += run["exit_code"] == 0 and outputs_match(run["stdout"], expected)
        error = _verdict(run)
        if error:  # the remaining tests would be stopped too
            break
    return result(float(passed == total), error, passed=passed, total=total)


def verify(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> float:
    """1.0 if the completion's program passes every test of row["tests"] in the sandbox, else 0.0."""
    return score(completion, row, think=think, grader=grader)["reward"]
