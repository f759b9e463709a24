"""The scripts as a user types them (issue 11): --help before the heavy imports, a finished run never
clobbered, --resume with the run's own settings, step 0 kept through checkpoint rotation, normal file modes,
and `python merge.py --method dare` finding the experts under out/ (or saying what to run first)."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8"]


def script(name: str, *args: str, cwd: Path, importtime: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), str(ROOT / name), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["train.py", "merge.py", "experiment.py", "sft.py"])
def test_help_answers_before_torch_and_transformers_load(name, tmp_path):
    out = script(name, "--help", cwd=tmp_path, importtime=True)
    assert out.returncode == 0, out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers"} & imported
    assert "--help" in out.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A working folder with two finished experts, out/math (3 steps, keeping one checkpoint) and out/code."""
    cwd = tmp_path_factory.mktemp("front")
    for args in (["--domains", "math", "--steps", "3", "--save-every", "1", "--keep-checkpoints", "1"],
                 ["--domains", "code", "--steps", "1"]):
        r = script("train.py", *args, *SMALL, cwd=cwd)
        assert r.returncode == 0, r.stderr[-3000:]
    return cwd


def test_step_0_survives_rotation_and_outputs_have_normal_modes(runs):
    ckpts = runs / "out" / "math" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000000", "step_000003"]
    umask = os.umask(0)
    os.umask(umask)
    for p in [runs / "out" / "math", *(runs / "out" / "math").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode))


def test_training_again_refuses_in_one_line_and_leaves_the_run_byte_identical(runs):
    run_dir = runs / "out" / "math"
    before = digests(run_dir)
    r = script("train.py", "--domains", "math", "--steps", "5", *SMALL, cwd=runs)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert lines[0].startswith("train.py: error:") and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert digests(run_dir) == before


def test_resume_takes_the_runs_own_settings(runs, tmp_path):
    """`--resume --steps 4` continues out/code (1 step done) with its saved settings: its prompts per step and
    group size, not the tiny preset's, which would give 16 x 8 = 128 completions a step."""
    r = script("train.py", "--domains", "code", "--resume", "--steps", "2", cwd=runs)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((runs / "out" / "code" / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["prompts_per_step"] == 2 and saved["group_size"] == 2
    steps = [json.loads(line) for line in (runs / "out" / "code" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2]


def test_merge_as_typed_finds_the_experts_and_their_base(runs):
    r = script("merge.py", "--method", "dare", cwd=runs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merging the 2 single-domain runs in out/ (out/code, out/math)" in r.stdout
    assert "against their common base out/code/checkpoints/step_000000" in r.stdout
    report = json.loads((runs / "out" / "merge-dare" / "merge_report.json").read_text())
    assert sorted(report["config"]["models"]) == ["out/code", "out/math"]


def test_merge_as_typed_without_runs_says_what_to_run_first(tmp_path):
    for folder in (tmp_path, tmp_path / "out"):
        folder.mkdir(exist_ok=True)
        r = script("merge.py", "--method", "dare", cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert "no finished single-domain runs in out/" in lines[0] and "python train.py --domains math" in lines[0]
    assert [p.name for p in tmp_path.rglob("*")] == ["out"]


@pytest.mark.parametrize("args, message", [
    (["--model", "out/nope"], "no such folder out/nope"),
    (["--model", "./nope"], "no such folder ./nope"),
    (["--data", "nowhere.jsonl"], "nowhere.jsonl"),
    (["--domains", "chess"], "unknown domain"),
])
def test_train_user_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    """Online mode, with the Hub's address pointing nowhere: a path taken for a Hub id would fail differently."""
    (tmp_path / "out").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--steps", "1", *args], cwd=tmp_path,
                       env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and message in lines[0], r.stderr
    assert [p.name for p in tmp_path.rglob("*")] == ["out"]
