"""The code sandbox finds its interpreter wherever it is installed (issue 24): a virtualenv under /tmp (which the
sandbox's own /tmp used to hide, so every reward ran under the weaker fallback), a python reached through a
symlinked folder or a symlinked file. Each interpreter below runs the probe and programs under bubblewrap, and the
sandbox's /tmp stays its own: the host's files there are not visible and the bound interpreter is read-only."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from verifiers import code

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not code.bwrap_works(), reason="bwrap unusable here, whatever the interpreter")

# Run by the interpreter under test: the probe's verdict, then what a sandboxed program sees of /tmp and of itself.
CHECK = r"""
import json, sys
from verifiers import code
prog = '''
import os, sys
print(sorted(os.listdir("/tmp")))
try:
    open(os.path.join(sys.argv[1], "written"), "w")
    print("wrote")
except OSError as e:
    print(type(e).__name__)
'''.replace("sys.argv[1]", repr(sys.argv[1]))
run = code.run_sandboxed(prog, use_bwrap=True)
print(json.dumps({"status": code.sandbox_status(), "stdout": run["stdout"], "exit": run["exit_code"]}))
"""


@pytest.fixture(scope="module")
def under_tmp():
    """A folder directly under the host's /tmp (pytest's tmp_path may live elsewhere), with a file of the host's
    that a sandboxed program must not see."""
    folder = tempfile.mkdtemp(prefix="m2rl-interp-", dir="/tmp")
    Path(folder, "host-secret").write_text("host")
    yield Path(folder)
    shutil.rmtree(folder)


def check(python: str, writable_probe: str) -> dict:
    import json
    r = subprocess.run([python, "-c", CHECK, writable_probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_sandboxed(result: dict, visible_top: str) -> None:
    assert result["status"].startswith("code sandbox: bubblewrap"), result["status"]
    assert result["exit"] == 0, result
    listing, wrote = result["stdout"].strip().splitlines()
    assert eval(listing) == [visible_top]   # only the folder holding the interpreter: no host-secret, nothing else
    assert wrote == "OSError"               # bound read-only


def test_a_virtualenv_under_tmp_uses_bubblewrap(under_tmp):
    venv = under_tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    result = check(str(venv / "bin" / "python"), str(venv))
    assert_sandboxed(result, under_tmp.name)


def test_a_python_through_a_symlinked_folder_or_file_uses_bubblewrap(under_tmp):
    real = os.path.realpath(sys.executable)
    (under_tmp / "linked").symlink_to(os.path.dirname(os.path.dirname(real)), target_is_directory=True)
    via_folder = under_tmp / "linked" / "bin" / os.path.basename(real)
    assert_sandboxed(check(str(via_folder), os.path.dirname(real)), under_tmp.name)
    (under_tmp / "python-link").symlink_to(real)
    assert_sandboxed(check(str(under_tmp / "python-link"), os.path.dirname(real)), under_tmp.name)


def test_the_sandbox_attacks_run_under_bubblewrap_from_a_venv_under_tmp(under_tmp):
    """A few of tests/test_sandbox.py's attacks, run by the /tmp virtualenv's pytest: they run, none skips."""
    venv = under_tmp / "venv-attacks"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                        "tests/test_sandbox.py", "-k", "bwrap and (project_files or sockets or outside_its_directory)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]
