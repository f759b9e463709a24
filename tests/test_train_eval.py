"""train.py's evaluation during training (the paper's Figure 2): the schedule, eval.jsonl, the rank layout, and
its time kept out of the training time."""

import json
import os
import subprocess
import sys

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("steps, every, expect", [
    (25, 5, [0, 5, 10, 15, 20, 25]),
    (7, 3, [0, 3, 6, 7]),        # the last step always, even off the grid
    (4, 10, [0, 4]),             # an interval past the run: the start and the end
    (10, 0, []),                 # off
    (0, 5, [0]),
])
def test_eval_schedule(steps, every, expect):
    assert train.eval_schedule(steps, every) == expect


def test_eval_record_averages_per_domain():
    problems = [{"id": "a", "domain": "math", "rewards": [1.0, 0.0]},
                {"id": "b", "domain": "math", "rewards": [1.0, 1.0]},
                {"id": "c", "domain": "if", "rewards": [0.0, 0.0]}]
    rec = train.eval_record(5, problems, 1.5)
    assert rec == {"step": 5, "eval_s": 1.5, "k": 2, "avg@k": {"math": 0.75, "if": 0.0}, "n": {"math": 2, "if": 1},
                   "problems": problems}


def test_eval_domains_all_and_errors():
    assert train.Config(eval_domains=("all",)).eval_domains == train.data.DOMAINS
    with pytest.raises(train.UserError, match="--eval-domains"):
        train.Config(eval_domains=("maths",))
    with pytest.raises(train.UserError, match="--eval-data"):
        train.Config(eval_every=2, data="blend.jsonl")


def test_eval_rows_are_the_first_of_each_domain_and_match_analyze_eval():
    cfg = train.Config(eval_every=1, eval_domains=("math", "if"), eval_problems=3)
    rows = train.eval_rows(cfg)
    assert [r["domain"] for r in rows] == ["math"] * 3 + ["if"] * 3
    # the problems `analyze.py eval --n-problems 3 --problem-seed 0` scores, so the curve ends on its table
    assert [r["id"] for r in rows[:3]] == [r["id"] for r in train.data.embedded("math", "eval", n=3, seed=0)]


def test_two_ranks_write_every_problem_once_in_order(tmp_path):
    """torchrun with 2 processes and an odd number of problems (ranks hold 3 and 2): eval.jsonl has one line
    per scheduled step, each with every held-out problem once, in eval_rows order; run.json keeps the
    evaluation's seconds apart from the training time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", "--domains", "math", "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
                        "--max-new-tokens", "16", "--eval-every", "2", "--eval-domains", "math,science",
                        "--eval-problems", "3", "--eval-k", "2", "--out-dir", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in open(tmp_path / "math" / "eval.jsonl")]
    assert [x["step"] for x in lines] == [0, 2]
    want = [row["id"] for row in train.eval_rows(train.Config(eval_domains=("math", "science"), eval_problems=3))]
    for x in lines:
        assert [p["id"] for p in x["problems"]] == want
        assert all(len(p["rewards"]) == 2 and set(p["rewards"]) <= {0.0, 1.0} for p in x["problems"])
        assert x["n"] == {"math": 3, "science": 3} and x["k"] == 2
        for d in ("math", "science"):
            mine = [sum(p["rewards"]) / 2 for p in x["problems"] if p["domain"] == d]
            assert x["avg@k"][d] == pytest.approx(sum(mine) / 3)
    run = json.load(open(tmp_path / "math" / "run.json"))
    assert run["eval_s"] == pytest.approx(sum(x["eval_s"] for x in lines), rel=1e-6)
    metrics = [json.loads(x) for x in open(tmp_path / "math" / "metrics.jsonl")]
    # wall_s is the sum of the steps' own times (the last step's "time"), with no evaluation in it
    assert run["wall_s"] == pytest.approx(metrics[-1]["time"], abs=1e-3)
