"""The paper's experiment in one command: one GRPO expert per domain, the mixed multi-task model, merges of
the experts with every merge.py method, MT-OPD from the experts, then the evaluation, the analyses and
report.md (M2RL, arXiv 2602.12566: "To Mix or To Merge").

    python experiment.py                       # tiny CPU default, 8-15 minutes on 2 cores (8.3 measured
                                               # on idle cores): out/experiment/report/report.md, plots
    python experiment.py --steps 20 --domains math,code --methods ties,dare    # a smaller run
    python experiment.py --train-args="--mix proportional"    # flags passed on to train.py: note the "="
    python experiment.py --preset paper        # writes out/paper/commands.sh for one 8-GPU node, runs nothing
    python experiment.py --preset paper --model /ckpt/qwen3-4b-sft --data /data/blend/train.jsonl

Every stage is one command of train.py, merge.py or analyze.py, printed before it runs and logged to
<out>/logs/<stage>.log (`--preset paper` writes the same commands to <out>/commands.sh instead):
  base               train.py --steps 0: the common starting model, saved as a folder (merge.py's --base)
  train/<domain>     train.py --domains <domain>: one GRPO expert per domain, in <out>/runs/<domain>
  train/mixed        train.py --domains <all>: the mixed multi-task model, in <out>/runs/mixed
  merge/<method>     merge.py --method <method> over the experts against the base, in <out>/runs/merge-<method>
  train/opd          train.py --teachers <domain>=<expert>,...: MT-OPD, the experts distilled into one student
  eval, weights, kl, consistency, report: analyze.py subcommands writing to <out>/report

What the comparison matches: every GRPO run, expert or mixed, takes the same number of steps with the same
prompts per step and samples per prompt, as the paper's runs share one recipe. The mixed run therefore costs
about 1/N of the N experts and sees each domain's prompts 1/N as often; the cost table in report.md gives
the measured device-hours of mixed vs experts + merge (the paper: 33.2% of the GPU hours). MT-OPD takes the
same number of steps and its cost adds to the experts' (they are its teachers).

A re-run skips every stage whose outputs exist, were made by the same command, and are newer than the
stage's inputs; a stage whose command changed is redone from scratch, and so is everything downstream of
it. A training run that was killed resumes from its last checkpoint (train.py --resume).

Tiny-preset choices (the CPU default), each a flag in --train-args / --opd-args:
- `--mix uniform`: the embedded pools differ in size only by construction (difficulty-0 math has 90 train
  problems, the other domains 300), so the proportional pooled mix would give math 9% of the mixed batches.
- `--filter-zero-var`: the tiny model almost never solves code, science or IF, so nearly every group has
  equal rewards and zero advantage; dropping those groups skips forward/backward passes that add nothing
  to the gradient (Adam's update direction barely changes) and makes the CPU run several times faster.
- MT-OPD follows the paper's recipe next to its GRPO one: 4 samples per prompt, half the learning rate,
  symmetric clip 0.2 (paper: 256 x 4, lr 1e-6, clip 0.2/0.2 vs GRPO 128 x 16, lr 2e-6, clip 0.2/0.28), but
  with as many prompts per step as GRPO (paper: twice as many): each MT-OPD sample also costs a forward pass
  of every teacher, and this keeps the CPU run within budget.
- Two training runs go side by side, each one process with one thread: on 2 loaded cores one thread per
  process was measured 3-5x faster per step than one process with two threads, and torchrun with 2
  processes was no faster than one process while starting slower. Each run's device-hours are its own
  wall time x its processes, so runs that share the machine are charged alike.
The tiny model learns difficulty-0 math within a few hundred steps and nothing else: the other domains'
rows show the pipeline, not a result.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

import data
import merge
import train
from analyze import Names


# ----------------------------------------------------------------------------- config

@dataclass
class Config:
    """Experts, the mixed model, merges and MT-OPD, then report.md: the paper's experiment in one command."""

    # What to run
    preset: Literal["tiny", "paper"] = "tiny"
    """tiny: run everything now on this machine (CPU). paper: write the commands for one 8-GPU node to
    <out>/commands.sh (Qwen3-4B-Base SFT checkpoint, Nemotron RL blend) and run nothing. Flags override it."""
    out: str = "out/experiment"
    """Everything goes here: runs/ (training runs and merges), report/ (report.md, plots), logs/."""
    domains: train.Domains = data.DOMAINS
    """Domains, comma separated: one expert each, all of them in the mixed and the MT-OPD run."""
    methods: Names = field(default_factory=lambda: list(merge.METHODS))
    """Merge methods of merge.py, comma separated; empty: no merges."""
    steps: int | None = None
    """Optimisation steps of every training run (experts, mixed, MT-OPD); None: train.py's preset default."""
    seed: int = 0
    """Seed of every run: each training run starts from the same model and the merges are reproducible."""

    # Model, data and scale
    model: str = "tiny"
    """Starting model of every run (train.py --model): the paper's SFT checkpoint at full scale."""
    data: str = "embedded"
    """Training rows (train.py --data): 'embedded' or the Nemotron RL blend file."""
    nproc: int = 1
    """Processes per training run; more than 1 launches torchrun (one per GPU)."""
    parallel: int = 2
    """Training runs at once, each given cpu_count / parallel threads on CPU; use 1 on GPUs."""
    train_args: str = "--mix uniform --filter-zero-var"
    """More train.py flags for the base, expert and mixed runs, given as --train-args="..." (see the module
    docstring for why these)."""
    opd_args: str = "--mix uniform --prompts-per-step 32 --group-size 4 --lr 1e-3 --clip-high 0.2"
    """More train.py flags for the MT-OPD run, given as --opd-args="...": the paper's MT-OPD recipe scaled like
    the tiny GRPO one."""

    # Evaluation and analyses (analyze.py)
    benchmarks: Names = field(default_factory=lambda: ["embedded"])
    """analyze.py eval --benchmarks: 'embedded' (each domain's eval split) and/or name=file in the row schema."""
    eval_problems: int | None = 32
    """Problems per benchmark in eval (the first n); None: all."""
    eval_k: int = 16
    """Samples per problem in eval (avg@k, pass@k); 16 keeps the tiny math scores' noise near 0.01."""
    kl_problems: int = 16
    """Prompts per domain whose expert trajectories the KL matrix is measured on."""
    max_new_tokens: int | None = None
    """Longest sampled completion in eval and kl; None: the GRPO runs' own (train.py's preset and --train-args),
    since a model is only meaningful within the budget it was trained for."""

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in merge.METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown merge method(s) {unknown}; valid: {', '.join(merge.METHODS)}")
        unknown = [d for d in self.domains if d not in data.DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"--domains: unknown domain(s) {unknown or '(none given)'}; valid: {', '.join(data.DOMAINS)}")
        assert self.nproc >= 1 and self.parallel >= 1 and self.eval_k >= 1 and self.kl_problems >= 1


PRESETS = {
    "tiny": Config(),
    # One 8-GPU node. The two paths are placeholders for files you have: the paper's Qwen3-4B-Base SFT
    # checkpoint and the Nemotron-3-Nano RL training blend (data/README.md). Benchmarks: the paper's eval sets
    # as row-schema or original files (data/loaders.py converts AIME, GPQA, IFEval/IFBench, LiveCodeBench,
    # MMLU-Redux).
    "paper": Config(
        preset="paper", out="out/paper", model="/path/to/Qwen3-4B-Base-SFT",
        data="/path/to/Nemotron-3-Nano-RL-Training-Blend/train.jsonl", nproc=8, parallel=1,
        train_args="--preset paper", opd_args="--preset paper-opd", eval_k=4,
        benchmarks=[f"{name}=/path/to/benchmarks/{file}" for name, file in (
            ("aime24", "aime24.jsonl"), ("aime25", "aime25.jsonl"), ("livecodebench", "livecodebench_v6.jsonl"),
            ("gpqa_diamond", "gpqa_diamond.csv"), ("mmlu_redux", "mmlu_redux.jsonl"), ("ifeval", "ifeval.jsonl"),
            ("ifbench", "ifbench.jsonl"))],
        eval_problems=None),
}


def cli(argv: list[str]) -> Config:
    """`--preset NAME` picks the defaults; the remaining flags override them (train.py's parser)."""
    return train.cli(argv, Config, PRESETS)


# ----------------------------------------------------------------------------- the plan: stages as commands

@dataclass
class Stage:
    """One command of the pipeline. It is done when every output exists, its stamp file holds the same
    command, and no input is newer than the oldest output."""

    name: str
    cmd: list[str]
    outputs: list[str]
    """Files the command writes last (run.json, merge_report.json, eval.json, ...): their presence means done."""
    inputs: list[str] = field(default_factory=list)
    """Files of earlier stages this one reads."""
    clean: list[str] = field(default_factory=list)
    """Folders removed before the stage is redone because its command changed or an input is newer."""
    train_steps: int | None = None
    """For training runs: the step count, shown as a progress bar read from metrics.jsonl."""
    metrics: str | None = None


def launcher(cfg: Config) -> list[str]:
    return ["python"] if cfg.nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={cfg.nproc}"]


def train_steps(args: list[str]) -> int:
    """The step count a train.py command line resolves to (its preset's default unless --steps is given).
    Parsing it here also rejects a bad flag before any stage runs."""
    return train.cli(args).steps


def plan(cfg: Config) -> list[Stage]:
    """Every stage of the experiment in run order (a stage only reads outputs of stages before it)."""
    out = Path(cfg.out)
    runs, report = out / "runs", out / "report"
    steps = [] if cfg.steps is None else ["--steps", str(cfg.steps)]
    common = ["--model", cfg.model, "--data", cfg.data, "--seed", str(cfg.seed), "--out-dir", str(runs), "--resume"]
    grpo = shlex.split(cfg.train_args)
    stages = []

    # base: train.py saves the starting model exactly as every run loads it (same seed, same dtype). Its
    # step-0 checkpoint folder holds only the model files, which merge.py copies beside each merge.
    args = [*grpo, "--model", cfg.model, "--data", cfg.data, "--seed", str(cfg.seed), "--steps", "0",
            "--out-dir", str(out), "--run-name", "base", "--domains", ",".join(cfg.domains)]
    stages.append(Stage("base", ["python", "train.py", *args], [str(out / "base" / "run.json")],
                        clean=[str(out / "base")]))
    base = out / "base" / "checkpoints" / "step_000000"

    def train_stage(name: str, domains: tuple[str, ...], extra: list[str], inputs: list[str]) -> Stage:
        args = [*extra, *common, "--domains", ",".join(domains), "--run-name", name, *steps]
        return Stage(f"train/{name}", [*launcher(cfg), "train.py", *args], [str(runs / name / "run.json")],
                     inputs, clean=[str(runs / name)], train_steps=train_steps(args),
                     metrics=str(runs / name / "metrics.jsonl"))

    for d in cfg.domains:
        stages.append(train_stage(d, (d,), grpo, []))
    experts = {d: str(runs / d) for d in cfg.domains}
    expert_marks = [str(runs / d / "run.json") for d in cfg.domains]
    if len(cfg.domains) > 1:
        stages.append(train_stage("mixed", cfg.domains, grpo, []))
    for m in cfg.methods:
        dest = runs / f"merge-{m}"
        stages.append(Stage(f"merge/{m}", ["python", "merge.py", "--method", m, "--base", str(base),
                                           "--models", ",".join(experts.values()), "--seed", str(cfg.seed),
                                           "--out", str(dest)],
                            [str(dest / "merge_report.json")], [stages[0].outputs[0], *expert_marks],
                            clean=[str(dest)]))
    teachers = ",".join(f"{d}={p}" for d, p in experts.items())
    stages.append(train_stage("opd", cfg.domains, [*shlex.split(cfg.opd_args), "--teachers", teachers],
                              expert_marks))

    # analyses: every model by name; eval first (kl puts the accuracy change beside its matrix)
    trained = dict(experts)
    if len(cfg.domains) > 1:
        trained["mixed"] = str(runs / "mixed")
    trained["opd"] = str(runs / "opd")
    merged = {f"merge-{m}": str(runs / f"merge-{m}") for m in cfg.methods}
    marks = [s.outputs[0] for s in stages]
    named = lambda d: [f"{k}={v}" for k, v in d.items()]  # noqa: E731
    gen = ["--max-new-tokens", str(cfg.max_new_tokens or train.cli(grpo).max_new_tokens)]
    mixed = {"mixed": trained["mixed"]} if "mixed" in trained else {}
    evaluated = {"base": str(base), **experts, **mixed, **merged, "opd": trained["opd"]}   # the main table's rows
    n_eval = [] if cfg.eval_problems is None else ["--n-problems", str(cfg.eval_problems)]
    analyses = [
        ("eval", ["--models", *named(evaluated), "--benchmarks", *cfg.benchmarks, "--domains", *cfg.domains,
                  *n_eval, "--k", str(cfg.eval_k), "--seed", str(cfg.seed), *gen], marks, "eval.json"),
        # the paper's weight geometry is about the trained models; merges' statistics are in merge_report.json
        ("weights", ["--base", str(base), "--models", *named(trained)], marks, "weights.json"),
        ("kl", ["--experts", *named(experts), *(["--multitask", *named(mixed)] if mixed else []),
                "--merged", *named({"opd": trained["opd"], **merged}), "--n-problems", str(cfg.kl_problems),
                "--seed", str(cfg.seed), *gen], marks + [str(report / "eval.json")], "kl.json"),
        ("consistency", ["--base", "base", "--experts", *cfg.domains, "--models",
                         *[n for n in evaluated if n not in ("base", *cfg.domains)]],
         [str(report / "eval.json")], "consistency.json"),
    ]
    for name, args, inputs, output in analyses:
        stages.append(Stage(name, ["python", "analyze.py", name, *args, "--out", str(report)],
                            [str(report / output)], inputs))
    stages.append(Stage("report", ["python", "analyze.py", "report", "--runs", str(runs), "--base", str(base),
                                   "--out", str(report), "--no-compute"],
                        [str(report / "report.md")], marks + [str(report / f"{n}.json") for n, *_ in analyses]))
    return stages


# ----------------------------------------------------------------------------- --preset paper: the commands

def commands_sh(cfg: Config, stages: list[Stage]) -> str:
    """A bash script running the stages in order, for a machine with the GPUs and files this one lacks."""
    lines = ["#!/usr/bin/env bash",
             f"# The M2RL experiment at the paper's scale, written by: python experiment.py {' '.join(sys.argv[1:])}",
             f"# Starting model: {cfg.model}",
             f"# Training data:  {cfg.data}",
             "# Replace the /path/to placeholders, then run this file from the repository root on one node",
             f"# with {cfg.nproc} GPUs. report.md lands in {Path(cfg.out) / 'report'}.",
             "set -euo pipefail", ""]
    for s in stages:
        lines += [f"# {s.name}", shlex.join(s.cmd), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running the stages

def stamp_path(cfg: Config, stage: Stage) -> Path:
    return Path(cfg.out) / "logs" / (stage.name.replace("/", "-") + ".cmd")


def log_path(cfg: Config, stage: Stage) -> Path:
    return Path(cfg.out) / "logs" / (stage.name.replace("/", "-") + ".log")


def is_done(cfg: Config, stage: Stage) -> bool:
    """Outputs present, made by this very command, and no older than any input."""
    outs = [Path(p) for p in stage.outputs]
    stamp = stamp_path(cfg, stage)
    if not all(p.exists() for p in outs) or not stamp.exists() or stamp.read_text() != shlex.join(stage.cmd):
        return False
    newest_input = max((Path(p).stat().st_mtime for p in stage.inputs if Path(p).exists()), default=0.0)
    return min(p.stat().st_mtime for p in outs) >= newest_input


def to_run(cfg: Config, stages: list[Stage]) -> list[Stage]:
    """The stages to (re)do: those not done, and every stage reading an output of one of them."""
    producer = {o: s.name for s in stages for o in s.outputs}
    redo = []
    for s in stages:   # in run order, so a stage's producers are decided before it
        if not is_done(cfg, s) or any(producer.get(i) in {r.name for r in redo} for i in s.inputs):
            redo.append(s)
    return redo


def fresh_start(cfg: Config, stage: Stage) -> None:
    """Before a stage runs: keep what a killed training run left under the same command (train.py --resume
    continues it); otherwise remove the stage's old folders. Then record the command."""
    stamp = stamp_path(cfg, stage)
    killed = (stage.train_steps is not None and stamp.exists() and stamp.read_text() == shlex.join(stage.cmd)
              and not all(Path(o).exists() for o in stage.outputs))
    if not killed:
        for folder in stage.clean:
            shutil.rmtree(folder, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(shlex.join(stage.cmd))


def tail(path: Path, n: int = 30) -> str:
    """The last n non-empty lines of a log (progress bars' carriage returns read as line ends)."""
    lines = [x for x in path.read_text(errors="replace").replace("\r", "\n").splitlines() if x.strip()] \
        if path.exists() else []
    return "\n".join(lines[-n:]) or "(empty log)"


def steps_logged(metrics: str | None) -> tuple[int, str]:
    """The last step in a run's metrics.jsonl and its reward: the live progress of a training stage."""
    if not metrics or not os.path.exists(metrics):
        return 0, ""
    with open(metrics) as f:
        lines = [line for line in f if line.strip()]
    for line in reversed(lines):
        try:
            last = json.loads(line)
        except json.JSONDecodeError:   # the line being written
            continue
        return int(last.get("step", 0)), f"reward {last.get('reward', 0):.3f}"
    return 0, ""


class StageFailed(SystemExit):
    """A stage exited non-zero or did not write its outputs; the message names it and shows its log."""


def check_finished(cfg: Config, stage: Stage, rc: int, seconds: float) -> None:
    log = log_path(cfg, stage)
    if rc != 0:
        raise StageFailed(f"\nstage '{stage.name}' failed (exit code {rc}) after {seconds:.0f} s.\n"
                          f"command: {shlex.join(stage.cmd)}\nlog: {log}\nlast lines of the log:\n{tail(log)}")
    missing = [o for o in stage.outputs if not Path(o).exists()]
    if missing:
        raise StageFailed(f"\nstage '{stage.name}' exited 0 but did not write {', '.join(missing)}; log: {log}")
    if stage.name.startswith("merge/"):
        record_merge_time(stage.outputs[0], seconds)


def run_alone(cfg: Config, stage: Stage) -> int:
    """Run one stage with its output on the console and in its log; returns the exit code."""
    with open(log_path(cfg, stage), "wb") as log:
        proc = subprocess.Popen(stage.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
            return proc.wait()
        except BaseException:
            stop(proc)
            raise


def stop(proc: subprocess.Popen) -> None:
    """End a stage's process group (torchrun's workers with it): it was started in its own session."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_stages(cfg: Config, stages: list[Stage]) -> dict[str, float]:
    """Run the stages that are not done, in order. Training runs go up to cfg.parallel at a time, quiet, with
    a step bar each; any other stage runs alone with its output on the console. Returns {stage: seconds}."""
    todo = to_run(cfg, stages)
    for s in stages:
        if s not in todo:
            print(f"[skip] {s.name}: done ({', '.join(s.outputs)})")
    producer = {o: s.name for s in stages for o in s.outputs}
    finished = {s.name for s in stages if s not in todo}
    (Path(cfg.out) / "logs").mkdir(parents=True, exist_ok=True)
    # on CPU each of the side-by-side runs gets its share of the cores (see the module docstring)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // cfg.parallel))}
    timings: dict[str, float] = {}
    running: dict[str, tuple] = {}   # name -> (stage, process, start time, log file, progress bar)
    n_done = len(finished)

    def done(name: str, t0: float) -> None:
        nonlocal n_done
        finished.add(name)
        timings[name] = time.time() - t0
        n_done += 1
        tqdm.write(f"[{n_done}/{len(stages)} done] {name} in {timings[name]:.1f} s")

    try:
        while todo or running:
            for s in list(todo):
                if not {producer[i] for i in s.inputs if i in producer} <= finished:
                    continue   # waits for the stages it reads from
                training = s.train_steps is not None
                if running and not (training and len(running) < cfg.parallel):
                    continue   # only training runs share the machine, and only with each other
                todo.remove(s)
                fresh_start(cfg, s)
                tqdm.write(f"[run] {s.name}: {shlex.join(s.cmd)}")
                t0 = time.time()
                if training:
                    log = open(log_path(cfg, s), "wb")
                    proc = subprocess.Popen(s.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env if cfg.parallel > 1 else None)
                    bar = tqdm(total=s.train_steps, desc=s.name, unit="step", leave=False, dynamic_ncols=True,
                               position=1 + len(running))
                    running[s.name] = (s, proc, t0, log, bar)
                    continue
                check_finished(cfg, s, run_alone(cfg, s), time.time() - t0)
                done(s.name, t0)
            if todo and not running and not any({producer[i] for i in s.inputs if i in producer} <= finished
                                                for s in todo):
                raise StageFailed(f"stages {[s.name for s in todo]} wait for inputs no stage makes")
            for name, (s, proc, t0, log, bar) in list(running.items()):
                bar.n, postfix = steps_logged(s.metrics)
                bar.set_postfix_str(postfix, refresh=False)
                bar.refresh()
                if proc.poll() is None:
                    continue
                log.close()
                bar.close()
                del running[name]
                check_finished(cfg, s, proc.returncode, time.time() - t0)
                done(name, t0)
            if running:
                time.sleep(0.5)
    finally:
        for s, proc, _, log, bar in running.values():   # a failed or interrupted experiment ends its runs
            stop(proc)
            log.close()
            bar.close()
    return timings


def record_merge_time(report_path: str, seconds: float) -> None:
    """merge.py's merge_report.json has no timing; the cost table needs one (analyze.py reads "wall_s"), so the
    merge's wall time, interpreter start included, is added here."""
    with open(report_path) as f:
        rep = json.load(f)
    if "wall_s" in rep:
        return
    rep.update(wall_s=seconds, device="cpu", wall_s_measured_by="experiment.py (merge.py's process wall time)")
    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rep, f, indent=1)
    os.replace(tmp, report_path)


# ----------------------------------------------------------------------------- main

def main(cfg: Config) -> None:
    print({"config": asdict(cfg)})
    stages = plan(cfg)
    out = Path(cfg.out)
    if cfg.preset == "paper":
        out.mkdir(parents=True, exist_ok=True)
        script = commands_sh(cfg, stages)
        (out / "commands.sh.tmp").write_text(script)
        os.replace(out / "commands.sh.tmp", out / "commands.sh")
        os.chmod(out / "commands.sh", 0o755)
        print(script)
        print(f"wrote {out / 'commands.sh'} (nothing was run)")
        return
    t0 = time.time()
    timings = run_stages(cfg, stages)
    report = out / "report" / "report.md"
    print(f"\nexperiment done in {time.time() - t0:.0f} s ({len(timings)} stages run, "
          f"{len(stages) - len(timings)} skipped); report: {report}")


if __name__ == "__main__":
    main(cli(sys.argv[1:]))
