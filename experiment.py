"""The paper's experiment in one command: the SFT base, one GRPO expert per domain, the mixed multi-task
model, merges of the experts (the paper's merge table), MT-OPD from the experts, then the evaluation, the
analyses and report.md (M2RL, arXiv 2602.12566: "To Mix or To Merge").

    python experiment.py                       # the small world on CPU: out/experiment/report/report.md
    python experiment.py --seeds 3             # three seeds of every RL run and merge: spreads in the report
    python experiment.py --steps 20 --domains math,code --methods ties,dare    # a smaller run
    python experiment.py --train-args="--lr 1e-3"   # flags passed on to train.py: note the "="
    python experiment.py --preset paper        # writes out/paper/commands.sh for one 8-GPU node, runs nothing
    python experiment.py --preset paper --model /ckpt/qwen3-4b-sft --data /data/blend/train.jsonl

Every stage is one command of sft.py, train.py, merge.py or analyze.py, printed before it runs and logged to
<out>/logs/<stage>.log (`--preset paper` writes the same commands to <out>/commands.sh instead):
  sft                     sft.py: the base every run starts from and every merge is taken against, in <out>/base
                          (the tiny model only; at the paper's scale --model is the SFT checkpoint)
  s<seed>/train/<domain>  train.py --domains <domain>: one GRPO expert per domain, in <out>/seed_<seed>/runs/<domain>
  s<seed>/train/mixed     train.py --domains <all>: the mixed multi-task model, in .../runs/mixed
  s<seed>/merge/<method>  merge.py --method <method> over the experts against the base, in .../runs/merge-<method>
  s<seed>/train/opd       train.py --teachers <domain>=<expert>,...: MT-OPD, the experts distilled into one student
  s<seed>/eval, weights, kl, consistency: analyze.py subcommands writing to <out>/seed_<seed>/report
  s<seed>/pair/<a>-<b>    merge.py --method <pair_method> over experts a and b (Table 6), in <out>/seed_<seed>/pairs
  s<seed>/pair-eval/<a>-<b>  analyze.py eval of that pair on a's and b's domains, in .../report/pairs/<a>-<b>
  s<seed>/verify          analyze.py verify of the base, the experts, the mixed model and MT-OPD (Table 7)
  report                  analyze.py report over every seed: <out>/report/report.md

What the comparison matches, as in the paper: each expert trains for `steps` and the mixed model for
`mixed_steps` (paper: 200 and 400) with the same prompts per step and samples per prompt, so the mixed run
costs mixed_steps / (N * steps) of the N experts (paper: 33.2% of the GPU hours for 400 vs 4 x 200) and sees
each domain's prompts mixed_steps / (N * steps) as often. MT-OPD takes `steps` and its cost adds to the
experts' (they are its teachers). The report's cost table gives the measured device-hours.

Seeds: seed s trains every RL run and merge again with --seed s (data order, sampling, DARE masks), all
from the same SFT base (the paper has one SFT checkpoint); the report puts each seed's value and the spread
next to every number.

A re-run skips every stage whose outputs exist, were made by the same command, and are newer than the
stage's inputs; a stage whose command changed is redone from scratch, and so is everything downstream of
it. A training run that was killed resumes from its last checkpoint (train.py --resume).

Small-world choices (the CPU default), each a flag:
- The base is data/tiny_sft, which sft.py copies when its config is the one that built it (`--sft-args
  "--no-reuse"` trains it again: 45 minutes on one core).
- Experts and MT-OPD train 25 steps, the mixed model 50 (the paper's 200/400 ratio): by step 25 each expert's
  training reward has left the base's 0.3-0.45 for about 0.8. The eval is avg@2 on 100 held-out problems per
  domain and the KL matrix uses 8 prompts per domain, so that the whole run stays within about 20 minutes on
  2 cores.
- Figure 2: the experts and the mixed run evaluate 8 held-out problems per domain (avg@2) at steps 0, 5, ...
  and the end; Table 6 evaluates each TIES pair on the first 50 problems of its members' domains (avg@2);
  Table 7 judges 8 problems per domain x 2 responses per model.
- Two training runs go side by side, each one process with one thread: on 2 loaded cores one thread per
  process was measured 3-5x faster per step than one process with two threads (a process whose two threads
  share a core with another process spends its time waiting for the slower thread). Each run's
  device-hours are its own wall time x its processes, so runs that share the machine are charged alike.
- MT-OPD follows the paper's recipe next to its GRPO one: twice the prompts per step with 4 samples each,
  half the learning rate, symmetric clip 0.2 (paper: 256 x 4, lr 1e-6, clip 0.2/0.2 vs GRPO 128 x 16, lr 2e-6,
  clip 0.2/0.28; here 32 x 4, lr 7.5e-5 vs 16 x 8, lr 1.5e-4).
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
from cli import Domains, Names, UserError, parse, run


# ----------------------------------------------------------------------------- config

@dataclass
class Config:
    """SFT base, experts, the mixed model, merges and MT-OPD, then report.md: the paper's experiment in one command."""

    # What to run
    preset: Literal["tiny", "paper"] = "tiny"
    """tiny: run everything now on this machine (CPU). paper: write the commands for one 8-GPU node to
    <out>/commands.sh (Qwen3-4B-Base SFT checkpoint, Nemotron RL blend) and run nothing. Flags override it."""
    out: str = "out/experiment"
    """Everything goes here: base/, seed_<s>/runs (training runs and merges), seed_<s>/report, report/, logs/."""
    domains: Domains = data.DOMAINS
    """Domains, comma separated: one expert each, all of them in the mixed and the MT-OPD run."""
    methods: Names = field(default_factory=lambda: ["average", "task_arithmetic", "dare", "ties", "dare_ties_trim",
                                                    "sce"])
    """Merge methods of merge.py, comma separated (default: the paper's merge table, merge.PAPER_TABLE); empty:
    no merges."""
    steps: int | None = 25
    """Steps of each expert and of MT-OPD (paper: 200); None: train.py's preset default."""
    mixed_steps: int | None = 50
    """Steps of the mixed run (paper: 400, twice an expert's); None: train.py's preset default."""
    seeds: int = 1
    """How many seeds (seed, seed+1, ...) of every RL run and merge; the report shows the spread between them."""
    seed: int = 0
    """The first seed."""

    # Model, data and scale
    model: str = "tiny"
    """Starting model of every run (train.py --model): 'tiny' runs sft.py first and uses its base; at full
    scale the paper's SFT checkpoint."""
    data: str = "embedded"
    """Training rows (train.py --data): 'embedded' or the Nemotron RL blend."""
    kinds: str = ""
    """Shares of the small world's item kinds in every RL pool (train.py --kinds), e.g.
    shared=0.2,specific=0.2,conflict=0.6; empty: train.py's default. The eval always scores the same kinds at
    the same shares, so runs with other knobs are comparable (data/embedded.py)."""
    nproc: int = 1
    """Processes per training run; more than 1 launches torchrun (one per GPU)."""
    parallel: int = 2
    """Training runs at once, each given cpu_count / parallel threads on CPU; use 1 on GPUs."""
    sft_args: str = ""
    """More sft.py flags, given as --sft-args="..." (e.g. "--no-reuse" to train the base again)."""
    train_args: str = ""
    """More train.py flags for the expert and mixed runs, given as --train-args="..."."""
    opd_args: str = "--prompts-per-step 32 --group-size 4 --lr 7.5e-5 --clip-high 0.2"
    """More train.py flags for the MT-OPD run, given as --opd-args="...": the paper's MT-OPD recipe scaled like
    the tiny GRPO one (see the module docstring)."""

    # Evaluation and analyses (analyze.py)
    benchmarks: Names = field(default_factory=lambda: ["embedded"])
    """analyze.py eval --benchmarks: 'embedded' (each domain's eval split), 'humaneval', and/or name=file."""
    eval_problems: int | None = 100
    """Problems per benchmark in eval (the first n); None: all."""
    eval_k: int = 2
    """Samples per problem in eval (avg@k, pass@k). With 4, the eval took 7.5 of the CPU run's 22.5 minutes."""
    kl_problems: int = 8
    """Prompts per domain on which the KL matrix is measured."""
    max_new_tokens: int | None = None
    """Longest sampled completion in eval and kl; None: the GRPO runs' own (train.py's preset and --train-args),
    since a model is only meaningful within the budget it was trained for."""

    # The paper's other experiments: Figure 2, Table 6, Table 7
    train_eval_every: int = 5
    """Figure 2: the experts and the mixed run evaluate held-out problems of every domain every N steps
    (train.py --eval-every, eval.jsonl, its time kept out of the cost); 0: off."""
    train_eval_problems: int = 8
    """Held-out problems per domain of that evaluation (fewer than eval's, to keep the runs short), k = eval_k."""
    train_eval_data: str = ""
    """Held-out rows for it and for verify when --data is not embedded (train.py --eval-data, a row-schema file)."""
    pair_method: str = "ties"
    """Table 6: every pair of experts merged with this merge.py method (the paper does not name its operator);
    empty: no pairwise merges."""
    pair_problems: int | None = 50
    """Problems per benchmark on which the pair merges are evaluated (a prefix of eval's, so paired with its
    experts' results); None: all."""
    verify_problems: int = 8
    """Table 7: problems per domain on which each model's own responses are judged (analyze.py verify), k =
    eval_k; 0: no verify stage."""

    def __post_init__(self):
        unknown = [d for d in self.domains if d not in data.DOMAINS]
        if unknown or not self.domains:
            raise UserError(f"--domains: unknown domain(s) {unknown or '(none given)'}; valid: {', '.join(data.DOMAINS)}")
        assert self.nproc >= 1 and self.parallel >= 1 and self.eval_k >= 1 and self.kl_problems >= 1 and self.seeds >= 1


PRESETS = {
    "tiny": Config(),
    # One 8-GPU node. The two paths are placeholders for files you have: the paper's Qwen3-4B-Base SFT
    # checkpoint and the Nemotron-3-Nano RL training blend (data/README.md). Benchmarks: the paper's eval sets
    # as row-schema or original files (data/loaders.py converts AIME, GPQA, IFEval/IFBench, LiveCodeBench,
    # MMLU-Redux). Steps come from train.py's paper presets (200 per expert and MT-OPD, 400 mixed).
    "paper": Config(
        preset="paper", out="out/paper", model="/path/to/Qwen3-4B-Base-SFT",
        data="/path/to/Nemotron-3-Nano-RL-Training-Blend/train.jsonl", nproc=8, parallel=1, steps=None,
        mixed_steps=None, train_args="--preset paper", opd_args="--preset paper-opd", eval_k=4,
        train_eval_every=20, train_eval_problems=64, train_eval_data="/path/to/benchmarks/heldout_all_domains.jsonl",
        pair_problems=None, verify_problems=64,
        benchmarks=[f"{name}=/path/to/benchmarks/{file}" for name, file in (
            ("aime24", "aime24.jsonl"), ("aime25", "aime25.jsonl"), ("livecodebench", "livecodebench_v6.jsonl"),
            ("gpqa_diamond", "gpqa_diamond.csv"), ("mmlu_redux", "mmlu_redux.jsonl"), ("ifeval", "ifeval.jsonl"),
            ("ifbench", "ifbench.jsonl"))],
        eval_problems=None),
}


def cli(argv: list[str]) -> Config:
    """`--preset NAME` picks the defaults; the remaining flags override them."""
    return parse(argv, Config, PRESETS)


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
    import train
    return train.cli(args).steps


def mixed_args(args: list[str]) -> list[str]:
    """The mixed run's flags: the paper preset's mixed variant (400 steps) where the experts use `paper`."""
    return [("paper-mixed" if a == "paper" and i and args[i - 1] == "--preset" else a) for i, a in enumerate(args)]


def plan(cfg: Config) -> list[Stage]:
    """Every stage of the experiment in run order (a stage only reads outputs of stages before it)."""
    import merge   # here rather than at the top, so that --help answers before torch loads
    unknown = [m for m in cfg.methods if m not in merge.METHODS]
    if unknown:
        raise UserError(f"--methods: unknown merge method(s) {', '.join(unknown)}; valid: {', '.join(merge.METHODS)}")
    out = Path(cfg.out)
    grpo = shlex.split(cfg.train_args)
    stages = []
    if cfg.model == "tiny":   # sft.py writes the base (a copy of data/tiny_sft when its config is the same)
        base = str(out / "base")
        stages.append(Stage("sft", ["python", "sft.py", "--out", base, *shlex.split(cfg.sft_args)],
                            [str(out / "base" / "sft_report.json")], clean=[base]))
        base_marks = stages[0].outputs
    else:
        base, base_marks = cfg.model, []

    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        tag = f"s{seed}/" if cfg.seeds > 1 else ""
        runs, report = out / f"seed_{seed}" / "runs", out / f"seed_{seed}" / "report"
        common = ["--model", base, "--data", cfg.data, "--seed", str(seed), "--out-dir", str(runs), "--resume",
                  *(["--kinds", cfg.kinds] if cfg.kinds else [])]

        def train_stage(name: str, domains: tuple[str, ...], extra: list[str], steps: int | None,
                        inputs: list[str]) -> Stage:
            args = [*extra, *common, "--domains", ",".join(domains), "--run-name", name,
                    *([] if steps is None else ["--steps", str(steps)])]
            return Stage(f"{tag}train/{name}", [*launcher(cfg), "train.py", *args], [str(runs / name / "run.json")],
                         inputs, clean=[str(runs / name)], train_steps=train_steps(args),
                         metrics=str(runs / name / "metrics.jsonl"))

        first = len(stages)
        # Figure 2: the experts and the mixed run evaluate every domain while they train
        curves = [] if not cfg.train_eval_every else [
            "--eval-every", str(cfg.train_eval_every), "--eval-domains", "all", "--eval-problems",
            str(cfg.train_eval_problems), "--eval-k", str(cfg.eval_k),
            *(["--eval-data", cfg.train_eval_data] if cfg.train_eval_data else [])]
        for d in cfg.domains:
            stages.append(train_stage(d, (d,), [*grpo, *curves], cfg.steps, base_marks))
        experts = {d: str(runs / d) for d in cfg.domains}
        expert_marks = [str(runs / d / "run.json") for d in cfg.domains]
        if len(cfg.domains) > 1:
            stages.append(train_stage("mixed", cfg.domains, [*mixed_args(grpo), *curves], cfg.mixed_steps, base_marks))
        for m in cfg.methods:
            dest = runs / f"merge-{m}"
            stages.append(Stage(f"{tag}merge/{m}", ["python", "merge.py", "--method", m, "--base", base,
                                                     "--models", ",".join(experts.values()), "--seed", str(seed),
                                                     "--out", str(dest)],
                                [str(dest / "merge_report.json")], [*base_marks, *expert_marks], clean=[str(dest)]))
        teachers = ",".join(f"{d}={p}" for d, p in experts.items())
        stages.append(train_stage("opd", cfg.domains, [*shlex.split(cfg.opd_args), "--teachers", teachers],
                                  cfg.steps, [*base_marks, *expert_marks]))

        # analyses: every model by name; eval first (kl puts the accuracy change beside its matrix)
        trained = dict(experts)
        mixed = {"mixed": str(runs / "mixed")} if len(cfg.domains) > 1 else {}
        trained |= mixed
        trained["opd"] = str(runs / "opd")
        merged = {f"merge-{m}": str(runs / f"merge-{m}") for m in cfg.methods}
        marks = base_marks + [s.outputs[0] for s in stages[first:]]
        named = lambda d: [f"{k}={v}" for k, v in d.items()]  # noqa: E731
        import train
        gen = ["--max-new-tokens", str(cfg.max_new_tokens or train.cli(grpo).max_new_tokens)]
        evaluated = {"base": base, **experts, **mixed, **merged, "opd": trained["opd"]}   # the main table's rows
        n_eval = [] if cfg.eval_problems is None else ["--n-problems", str(cfg.eval_problems)]
        analyses = [
            # every seed is scored on the same problems (--problem-seed), so the report can pool them per problem
            ("eval", ["--models", *named(evaluated), "--benchmarks", *cfg.benchmarks, "--domains", *cfg.domains,
                      *n_eval, "--k", str(cfg.eval_k), "--seed", str(seed), "--problem-seed", "0", *gen,
                      "--grader", "paper", "--batch-size", "64"], marks, "eval.json"),
            # the paper's weight geometry is about the trained models; merges' statistics are in merge_report.json
            ("weights", ["--base", base, "--models", *named(trained)], marks, "weights.json"),
            ("kl", ["--experts", *named(experts), *(["--multitask", *named(mixed)] if mixed else []),
                    "--merged", *named({"opd": trained["opd"], **merged}), "--n-problems", str(cfg.kl_problems),
                    "--seed", str(seed), *gen], marks + [str(report / "eval.json")], "kl.json"),
            ("consistency", ["--base", "base", "--experts", *cfg.domains, "--models",
                             *[n for n in evaluated if n not in ("base", *cfg.domains)]],
             [str(report / "eval.json")], "consistency.json"),
        ]
        for name, args, inputs, output in analyses:
            stages.append(Stage(f"{tag}{name}", ["python", "analyze.py", name, *args, "--out", str(report)],
                                [str(report / output)], inputs))
        stages += paper_stages(cfg, tag, seed, base, base_marks, experts, expert_marks,
                               {"base": base, **experts, **mixed, "opd": trained["opd"]}, marks, gen)
    seed_dirs = [out / f"seed_{s}" for s in range(cfg.seed, cfg.seed + cfg.seeds)]
    analysis_marks = [o for s in stages if s.name.split("/")[-1] in ("eval", "weights", "kl", "consistency", "verify")
                      or "pair-eval/" in s.name for o in s.outputs]
    stages.append(Stage("report", ["python", "analyze.py", "report", "--runs", *[str(d / "runs") for d in seed_dirs],
                                   "--analyses", *[str(d / "report") for d in seed_dirs], "--base", base,
                                   "--out", str(out / "report"), "--no-compute"],
                        [str(out / "report" / "report.md")],
                        [o for s in stages if s.name.split("/")[-1] != "report" for o in s.outputs
                         if o.endswith(("run.json", "merge_report.json"))] + analysis_marks))
    return stages


def paper_stages(cfg: Config, tag: str, seed: int, base: str, base_marks: list[str], experts: dict[str, str],
                 expert_marks: list[str], judged: dict[str, str], marks: list[str], gen: list[str]) -> list[Stage]:
    """Table 6 and Table 7 for one seed. pair/<a>-<b>: merge.py --method pair_method over experts a and b, in
    <out>/seed_<s>/pairs (apart from runs/, so the main tables and the cost leave them out); pair-eval/<a>-<b>:
    analyze.py eval of that merge, named "a+b", on a's and b's domains, in .../report/pairs/<a>-<b>; verify:
    analyze.py verify of `judged` (base, experts, mixed, MT-OPD) into .../report."""
    import itertools
    out = Path(cfg.out)
    pairs_dir, report = out / f"seed_{seed}" / "pairs", out / f"seed_{seed}" / "report"
    n_pairs = [] if cfg.pair_problems is None else ["--n-problems", str(cfg.pair_problems)]
    stages = []
    for a, b in itertools.combinations(experts, 2) if cfg.pair_method else []:
        dest = pairs_dir / f"merge-{cfg.pair_method}-{a}-{b}"
        stages.append(Stage(f"{tag}pair/{a}-{b}", ["python", "merge.py", "--method", cfg.pair_method, "--base", base,
                                                    "--models", f"{experts[a]},{experts[b]}", "--seed", str(seed),
                                                    "--out", str(dest)],
                            [str(dest / "merge_report.json")], [*base_marks, *expert_marks], clean=[str(dest)]))
        stages.append(Stage(f"{tag}pair-eval/{a}-{b}", [
            "python", "analyze.py", "eval", "--models", f"{a}+{b}={dest}", "--benchmarks", *cfg.benchmarks,
            "--domains", a, b, *n_pairs, "--k", str(cfg.eval_k), "--seed", str(seed), "--problem-seed", "0", *gen,
            "--grader", "paper", "--batch-size", "64", "--out", str(report / "pairs" / f"{a}-{b}")],
            [str(report / "pairs" / f"{a}-{b}" / "eval.json")], [str(dest / "merge_report.json")]))
    if cfg.verify_problems:
        held_out = ["--data", cfg.train_eval_data] if cfg.train_eval_data else []
        stages.append(Stage(f"{tag}verify", [
            "python", "analyze.py", "verify", "--models", *[f"{k}={v}" for k, v in judged.items()],
            "--domains", *cfg.domains, *held_out, "--n-problems", str(cfg.verify_problems), "--k", str(cfg.eval_k),
            "--seed", str(seed), *gen, "--out", str(report)], [str(report / "verify.json")], marks))
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


def interpreter_argv(cmd: list[str]) -> list[str]:
    """The argv that runs a stage: its `python` (or `torchrun`) with the interpreter this script was started
    with, so that `venv/bin/python experiment.py` runs every stage in that venv without activating it. The
    commands as printed and stamped keep `python`, as a user would type them."""
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:]]
    if cmd[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
    return cmd

# The process between experiment.py and each stage's command (stdlib only, run with python -c). When experiment.py
# dies, however it dies (kill -9 included), it kills the stage's whole process tree: torchrun's workers, which
# torchrun starts in sessions of their own, and the programs the code verifier starts. Linux tells it at once
# (PR_SET_PDEATHSIG); a watchdog on the parent's pid covers the instant before that is set, and kernels without it.
# As a child subreaper it inherits the orphans of the processes it kills, so none escapes to init.
_SUPERVISOR = r"""
import ctypes, os, signal, subprocess, sys, time
parent, cmd = int(sys.argv[1]), sys.argv[2:]

def tree():
    if not os.path.isdir("/proc"):
        return None
    kids = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except (OSError, ValueError, IndexError):
            pass   # a process that ended while we read
    found, todo = [], [os.getpid()]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found

def kill_tree(code=137):
    while True:
        left = tree()
        if left is None:   # no /proc: the stage's process group is the best there is
            os.killpg(0, signal.SIGKILL)
        if not left:
            os._exit(code)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.01)

signal.signal(signal.SIGHUP, lambda *_: kill_tree())
try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)                  # PR_SET_CHILD_SUBREAPER
    libc.prctl(1, int(signal.SIGHUP), 0, 0, 0)  # PR_SET_PDEATHSIG: SIGHUP when experiment.py dies
except (OSError, AttributeError):
    pass   # not Linux: the watchdog below
if os.getppid() != parent:   # experiment.py died before the death signal was set
    kill_tree()
# stop() signals the stage's process group with SIGTERM: the stage gets it too; wait here for it to end (a Python
# handler, unlike SIG_IGN, is not inherited by the command)
signal.signal(signal.SIGTERM, lambda *_: None)
child = subprocess.Popen(cmd)
while True:
    try:
        rc = child.wait(timeout=1)
        break
    except subprocess.TimeoutExpired:
        if os.getppid() != parent:
            kill_tree()
kill_tree(rc if rc >= 0 else 128 - rc)   # the stage ended: so does anything it left running
"""


def launch(cmd: list[str], **popen) -> subprocess.Popen:
    """Start a stage's command under _SUPERVISOR, in a session of its own (stop() signals its process group)."""
    return subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(os.getpid()), *cmd], start_new_session=True,
                            **popen)


def run_alone(cfg: Config, stage: Stage) -> int:
    """Run one stage with its output on the console and in its log; returns the exit code."""
    with open(log_path(cfg, stage), "wb") as log:
        proc = launch(interpreter_argv(stage.cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    """End a stage: SIGTERM to its process group (torchrun passes it on to its workers), and after 30 s its
    supervisor kills the whole tree (SIGHUP, as when experiment.py dies)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGHUP)
            try:
                proc.wait(timeout=10)
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
                    proc = launch(interpreter_argv(s.cmd), stdout=log, stderr=subprocess.STDOUT, env=env if cfg.parallel > 1 else None)
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
    run(main, cli(sys.argv[1:]), "experiment.py")
