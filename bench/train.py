"""Benchmark train.py against TRL's GRPOTrainer: rollout tokens/s, train tokens/s and step time.

One-time setup: TRL goes in its own venv that reuses this machine's CPU torch and transformers
(pip would otherwise be free to pull a CUDA torch; check the plan first, it must not list torch):
    python -m venv /tmp/trlvenv --system-site-packages
    /tmp/trlvenv/bin/pip install --dry-run trl==1.16.0      # plan: trl, datasets, pandas, pyarrow, ...; no torch
    /tmp/trlvenv/bin/pip install trl==1.16.0
Then (about a minute on 2 idle cores):
    python bench/train.py                           # m2rl 1 process, m2rl 2 processes, TRL 1 process
    python bench/train.py --steps 20 --repeats 3    # steadier figures on a busy machine
    python bench/train.py --nproc 0                 # skip the torchrun row
Without the venv (or with --trl-python ''), only m2rl's rows are printed.

The work is train.py's default (the "tiny" preset) on --domains math: the tiny Qwen3 from model.py,
embedded math, prompts_per_step prompts x group_size completions, at most
max_new_tokens new tokens, all read from train.PRESETS["tiny"], never restated here.
  m2rl   `python train.py` and `torchrun --nproc_per_node N train.py` in subprocesses; the figures come
         from their metrics.jsonl (time/sync, time/rollout, time/reward, time/train, tokens_per_s).
  TRL    GRPOTrainer in a subprocess under --trl-python (this same file, run as `trl-worker`), fed the
         very prompts m2rl sees at each step (data.batch_for_step, in order, shuffle off).
The first --warmup steps of each run are dropped (allocator, first generate), then per step:
  rollout s   m2rl: sync + rollout (weight copy into the rollout copy, chat template, HF generate, decode).
              TRL: GRPOTrainer._generate (chat template, HF generate on the policy itself, decode).
  reward s    m2rl: verify_batch + group advantages. TRL: the rest of _generate_and_score_completions
              (the reward function calling the same verify_batch, advantages, padding, its metrics).
  train s     m2rl: forward/backward in micro-batches, grad clip, AdamW step. TRL: the rest of the
              optimizer step (its micro-batches, grad clip, AdamW step).
  step s      the sum of the three (mean over steps; "median" beside it): for m2rl, train.py's step
              timer; for TRL, from the trainer's on_step_begin to on_step_end callback. Neither counts
              writing logs or checkpoints; TRL's data loader and logging run between on_step_end and the
              next on_step_begin, so they are left out too (printed on their own below the table).
  rollout tok/s   completion tokens generated / rollout s (summed over the measured steps).
  train tok/s     the same completion tokens (they carry the loss) / train s.
Ratios: m2rl's tok/s over TRL's, and TRL's step s over m2rl's ("x faster"; above 1, m2rl is faster).
The torchrun row is compared with TRL's single process, since TRL runs one process here.

What is matched: model weights (same seed), tokenizer and chat template, the prompts of each step,
group size, max new tokens, temperature (top_p 1, no top_k), lr (constant, no warm-up), AdamW
(torch.optim.AdamW, same betas and weight decay), grad clip, clip eps low/high, loss normalisation
(train.py's "token" is TRL's loss_type "dapo": divide by the completion tokens of the whole step),
group std scaling, no KL (beta 0: neither builds a reference model), one optimizer step per rollout
batch (so the ratio is 1 and no old log-probs are computed), micro-batches of micro_batch sequences
(TRL: per_device_train_batch_size = micro_batch, gradient_accumulation_steps = prompts x group size /
micro_batch, one generate call per step), fp32 (bf16 off), CPU, HF generate (no vLLM), and no
activation checkpointing (TRL turns it on by default; train.py has none).
What differs, and cannot be made equal:
- Sampling draws from different RNG streams, so the completions (and their lengths) differ; the
  tok/s figures are normalised by the tokens each run actually generated.
- m2rl generates with a separate unsharded copy of the weights (the rollout engine) and copies the
  weights into it before each rollout (counted in its rollout time); TRL generates with the policy.
  TRL applies the chat template to all prompts x group size rows, m2rl to each prompt once.
- TRL projects only the completion positions through lm_head, in tiles, never holding the full
  (B, T, V) logits (TRL's fused LM head); m2rl projects every position (prompt and completion) and
  also computes the entropy and clip fraction.
  TRL computes its own logged metrics (entropy, clip ratios, reward stats) inside the step as well.
- TRL's group std adds eps 1e-4, m2rl's 1e-6; TRL exempts biases and norm weights from weight decay
  (no effect when weight_decay is 0).
- Other processes may share this machine's cores: figures from a busy machine are noisy. Runs are
  sequential, never concurrent, so the rows do not compete with each other; --repeats interleaves them.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import train  # noqa: E402

DOMAINS = ("math",)


@dataclass
class Config:
    """Rollout tokens/s, train tokens/s and step time: m2rl's train.py vs TRL's GRPOTrainer."""

    steps: int = 10
    """Steps per run, warm-up included."""
    warmup: int = 2
    """Steps dropped from the start of each run before measuring."""
    nproc: int = 2
    """Processes for the torchrun row; 0 skips it."""
    trl_python: str = "/tmp/trlvenv/bin/python"
    """Python of the venv with trl installed (see the docstring); empty skips TRL."""
    repeats: int = 1
    """Runs of each row, interleaved (m2rl, m2rl torchrun, TRL, m2rl, ...); their steps are pooled."""
    keep: bool = False
    """Keep the runs' temporary directory (metrics, logs) and print its path."""

    def __post_init__(self):
        assert self.steps > self.warmup >= 0, "--steps must exceed --warmup"
        assert self.nproc >= 0 and self.repeats >= 1


def train_config(steps: int) -> train.Config:
    """The benchmarked work: train.py's tiny preset on math, nothing else changed."""
    return replace(train.PRESETS["tiny"], domains=DOMAINS, steps=steps)


def summarise(runs: list[list[dict]], warmup: int) -> dict:
    """Runs of per-step {rollout, reward, train, tokens} (seconds, completion tokens) -> the reported
    figures, over every run's steps after its first `warmup`."""
    kept = [s for steps in runs for s in steps[warmup:]]
    tot = {k: sum(s[k] for s in kept) for k in ("rollout", "reward", "train", "tokens")}
    step_s = [s["rollout"] + s["reward"] + s["train"] for s in kept]
    return {"steps": len(kept), "rollout_s": tot["rollout"] / len(kept), "reward_s": tot["reward"] / len(kept),
            "train_s": tot["train"] / len(kept), "step_s": statistics.fmean(step_s),
            "step_s_median": statistics.median(step_s), "tokens": tot["tokens"] / len(kept),
            "rollout_tok_s": tot["tokens"] / max(tot["rollout"], 1e-9),
            "train_tok_s": tot["tokens"] / max(tot["train"], 1e-9),
            "between_s": statistics.fmean([s["between"] for s in kept if s.get("between") is not None] or [0.0])}


def read_m2rl_metrics(path: str) -> list[dict]:
    """train.py's metrics.jsonl -> per-step phases. tokens_per_s is completion tokens over the step
    time (sync + rollout + reward + train), so it gives back the token count."""
    steps = []
    with open(path) as f:
        for line in f:
            m = json.loads(line)
            parts = [m["time/sync"], m["time/rollout"], m["time/reward"], m["time/train"]]
            steps.append({"rollout": parts[0] + parts[1], "reward": parts[2], "train": parts[3],
                          "tokens": m["tokens_per_s"] * sum(parts)})
    return steps


def run_logged(cmd: list[str], log: str) -> None:
    """Run cmd in the repo root with its output in log; on failure show the log's tail and stop."""
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); end of {log}:\n{tail}")


def run_m2rl(cfg: Config, nproc: int, tmp: str) -> list[dict]:
    """train.py on the benchmarked work in nproc processes; its per-step phases. --standalone lets torchrun
    pick a free port, so it does not collide with other runs on the machine."""
    out_dir = os.path.join(tmp, f"m2rl-{nproc}")
    args = ["train.py", "--domains", ",".join(DOMAINS), "--steps", str(cfg.steps), "--save-every",
            str(cfg.steps), "--out-dir", out_dir, "--run-name", "bench", "--overwrite"]   # each repeat starts over
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    run_logged(launcher + args, os.path.join(tmp, f"m2rl-{nproc}.log"))
    return read_m2rl_metrics(os.path.join(out_dir, "bench", "metrics.jsonl"))


# ----------------------------------------------------------------------------- TRL side

def step_prompts(tcfg: train.Config) -> list[dict]:
    """The rows train.py trains on at each step, in order: prompts_per_step per step."""
    rows = data.load(tcfg.data, list(tcfg.domains), "train", seed=tcfg.seed)
    pools = {d: [r for r in rows if r["domain"] == d] for d in tcfg.domains}
    weights = data.mix_weights(tcfg.mix, tcfg.domains)
    return [r for step in range(tcfg.steps)
            for r in data.batch_for_step(pools, weights, step, tcfg.prompts_per_step, tcfg.seed)]


def run_trl(cfg: Config, tcfg: train.Config, tmp: str) -> list[dict]:
    """trl_worker under cfg.trl_python, given train.py's config and its rows step by step; its per-step phases."""
    spec = os.path.join(tmp, "trl-spec.json")
    with open(spec, "w") as f:
        json.dump({"config": asdict(tcfg), "rows": step_prompts(tcfg), "out": os.path.join(tmp, "trl-steps.json"),
                   "trainer_dir": os.path.join(tmp, "trl")}, f)
    run_logged([cfg.trl_python, os.path.abspath(__file__), "trl-worker", spec], os.path.join(tmp, "trl.log"))
    with open(os.path.join(tmp, "trl-steps.json")) as f:
        return json.load(f)


def trl_worker(spec_path: str) -> None:
    """Runs under the TRL venv's python: GRPOTrainer on the spec's rows with train.Config's settings,
    timing each optimizer step and its generate / score phases. Writes the per-step list to spec["out"]."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    import model as modeling
    from verifiers import verify_batch

    with open(spec_path) as f:
        spec = json.load(f)
    c, rows = spec["config"], spec["rows"]
    # Settings this worker does not translate to TRL; the tiny preset uses none of them.
    assert c["kl_coef"] == 0 and c["minibatches"] == 1 and not c["filter_zero_var"]
    assert not c["overlong_mask"] and c["overlong_penalty"] == 0
    P, sequences = c["prompts_per_step"], c["prompts_per_step"] * c["group_size"]
    assert sequences % c["micro_batch"] == 0, "micro_batch must divide prompts_per_step x group_size"
    loss_type = {"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}[c["loss_norm"]]

    def reward(completions, row_index, trainer_state, **_):
        step = trainer_state.global_step   # rows P*step .. P*step+P-1 are what train.py used at this step
        assert set(row_index) == set(range(P * step, P * step + P)), f"TRL step {step} got other prompts"
        texts = [m[-1]["content"] for m in completions]   # conversational: [{"role": "assistant", ...}]
        results = verify_batch(texts, [rows[i] for i in row_index], think=c["think"], workers=c["reward_workers"])
        return [x["reward"] for x in results]

    args = trl.GRPOConfig(
        output_dir=spec["trainer_dir"], report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, seed=c["seed"], max_steps=c["steps"], shuffle_dataset=False,
        gradient_checkpointing=False,   # TRL turns it on by default; train.py's tiny preset never recomputes activations
        # one optimizer step = prompts_per_step x group_size completions from one generate call
        num_generations=c["group_size"], per_device_train_batch_size=c["micro_batch"],
        gradient_accumulation_steps=sequences // c["micro_batch"], max_completion_length=c["max_new_tokens"],
        temperature=c["temperature"], top_p=1.0, top_k=0,
        learning_rate=c["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=c["adam_betas"][0], adam_beta2=c["adam_betas"][1], weight_decay=c["weight_decay"],
        max_grad_norm=c["grad_clip"], beta=0.0, num_iterations=1, epsilon=c["clip_low"],
        epsilon_high=c["clip_high"], loss_type=loss_type, scale_rewards="group" if c["scale_std"] else "none")

    class Timed(trl.GRPOTrainer):
        """GRPOTrainer with its rollout and generate+score phases timed, for this benchmark only."""
        phase = {"rollout": 0.0, "scored": 0.0, "tokens": 0}

        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            self.phase["rollout"] += time.perf_counter() - t
            self.phase["tokens"] += sum(len(ids) for ids in out[1])   # out[1]: completion_ids
            return out

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.phase["scored"] += time.perf_counter() - t
            return out

    steps = []

    class StepTimer(TrainerCallback):
        t_end = None

        def on_step_begin(self, *_, **__):
            Timed.phase.update(rollout=0.0, scored=0.0, tokens=0)
            self.t0 = time.perf_counter()
            self.gap = self.t0 - self.t_end if self.t_end is not None else None

        def on_step_end(self, *_, **__):
            self.t_end = time.perf_counter()
            total, p = self.t_end - self.t0, Timed.phase
            steps.append({"rollout": p["rollout"], "reward": p["scored"] - p["rollout"], "train": total - p["scored"],
                          "tokens": p["tokens"], "between": self.gap})

    dataset = Dataset.from_list([{"prompt": r["prompt"], "row_index": i} for i, r in enumerate(rows)])
    torch.manual_seed(c["seed"])
    trainer = Timed(model=modeling.load_model(c["model"]), reward_funcs=reward, args=args, train_dataset=dataset,
                    processing_class=modeling.load_tokenizer(c["model"]), callbacks=[StepTimer()])
    trainer.train()
    with open(spec["out"] + ".tmp", "w") as f:
        json.dump(steps, f)
    os.replace(spec["out"] + ".tmp", spec["out"])


# ----------------------------------------------------------------------------- main

def trl_version(python: str) -> str | None:
    """trl's version under that python, or None when it is missing or has no trl."""
    if not python or not os.path.exists(python):
        return None
    r = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def main(cfg: Config) -> None:
    tcfg = train_config(cfg.steps)
    version = trl_version(cfg.trl_python)
    if version is None:
        print(f"no trl under --trl-python {cfg.trl_python!r}: printing m2rl only (setup: see bench/train.py's "
              "docstring)")
    print(f"{os.cpu_count()} CPUs; work: model {tcfg.model}, --domains {','.join(DOMAINS)}, "
          f"{tcfg.prompts_per_step} prompts x {tcfg.group_size} completions, max_new_tokens "
          f"{tcfg.max_new_tokens}, micro_batch {tcfg.micro_batch}; {cfg.steps} steps per run, first {cfg.warmup} "
          "dropped")
    print("note: other processes on this machine share its cores, so these timings are noisy")
    tmp = tempfile.mkdtemp(prefix="m2rl-bench-train-")
    jobs = {"m2rl 1 proc": lambda: run_m2rl(cfg, 1, tmp)}
    if cfg.nproc:
        jobs[f"m2rl {cfg.nproc} procs"] = lambda: run_m2rl(cfg, cfg.nproc, tmp)
    if version:
        jobs[f"TRL {version} 1 proc"] = lambda: run_trl(cfg, tcfg, tmp)
    steps = {name: [] for name in jobs}
    try:
        # Interleaved repeats: a burst of load from other processes then hits every row alike.
        for rep in range(cfg.repeats):
            for name, job in jobs.items():
                t = time.time()
                print(f"running {name} ({rep + 1}/{cfg.repeats}) ...", end=" ", flush=True)
                steps[name].append(job())
                print(f"{time.time() - t:.0f} s", flush=True)
    finally:
        if cfg.keep:
            print(f"runs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    runs = {name: summarise(s, cfg.warmup) for name, s in steps.items()}

    print(f"\n{'':<18}{'rollout tok/s':>14}{'train tok/s':>12}{'step s':>8}{'median':>8}"
          f"{'rollout s':>10}{'reward s':>9}{'train s':>8}{'tokens':>8}")
    for name, r in runs.items():
        print(f"{name:<18}{r['rollout_tok_s']:>14.0f}{r['train_tok_s']:>12.0f}{r['step_s']:>8.2f}"
              f"{r['step_s_median']:>8.2f}{r['rollout_s']:>10.2f}{r['reward_s']:>9.3f}{r['train_s']:>8.2f}"
              f"{r['tokens']:>8.0f}")
    trl_name = next((n for n in runs if n.startswith("TRL")), None)
    if trl_name:
        base = runs[trl_name]
        print(f"(not in TRL's step s: {base['between_s']:.2f} s per step between on_step_end and the next "
              "on_step_begin, its data loader and logging)")
        print(f"\nm2rl vs {trl_name} (x faster; > 1: m2rl is faster)")
        for name, r in runs.items():
            if name != trl_name:
                print(f"  {name:<16} rollout {r['rollout_tok_s'] / base['rollout_tok_s']:.2f}x   "
                      f"train {r['train_tok_s'] / base['train_tok_s']:.2f}x   "
                      f"step {base['step_s'] / r['step_s']:.2f}x")


if __name__ == "__main__":
    # `trl-worker SPEC` is this file re-run under the TRL venv by run_trl; anything else is the benchmark.
    if sys.argv[1:2] == ["trl-worker"]:
        trl_worker(sys.argv[2])
    else:
        main(tyro.cli(Config))
