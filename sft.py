"""Supervised fine-tuning of the tiny Qwen3 on the embedded demonstrations: the base that every RL run starts
from and every merge is taken against, as the SFT checkpoint is in the paper (M2RL, arXiv 2602.12566).

    python sft.py                          # rebuilds data/tiny_sft, the shipped base (45 min on one core)
    python sft.py --out out/sft --seed 1   # another base, elsewhere
    python sft.py --steps 50 --out /tmp/s  # a quick look

The model is model.tiny_config() (0.9M parameters) from model.load_model("tiny-init", seed), trained with
the cross-entropy of the completion tokens (the prompt is context only) on demonstrations of all four domains
in equal shares (data/embedded.py, `sft_examples`), with the item kinds of the small world (shared, specific,
conflict, composite) at data.embedded.SFT_KINDS. Each kind has its own teachers (careful, slip and hasty;
careful and confused; terse and full: the module docstring of data/embedded.py says what each does and how
often). A tenth of the steps (judge_share) are judging demonstrations from data/judge.py, in batches of their
own. The result knows how to solve each domain but often skips the plan or mixes up a domain's own skill, so
its held-out accuracy leaves room for RL.

The run is a pure function of its Config: same seed, same bits on the same CPU type and torch version (the
thread count is fixed by `threads`, since a reduction split over another number of threads can round
differently). out/ gets the HF model and tokenizer and sft_report.json: the config, the wall time, and the
held-out accuracy per domain (avg@k at temperature 1, the share of completions with a plan, and the
accuracy of those with and without one).

How this differs from the paper: the paper's base is Qwen3-4B-Base after SFT on Nemotron data; ours is a
0.9M-parameter model trained from scratch on generated demonstrations whose mix of teachers is chosen so
that RL has something to find.
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import tyro

from cli import run

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAINS = ("math", "code", "science", "if")


@dataclass
class Config:
    """Supervised fine-tuning of the tiny model on the embedded demonstrations (the RL base)."""

    out: str = "data/tiny_sft"
    """Where the model, tokenizer and sft_report.json go (the default is the base shipped in the repo; paths are
    relative to the working directory, the repository root in every command here)."""
    seed: int = 0
    """Seeds the init, the demonstrations and their order."""
    domains: tuple[str, ...] = DOMAINS
    """Domains of the demonstrations, in equal shares."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Demonstrations per step, the four domains in equal shares over the run."""
    lr: float = 3e-3
    """Peak AdamW learning rate: linear warmup, then cosine decay to 0."""
    warmup: int = 50
    """Warmup steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay (AdamW)."""
    threads: int = 1
    """CPU threads; fixed so that the run gives the same bits whatever machine size it runs on (one thread is
    as fast as two for this model on a machine that has other work, and never splits a reduction)."""
    judge_share: float = 0.1
    """Share of the steps that train on judging demonstrations (data/judge.py: is this response right?), for
    the self-verification analysis. They come in batches of their own, so their long prompts do not pad the
    other batches."""
    eval_problems: int = 200
    """Held-out problems per domain for the report (the eval split, never trained on)."""
    eval_k: int = 4
    """Samples per problem (avg@k at temperature 1)."""
    max_new_tokens: int = 64
    """Completion budget of the eval samples."""
    reuse: bool = True
    """When `out` is not data/tiny_sft and the base shipped there was built with this same config (its
    sft_report.json says so), copy it instead of training: the same bits in seconds. --no-reuse trains."""


# ----------------------------------------------------------------------------- data

def encode(tokenizer, examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + eos) per demonstration, in one batched tokenizer call each."""
    if not examples:   # a short run can have no judging step
        return []
    prompts = tokenizer.apply_chat_template([e["prompt"] for e in examples], add_generation_prompt=True, tokenize=False)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([e["completion"] for e in examples], add_special_tokens=False)["input_ids"]
    return [(p, c + [tokenizer.eos_token_id]) for p, c in zip(p_ids, c_ids)]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ids (B, L), attention mask (B, L), labels (B, L) with -100 on prompt and padding."""
    import torch
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(pairs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)   # HF shifts labels by one inside the loss
    return ids, attn, labels


def judging_steps(cfg: Config) -> set[int]:
    """The steps that train on judging demonstrations: evenly spread, cfg.judge_share of them."""
    return {s for s in range(cfg.steps) if int((s + 1) * cfg.judge_share) > int(s * cfg.judge_share)}


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup over cfg.warmup steps, then cosine from cfg.lr to 0 at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


# ----------------------------------------------------------------------------- eval

def held_out(policy, tokenizer, cfg: Config) -> dict:
    """Per domain: avg@k on the first cfg.eval_problems eval rows, the share of completions that plan
    (a non-empty <think> block), and the accuracy with and without a plan."""
    import data
    import model as modeling
    from verifiers import verify_batch
    report = {}
    for d in cfg.domains:
        rows = data.embedded(d, "eval", n=cfg.eval_problems)
        samples = modeling.generate(policy, tokenizer, [r["prompt"] for r in rows], n=cfg.eval_k,
                                    max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed)
        graded = verify_batch([s["text"] for s in samples], [r for r in rows for _ in range(cfg.eval_k)], grader="paper")
        plans = [not s["text"].startswith("<think></think>") for s in samples]
        rewards = [g["reward"] for g in graded]
        mean = lambda xs: sum(xs) / len(xs) if xs else None   # noqa: E731
        kinds = [r.get("kind") for r in rows for _ in range(cfg.eval_k)]
        report[d] = {"avg@k": mean(rewards), "k": cfg.eval_k, "n": len(rows), "plan_share": mean(plans),
                     "acc_with_plan": mean([r for r, p in zip(rewards, plans) if p]),
                     "acc_without_plan": mean([r for r, p in zip(rewards, plans) if not p]),
                     "truncated": mean([s["truncated"] for s in samples]),
                     "by_kind": {k: mean([r for r, kk in zip(rewards, kinds) if kk == k]) for k in dict.fromkeys(kinds)}}
    return report


# ----------------------------------------------------------------------------- main

SHIPPED = os.path.join(HERE, "data", "tiny_sft")


def same_recipe(a: dict, b: dict) -> bool:
    """Two configs that build the same model: every field but where it goes and whether to reuse."""
    skip = ("out", "reuse")
    same = lambda d: json.loads(json.dumps({k: v for k, v in d.items() if k not in skip}))   # noqa: E731  tuples as lists
    return same(a) == same(b)


def main(cfg: Config) -> dict:
    shipped_report = os.path.join(SHIPPED, "sft_report.json")
    if cfg.reuse and os.path.abspath(cfg.out) != SHIPPED and os.path.exists(shipped_report):
        with open(shipped_report) as f:
            report = json.load(f)
        if same_recipe(report["config"], asdict(cfg)):
            import shutil
            tmp = cfg.out.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(SHIPPED, tmp)
            shutil.rmtree(cfg.out, ignore_errors=True)
            os.replace(tmp, cfg.out)
            print(f"copied the shipped base {SHIPPED} to {cfg.out}: sft.py built it with this same config "
                  "(--no-reuse trains it again)")
            return report

    import torch
    from tqdm import tqdm

    import data
    import model as modeling
    from data.judge import judge_examples

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    tokenizer = modeling.load_tokenizer("tiny")
    policy = modeling.load_model("tiny-init", seed=cfg.seed).train()
    judge_steps = judging_steps(cfg)
    n_solve, n_judge = (cfg.steps - len(judge_steps)) * cfg.batch_size, len(judge_steps) * cfg.batch_size
    per_domain, judge_per_domain = -(-n_solve // len(cfg.domains)), -(-n_judge // len(cfg.domains))
    print(f"generating {per_domain} demonstrations and {judge_per_domain} judging demonstrations of each of "
          f"{', '.join(cfg.domains)} (a few minutes)", flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    solve = [e for d in cfg.domains for e in data.sft_examples(d, per_domain, seed=cfg.seed)]
    judge = [e for d in cfg.domains for e in judge_examples(d, judge_per_domain, seed=cfg.seed)]
    solve = encode(tokenizer, [solve[i] for i in torch.randperm(len(solve), generator=gen).tolist()])
    judge = encode(tokenizer, [judge[i] for i in torch.randperm(len(judge), generator=gen).tolist()])
    batches, used = [], {"solve": 0, "judge": 0}
    for step in range(cfg.steps):   # each step's batch: the next batch_size demonstrations of its kind
        kind, pool = ("judge", judge) if step in judge_steps else ("solve", solve)
        batches.append(pool[used[kind]: used[kind] + cfg.batch_size])
        used[kind] += cfg.batch_size
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    bar = tqdm(range(cfg.steps), desc="sft", unit="step")
    for step in bar:
        ids, attn, labels = collate(batches[step], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = policy(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    policy.eval()
    report = {"config": asdict(cfg), "train_s": train_s, "held_out": held_out(policy, tokenizer, cfg)}
    report["wall_s"] = time.time() - t0
    modeling.save_pretrained(policy, tokenizer, cfg.out)
    with open(os.path.join(cfg.out, "sft_report.json.tmp"), "w") as f:
        json.dump(report, f, indent=1)
    os.replace(os.path.join(cfg.out, "sft_report.json.tmp"), os.path.join(cfg.out, "sft_report.json"))
    print("held-out accuracy (avg@%d at temperature 1):" % cfg.eval_k)
    for d, r in report["held_out"].items():
        print(f"  {d:8s} {r['avg@k']:.3f}   plans {r['plan_share']:.2f}   with a plan {r['acc_with_plan'] or 0:.2f}"
              f"   without {r['acc_without_plan'] or 0:.2f}   by kind: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind"].items()))
    print(f"wrote {cfg.out} ({train_s:.0f} s training, {report['wall_s']:.0f} s in all)")
    return report


if __name__ == "__main__":
    run(main, tyro.cli(Config, args=sys.argv[1:]), "sft.py")
