"""experiment.py: the stage plan, the skip/redo rule, --preset paper writing commands only, and a cut-down
pipeline run end to end (2 domains, 2 steps, 2 merge methods, tiny eval) whose report.md has every table."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import experiment

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--domains", "math,code", "--steps", "2", "--mixed-steps", "2", "--methods", "ties,dare",
         "--train-args=--prompts-per-step 4 --group-size 2",
         "--opd-args=--prompts-per-step 4 --group-size 2",
         "--eval-problems", "2", "--eval-k", "1", "--kl-problems", "2", "--max-new-tokens", "8",
         "--train-eval-problems", "1", "--pair-problems", "2", "--verify-problems", "1"]


def small_cfg(out) -> experiment.Config:
    return experiment.cli(["--out", str(out), *SMALL])


def test_cli_parses_comma_lists_and_rejects_unknown_names(tmp_path):
    cfg = small_cfg(tmp_path)
    assert cfg.domains == ("math", "code") and cfg.methods == ["ties", "dare"] and cfg.steps == 2
    with pytest.raises(experiment.UserError, match="unknown merge method"):
        experiment.plan(experiment.Config(methods=["ties", "nope"]))
    with pytest.raises(experiment.UserError, match="unknown domain"):
        experiment.Config(domains=("math", "poetry"))


def test_default_methods_are_the_papers_merge_table():
    import merge
    assert experiment.Config().methods == list(merge.PAPER_TABLE.values())


def test_plan_orders_stages_and_wires_experts_into_merges_and_opd(tmp_path):
    stages = experiment.plan(small_cfg(tmp_path))
    names = [s.name for s in stages]
    assert names == ["sft", "train/math", "train/code", "train/mixed", "merge/ties", "merge/dare", "train/opd",
                     "eval", "weights", "kl", "consistency", "pair/math-code", "pair-eval/math-code", "verify",
                     "report"]
    made = set()
    for s in stages:   # a stage only reads what an earlier stage writes
        assert set(s.inputs) <= made, (s.name, set(s.inputs) - made)
        made |= set(s.outputs)
    by = {s.name: s for s in stages}
    runs, base = tmp_path / "seed_0" / "runs", str(tmp_path / "base")
    assert by["sft"].cmd == ["python", "sft.py", "--out", base]
    assert by["merge/ties"].cmd[by["merge/ties"].cmd.index("--base") + 1] == base
    assert by["merge/dare"].cmd[by["merge/dare"].cmd.index("--models") + 1] == f"{runs / 'math'},{runs / 'code'}"
    # Figure 2: the experts and the mixed run evaluate every domain while training; MT-OPD does not
    for name in ("train/math", "train/code", "train/mixed"):
        cmd = by[name].cmd
        assert cmd[cmd.index("--eval-every") + 1] == "5" and cmd[cmd.index("--eval-domains") + 1] == "all"
    assert "--eval-every" not in by["train/opd"].cmd
    # Table 6: the pair merge over both experts, evaluated on both members' domains under the pair's name
    pair = by["pair/math-code"].cmd
    assert pair[pair.index("--method") + 1] == "ties" and pair[pair.index("--models") + 1] == f"{runs / 'math'},{runs / 'code'}"
    pe = by["pair-eval/math-code"].cmd
    assert pe[pe.index("--models") + 1] == f"math+code={tmp_path / 'seed_0' / 'pairs' / 'merge-ties-math-code'}"
    assert pe[pe.index("--domains") + 1: pe.index("--domains") + 3] == ["math", "code"]
    # Table 7: base, experts, mixed and MT-OPD judged
    ver = by["verify"].cmd
    assert ver[ver.index("--models") + 1: ver.index("--domains")] == [
        f"base={base}", f"math={runs / 'math'}", f"code={runs / 'code'}", f"mixed={runs / 'mixed'}", f"opd={runs / 'opd'}"]
    opd = by["train/opd"].cmd
    assert opd[opd.index("--teachers") + 1] == f"math={runs / 'math'},code={runs / 'code'}"
    assert opd[opd.index("--domains") + 1] == "math,code"
    # every training run starts from the SFT base, resumable, one process on CPU
    for name in ("train/math", "train/code", "train/mixed", "train/opd"):
        cmd = by[name].cmd
        assert by[name].train_steps == 2 and "--resume" in cmd and cmd[:2] == ["python", "train.py"]
        assert cmd[cmd.index("--model") + 1] == base


def test_experts_and_mixed_take_their_own_step_counts(tmp_path):
    """The paper's recipe: the mixed run twice an expert's steps (paper: 400 and 200)."""
    cfg = experiment.Config(out=str(tmp_path))
    by = {s.name: s for s in experiment.plan(cfg)}
    assert (cfg.steps, cfg.mixed_steps) == (by["train/math"].train_steps, by["train/mixed"].train_steps)
    assert cfg.mixed_steps == 2 * cfg.steps and by["train/opd"].train_steps == cfg.steps


def test_seeds_repeat_every_run_and_merge_and_report_over_all_of_them(tmp_path):
    cfg = experiment.cli(["--out", str(tmp_path), *SMALL, "--seeds", "2", "--seed", "5"])
    stages = experiment.plan(cfg)
    names = [s.name for s in stages]
    assert names[0] == "sft" and names[-1] == "report" and names.count("sft") == 1
    for seed in (5, 6):
        assert f"s{seed}/train/math" in names and f"s{seed}/merge/ties" in names and f"s{seed}/eval" in names
        cmd = next(s.cmd for s in stages if s.name == f"s{seed}/train/mixed")
        assert cmd[cmd.index("--seed") + 1] == str(seed)
        assert cmd[cmd.index("--out-dir") + 1] == str(tmp_path / f"seed_{seed}" / "runs")
    report = stages[-1].cmd
    runs = report[report.index("--runs") + 1: report.index("--analyses")]
    assert runs == [str(tmp_path / f"seed_{s}" / "runs") for s in (5, 6)]
    # every seed's eval scores the same problems, so the report can average them per problem
    evals = [s.cmd for s in stages if s.name.endswith("/eval")]
    assert {c[c.index("--problem-seed") + 1] for c in evals} == {"0"}


def touch(path: Path, when: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (when, when))


def test_done_needs_outputs_same_command_and_fresh_inputs(tmp_path):
    cfg = experiment.Config(out=str(tmp_path))
    a = experiment.Stage("a", ["python", "a.py"], [str(tmp_path / "a.out")])
    b = experiment.Stage("b", ["python", "b.py"], [str(tmp_path / "b.out")], inputs=[str(tmp_path / "a.out")])
    assert not experiment.is_done(cfg, a)          # nothing yet
    now = time.time()
    touch(tmp_path / "a.out", now - 10)
    assert not experiment.is_done(cfg, a)          # output without the stamp of the command that made it
    for s in (a, b):
        experiment.fresh_start(cfg, s)
    touch(tmp_path / "b.out", now - 5)
    assert experiment.is_done(cfg, a) and experiment.is_done(cfg, b)
    assert experiment.to_run(cfg, [a, b]) == []
    touch(tmp_path / "a.out", now)                 # input newer than b's output: b is stale
    assert experiment.is_done(cfg, a) and not experiment.is_done(cfg, b)
    assert [s.name for s in experiment.to_run(cfg, [a, b])] == ["b"]
    touch(tmp_path / "b.out", now + 5)
    a2 = experiment.Stage("a", ["python", "a.py", "--other"], a.outputs)   # a's command changed: a and b redo
    assert [s.name for s in experiment.to_run(cfg, [a2, b])] == ["a", "b"]


def test_fresh_start_keeps_a_killed_training_run_and_cleans_a_changed_one(tmp_path):
    cfg = experiment.Config(out=str(tmp_path))
    run = tmp_path / "runs" / "math"
    stage = experiment.Stage("train/math", ["python", "train.py", "--steps", "5"], [str(run / "run.json")],
                             clean=[str(run)], train_steps=5)
    experiment.fresh_start(cfg, stage)
    touch(run / "checkpoints" / "step_000000" / "model.safetensors", time.time())
    experiment.fresh_start(cfg, stage)             # same command, never finished: kept for --resume
    assert (run / "checkpoints").exists()
    changed = experiment.Stage("train/math", ["python", "train.py", "--steps", "9"], stage.outputs,
                               clean=stage.clean, train_steps=9)
    experiment.fresh_start(cfg, changed)           # another command: start over
    assert not run.exists()


def test_paper_preset_writes_the_commands_and_runs_nothing(tmp_path):
    out = tmp_path / "paper"
    experiment.main(experiment.cli(["--preset", "paper", "--out", str(out)]))
    assert sorted(p.name for p in out.iterdir()) == ["commands.sh"]
    script = (out / "commands.sh").read_text()
    assert subprocess.run(["bash", "-n", str(out / "commands.sh")]).returncode == 0   # valid bash
    lines = [line for line in script.splitlines() if line and not line.startswith("#")]
    train_lines = [line for line in lines if " train.py " in line]
    launch = "torchrun --standalone --nproc_per_node=8 train.py"
    # 4 experts (200 steps), the mixed run (400) and MT-OPD (200) on 8 GPUs with the paper presets; no SFT stage:
    # the paper's SFT checkpoint is the base
    assert sum(line.startswith(launch + " --preset paper ") for line in train_lines) == 4
    assert sum(line.startswith(launch + " --preset paper-mixed ") for line in train_lines) == 1
    assert sum(line.startswith(launch + " --preset paper-opd ") for line in train_lines) == 1
    assert not any(" --steps " in line for line in train_lines)   # the presets' own step counts
    import train
    assert [train.PRESETS[p].steps for p in ("paper", "paper-mixed", "paper-opd")] == [200, 400, 200]
    assert "sft.py" not in script
    assert all("--model /path/to/Qwen3-4B-Base-SFT" in line for line in train_lines)
    assert all("--data /path/to/Nemotron-3-Nano-RL-Training-Blend/train.jsonl" in line for line in train_lines)
    runs = out / "seed_0" / "runs"
    assert f"--teachers math={runs}/math,code={runs}/code,science={runs}/science,if={runs}/if" in script
    import merge
    assert sorted(m for m in merge.METHODS if f"merge.py --method {m} " in script) == sorted(merge.PAPER_TABLE.values())
    assert all(f"--base /path/to/Qwen3-4B-Base-SFT" in line for line in lines if " merge.py " in line)
    assert "--max-new-tokens 8192" in script and "aime24=/path/to/benchmarks/aime24.jsonl" in script
    assert lines[-1].startswith("python analyze.py report")
    # the paper's other three: Figure 2's evaluation during training, Table 6's 6 pair merges, Table 7's verify
    assert sum("--eval-every 20 --eval-domains all" in line for line in train_lines) == 5
    assert sum(" merge.py --method ties " in line and "/pairs/" in line for line in lines) == 6
    assert sum(line.startswith("python analyze.py eval --models ") and "+" in line.split()[4] for line in lines) == 6
    assert sum(line.startswith("python analyze.py verify ") for line in lines) == 1


def test_failed_stage_is_named_with_its_log(tmp_path):
    r = subprocess.run([sys.executable, "experiment.py", "--out", str(tmp_path), *SMALL, "--model",
                        str(tmp_path / "no-such-model")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "stage 'train/math' failed" in r.stderr and str(tmp_path / "logs" / "train-math.log") in r.stderr
    assert "no-such-model" in r.stderr   # the tail of the log says why


def numbers(row: str) -> list[float]:
    return [float(c) for c in row.strip("|").split("|")[1:] if re.fullmatch(r"\s*-?[0-9.]+(e-?\d+)?\s*", c)]


def test_cut_down_pipeline_end_to_end_then_resumes(tmp_path):
    cmd = [sys.executable, "experiment.py", "--out", str(tmp_path), *SMALL]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs, analyses, report = tmp_path / "seed_0" / "runs", tmp_path / "seed_0" / "report", tmp_path / "report"
    # the base every merge is taken against (sft.py's) is the step-0 model of every run
    from safetensors.torch import load_file
    base = load_file(tmp_path / "base" / "model.safetensors")
    for name in ("math", "code", "mixed", "opd"):
        step0 = load_file(runs / name / "checkpoints" / "step_000000" / "model.safetensors")
        assert base.keys() == step0.keys() and all(base[k].equal(step0[k]) for k in base)
    import json
    for name in ("math", "code", "mixed", "opd"):
        info = json.loads((runs / name / "run.json").read_text())
        assert info["steps_done"] == 2 and (runs / name / "model.safetensors").exists()
    assert json.loads((runs / "opd" / "run.json").read_text())["config"]["teachers"]
    for m in ("ties", "dare"):
        rep = json.loads((runs / f"merge-{m}" / "merge_report.json").read_text())
        assert rep["method"] == m and rep["wall_s"] > 0
    for name in ("eval.json", "weights.json", "kl.json", "consistency.json"):
        assert (analyses / name).exists(), name
    assert (report / "cost.json").exists()

    md = (report / "report.md").read_text()
    assert "Not available" not in md and "Not run" not in md
    for title in ("## 1. Runs", "## 2. Training curves", "## 3. Main table", "## 4. Combining the experts",
                  "## 5. Cost", "## 6. Weight updates", "## 7. Cross-domain KL", "## 8. Consistency",
                  "## 9. Accuracy of every domain during training", "## 10. Pairwise merges", "## 11. Self-verification"):
        assert title in md
    curves, pairs, verify = md[md.index("## 9."):md.index("## 10.")], md[md.index("## 10."):md.index("## 11.")], \
        md[md.index("## 11."):]
    for run in ("math", "code", "mixed"):   # each trained run's Figure 2 table, steps 0 and 2
        assert re.search(rf"\n{run} \((expert|mixed)", curves), run
    assert curves.count("\n| 0 |") == 3 and curves.count("\n| 2 |") == 3
    for a, b in (("math", "code"), ("code", "math")):   # Table 6: both ordered pairs, a difference and a KL
        assert re.search(rf"\| math\+code \| {a} \| {b} \| 2 \| .* \| [+-][0-9.]+ \[.*\] (sig|n.s.) \| [0-9.e-]+ \|", pairs), a
    for model, domain in (("base", "math"), ("base", "code"), ("math", "math"), ("code", "code"), ("mixed", "math"),
                          ("opd", "code")):   # Table 7
        assert re.search(rf"\| {model} \| {domain} \| 1 \(\d/\d\) \| [0-9.]+ \[", verify), (model, domain)
    # the main table: every model with a number per domain and the mean
    main = md[md.index("## 3."):md.index("## 4.")]
    for model in ("base", "math", "code", "mixed", "merge-ties", "merge-dare", "opd"):
        row = next(line for line in main.splitlines() if line.startswith(f"| {model} |"))
        assert len(numbers(row)) == 3, row   # math, code, mean
    # the merge comparison: both merges and MT-OPD with their means
    comparison = md[md.index("## 4."):md.index("## 5.")]
    for model in ("merge-ties", "merge-dare", "opd"):
        assert re.search(rf"\| (merge|MT-OPD) \| {model} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", comparison), model
    # the cost table: the mixed run's cost as a fraction of experts + each merge, a number
    cost = md[md.index("## 5."):md.index("## 6.")]
    for m in ("ties", "dare"):
        assert len(numbers(next(line for line in cost.splitlines() if f"experts + merge merge-{m}" in line))) == 2
    # the analyses: sparsity per model, the KL matrix, the consistency cosines, each with numbers
    weights, kl, cons = md[md.index("## 6."):md.index("## 7.")], md[md.index("## 7."):md.index("## 8.")], \
        md[md.index("## 8."):]
    for model in ("math", "code", "mixed", "opd"):
        assert re.search(rf"\| {model} \| [0-9.]+ \([0-9.]+\) \|", weights), model
    for d in ("math", "code"):
        assert re.search(rf"\| {d} data \(\d+ tokens\) \| [0-9.]+ / [0-9.]+ \|", kl), d
    cell = r"(?:[0-9.]+ \[[0-9.]+, [0-9.]+\]|n/a \[n/a, n/a\])"   # n/a: no gain over the base in 2 steps
    for model in ("mixed", "merge-ties", "merge-dare", "opd"):   # math, code, all
        assert re.search(rf"\| {model} \| {cell} \| {cell} \| {cell} \|", cons), model
    for png in re.findall(r"\]\(([\w.]+\.png)\)", md):   # every plot the report shows exists
        assert (report / png).stat().st_size > 1000, png
    assert len(re.findall(r"\]\(([\w.]+\.png)\)", md)) >= 9

    # a second run finds everything done and runs nothing
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "(0 stages run, 15 skipped)" in r.stdout, r.stdout[-2000:]


def test_stages_run_with_the_interpreter_experiment_py_was_started_with(tmp_path):
    """`venv/bin/python experiment.py` without an activated venv: the `python` first on PATH here cannot import
    tyro, so a stage started with it would fail at once. The first stage (train/math) must get past its imports
    and stop at the model, which does not exist."""
    venv_bin, path_bin = tmp_path / "venv" / "bin", tmp_path / "path"
    venv_bin.mkdir(parents=True)
    path_bin.mkdir()
    (venv_bin / "python").symlink_to(sys.executable)
    fake = path_bin / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'tyro'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{path_bin}:/usr/bin:/bin"}
    r = subprocess.run([str(venv_bin / "python"), "experiment.py", "--out", str(tmp_path / "out"), *SMALL,
                        "--steps", "1", "--parallel", "1", "--model", str(tmp_path / "no-such-model")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "stage 'train/math' failed" in r.stderr and "no-such-model" in r.stderr, r.stderr[-2000:]
    assert "No module named" not in r.stderr, r.stderr[-2000:]
    assert "python train.py" in r.stdout + r.stderr   # the commands as printed still say python


def test_interpreter_argv():
    assert experiment.interpreter_argv(["python", "sft.py"]) == [sys.executable, "sft.py"]
    assert experiment.interpreter_argv(["torchrun", "--standalone", "train.py"]) == \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "train.py"]
