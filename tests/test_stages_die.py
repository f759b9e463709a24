"""experiment.py's stages die with it (issue 24): after `kill -9` of experiment.py no process of its stages is left,
torchrun's workers included, which torchrun starts in sessions of their own. Waits are polls with a bound; the
verdict never depends on how long something took."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import experiment

ROOT = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> dict[int, list[str]]:
    """pid -> argv of every process whose command line contains `text`."""
    found = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(text in a for a in argv) and int(p) != os.getpid():
            found[int(p)] = argv
    return found


def poll(predicate, bound_s: float):
    """predicate()'s first true value, or its last value once bound_s has passed."""
    deadline = time.monotonic() + bound_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_supervised_stage_returns_the_commands_exit_status_and_output():
    proc = experiment.launch([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=120)
    assert (proc.returncode, out) == (3, b"hi\n")
    proc = experiment.launch([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert proc.wait(timeout=120) == 128 + signal.SIGKILL


def test_a_stage_tree_dies_with_its_parent(tmp_path):
    """A parent (standing in for experiment.py) launches a stage whose command starts a grandchild in a session of
    its own, as torchrun does with its workers; SIGKILL of the parent ends all of them."""
    tag = str(tmp_path / "tree-marker")
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, experiment\n"
         "cmd = [sys.executable, '-c', 'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", "
         "\"import time; time.sleep(600)\", sys.argv[1]], start_new_session=True); print(\"up\", flush=True); "
         "time.sleep(600)', sys.argv[1]]\n"
         "p = experiment.launch(cmd, stdout=subprocess.PIPE)\n"
         "print(p.stdout.readline().decode().strip(), flush=True)\n"
         "p.wait()\n", tag], cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert parent.stdout.readline() == b"up\n"
    # parent, supervisor, stage command, its grandchild in its own session (/proc can lag a process being born)
    assert poll(lambda: len(processes_mentioning(tag)) == 4, 30), processes_mentioning(tag)
    parent.kill()
    parent.wait()
    left = poll(lambda: not processes_mentioning(tag), 30) or processes_mentioning(tag)
    assert left is True, left


def test_kill_9_of_experiment_py_leaves_no_stage_running(tmp_path):
    """The real experiment, killed while its two training stages run side by side."""
    out = tmp_path / "exp"
    exp = subprocess.Popen([sys.executable, "experiment.py", "--out", str(out), "--model", str(ROOT / "data" / "tiny_sft"),
                            "--domains", "math,code", "--steps", "50", "--methods", "ties",
                            "--train-args=--prompts-per-step 2 --group-size 2 --max-new-tokens 8"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def both_trainers():
            found = [p for p, argv in processes_mentioning(str(out)).items() if argv[1:2] == ["train.py"]]
            return found if len(found) == 2 else []
        trainers = poll(both_trainers, 600)
        assert len(trainers) == 2, processes_mentioning(str(out))
    finally:
        exp.kill()
        exp.wait()
    left = poll(lambda: not processes_mentioning(str(out)), 30) or processes_mentioning(str(out))
    assert left is True, left
