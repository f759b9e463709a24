"""The README's commands, run as written from a copy of the repository (with small step counts), so the README
cannot drift from the code: the two commands and the experiment stage by stage."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# appended to every train.py command: the run is the README's, only shorter
SMALL_TRAIN = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "16"]
SMALL_REPORT = ["--eval-problems", "2", "--eval-k", "1", "--kl-problems", "2"]


def section(title: str) -> str:
    """The text of one README section: from its "## " heading to the next."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def commands(text: str) -> list[str]:
    """The commands of a section's ```bash blocks: one per line, backslash continuations joined, comments and
    blank lines dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        out += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return out


def shorter(cmd: str) -> list[str]:
    """The README command as argv, with the small sizes appended to training and report commands."""
    argv = shlex.split(cmd)
    script = next((a for a in argv if a.endswith(".py")), "")
    if script == "train.py":
        return argv + SMALL_TRAIN
    if script == "analyze.py" and "report" in argv:
        return argv + SMALL_REPORT
    return argv


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A copy of the repository's tracked files (what a fresh clone holds, with this checkout's changes)."""
    dest = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_ci_runs_the_readme_test_command():
    two = commands(section("Two commands"))
    assert len(two) == 2
    assert two[1] in (ROOT / ".ci" / "run").read_text()


def test_command_1_as_written(clone):
    """Command 1 after its install part (which CI has just run): the mixed math+code run."""
    cmd = commands(section("Two commands"))[0]
    train = cmd[cmd.index("torchrun"):]
    r = run(shorter(train), clone)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = clone / "out" / "math-code"
    for name in ("model.safetensors", "metrics.jsonl", "samples.jsonl", "run.json", "train_config.json"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "checkpoints" / "step_000000").is_dir()


def test_stage_by_stage_as_written(clone):
    """Every command of the stage-by-stage section, in order, in a fresh out/: experts, the mixed model, a merge
    found from the runs, MT-OPD, the report."""
    shutil.rmtree(clone / "out", ignore_errors=True)
    cmds = commands(section("The experiment, stage by stage"))
    assert any("merge.py" in c for c in cmds) and any("analyze.py report" in c for c in cmds)
    for cmd in cmds:
        r = run(shorter(cmd), clone)
        assert r.returncode == 0, (cmd, r.stderr[-3000:])
    report = clone / "out" / "analysis" / "report.md"
    assert report.exists()
    text = report.read_text()
    for run_name in ("math", "code", "science", "if", "mixed", "merge-ties", "opd"):
        assert f"| {run_name} " in text, run_name
