"""Bench smoke test: every bench/*.py runs end to end at its smallest setting and prints its table, so a benchmark
cannot rot unseen. Peers (TRL, mergekit, the agreement references) are used when their venvs exist at the benches'
default paths and skipped by the benches themselves when not. Nothing here is timed: the figures are not read."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bench file -> (smallest-setting flags, lines its output must contain: table headers and row names)
BENCHES = {
    "agreement.py": (["--parts", "code"], []),   # without /work/venv-ref it says so and stops (checked below)
    "generate.py": (["--prompts", "2", "--group-size", "2", "--max-new-tokens", "8", "--repeats", "1"],
                    ["path", "hf generate", "fast_generate", "speed-up"]),
    "gpu.py": ([], []),   # needs CUDA: on a CPU machine it must stop with one line saying so (checked below)
    "logprobs.py": (["--positions", "64", "--vocab", "512", "--hidden", "32"],
                    ["peak MB", "one_shot", "chunked", "chunked_entropy"]),
    "merge.py": (["--hidden", "64", "--layers", "1", "--intermediate", "128", "--vocab", "256", "--experts", "2",
                  "--methods", "average,ties_tensor,sce,task_arithmetic_mmap"],
                 ["page cache", "anon MB", "average", "ties_tensor", "sce", "task_arithmetic_mmap"]),
    "train.py": (["--steps", "2", "--warmup", "1", "--nproc", "2"],
                 ["rollout tok/s", "m2rl 1 proc", "m2rl 2 procs"]),
    "verifiers.py": (["--rows", "2", "--workers", "2"],
                     ["serial/s", "math", "math-verify", "code-assert", "code-stdio", "code-group", "science", "if"]),
}


def test_every_bench_is_in_the_table():
    assert sorted(f for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py")) == sorted(BENCHES)


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_runs_and_prints_its_table(name):
    flags, expected = BENCHES[name]
    # one torch thread per process: the figures are not read, and on a loaded machine two threads per process
    # make the tiny model's ops many times slower (train.py honours OMP_NUM_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, os.path.join("bench", name), *flags], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600, env=env)   # generous: a loaded machine is slow, not wrong
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    if name == "gpu.py" and "needs CUDA" in out:   # a CPU machine: one clean line, no stack
        assert len(out.strip().splitlines()) == 1 and r.returncode == 1, out
        return
    assert r.returncode == 0, out[-3000:]
    if name == "agreement.py" and "no reference venv" in out:
        assert len(out.strip().splitlines()) == 1, out
        return
    if name == "agreement.py":
        expected = ["code stdio vs verl prime_code"]
    lines = out.splitlines()
    missing = [e for e in expected if not any(line.split() and e in line for line in lines)]
    assert not missing, f"{name} printed no {missing}:\n{out[-3000:]}"
    if name == "verifiers.py":   # each workload's row: name, then the numbers
        rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()}
        for workload in expected[1:]:
            assert len(rows[workload]) == 6 and all(float(x) >= 0 for x in rows[workload]), rows[workload]
