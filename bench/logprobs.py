"""Peak memory of one no-grad log-prob pass (the old-log-prob / TIS pass; the reference and teacher passes are
the same computation), before and after issue 14: the one-shot formula over the full (B, T, V) logits against
train.token_logprobs, which makes them LOGP_CHUNK positions at a time. And of the plain-torch loss with its
gradient (MT-OPD, or any run without Liger), before and after issue 22 (variants *_grad).

    python bench/logprobs.py                          # CPU: 4,096 positions x 151,936 tokens, about 1 minute
    python bench/logprobs.py --positions 8448         # one paper-length sequence (256 + 8,192); needs ~12 GB free
    python bench/logprobs.py --hidden 2560            # Qwen3-4B's hidden size (slower on CPU; memory is the same)
    python bench/logprobs.py --positions 2048 --hidden 64 --dtype float32 --chunk 128 \
        --variants one_shot_grad chunked_grad        # the loss with grad, before and after issue 22 (~1.5 min)

Every variant runs in a fresh subprocess on random final hidden states and a random output weight (bf16 by
default, as on a GPU under FSDP2's mixed precision). Printed per variant:
  peak MB     the pass's peak memory above what its inputs already hold: on CUDA torch.cuda.max_memory_allocated;
              on CPU the peak resident set (VmHWM) after resetting it through /proc/self/clear_refs once the
              inputs exist (ru_maxrss of the process where that reset is refused)
  formula MB  the live tensors at the pass's peak: the fp32 logits and their fp32 log-softmax, B x T x V x (4 + 4)
              bytes for one-shot and LOGP_CHUNK x V x (4 + 4) for chunked (the bf16 matmul output is freed once
              its fp32 copy exists, and the chunked entropy's exp takes the place of the freed logits)
  s           seconds of the pass (information only: CPU matmuls, not a GPU figure)
and, from the formula, the paper micro-batch's figure: 8 x 8,448 positions before issue 14, 65,536 positions
(train.py's paper micro_batch_tokens) after it.
"""

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@dataclass
class Config:
    """Peak memory of the no-grad log-prob pass: one-shot (B, T, V) logits vs chunked."""

    positions: int = 4096
    """Token positions in the pass (B x T), e.g. 4,096 = one sequence of 4,096 tokens."""
    vocab: int = 151936
    """Vocabulary size (Qwen3: 151,936)."""
    hidden: int = 256
    """Hidden size. The logits' memory does not depend on it; the matmul's time does (Qwen3-4B: 2,560)."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype of the hidden states and weight (bf16 as under FSDP2 mixed precision on a GPU)."""
    variants: tuple[str, ...] = ("one_shot", "chunked", "chunked_entropy", "one_shot_grad", "chunked_grad")
    """one_shot (before issue 14), chunked (train.token_logprobs), chunked_entropy (train.token_logprobs_entropy),
    and with grad, forward and backward: one_shot_grad (policy_loss_torch's log-probs before issue 22) and
    chunked_grad (train.policy_loss_torch, whose gradient is made in chunks too: train.logprobs_with_grad)."""
    chunk: int = 0
    """Positions per chunk (train.LOGP_CHUNK); 0 keeps train.py's."""


def one_shot(hidden, weight, targets, temperature: float = 1.0):
    """The formula train.token_logprobs had before issue 14, kept here as the 'before' figure."""
    logits = (hidden @ weight.T).float() / temperature      # (B, T, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def one_shot_grad(hidden, weight, targets, temperature: float = 1.0):
    """What policy_loss_torch made before issue 22: the (B, T, V) fp32 logits, scaled, their log-softmax (kept
    for backward) and the entropy; then backward through the log-probs."""
    logits = (hidden @ weight.T).float() / temperature      # (B, T, V)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    logp.sum().backward()
    return logp.detach() + 0 * entropy


def chunked_grad(hidden, weight, targets, temperature: float = 1.0):
    """train.policy_loss_torch now (its log-probs from train.logprobs_with_grad), forward and backward."""
    import train
    mask, adv = torch.ones(targets.shape, device=targets.device), torch.ones(targets.shape[0], device=targets.device)
    loss, stats = train.policy_loss_torch(hidden, weight, targets, mask, adv, None,
                                          train.Config(temperature=temperature))
    loss.backward()
    return stats["entropy"].detach().expand(targets.shape)


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM to the current resident set on writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def run_variant(cfg: Config, variant: str) -> dict:
    """One pass in this process; its peak memory above the inputs."""
    import train
    if cfg.chunk:
        train.LOGP_CHUNK = cfg.chunk
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(1, cfg.positions, cfg.hidden, generator=g, device=device).to(dtype)
    weight = (torch.randn(cfg.vocab, cfg.hidden, generator=g, device=device) / cfg.hidden ** 0.5).to(dtype)
    targets = torch.randint(0, cfg.vocab, (1, cfg.positions), generator=g, device=device)
    grad = variant.endswith("_grad")
    if grad:   # the gradients' own memory (hidden- and weight-sized) counts in the peak, as in training
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
    fn = {"one_shot": one_shot, "chunked": train.token_logprobs,
          "chunked_entropy": lambda *a: train.token_logprobs_entropy(*a)[0],
          "one_shot_grad": one_shot_grad, "chunked_grad": chunked_grad}[variant]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = _reset_peak_rss()
        base = _rss_kb("VmRSS") * 1024 if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        logp = fn(hidden, weight, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        peak = (_rss_kb("VmHWM") * 1024 if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
        how = "VmHWM after clear_refs" if exact else "ru_maxrss"
    seconds = time.perf_counter() - t0
    n = cfg.positions if variant.startswith("one_shot") else min(cfg.positions, train.LOGP_CHUNK)
    formula = formula_bytes(n, cfg.vocab) * (2 if variant == "one_shot_grad" else 1)
    return {"variant": variant, "peak_mb": peak / 2**20, "formula_mb": formula / 2**20,
            "s": seconds, "how": how, "device": device.type, "chunk": train.LOGP_CHUNK,
            "finite": bool(torch.isfinite(logp).all())}


def formula_bytes(positions: int, vocab: int) -> int:
    """fp32 logits and their fp32 log-softmax: the live tensors at a pass's peak."""
    return positions * vocab * (4 + 4)


def main(cfg: Config) -> None:
    import train
    print(f"log-prob pass: {cfg.positions:,} positions x {cfg.vocab:,} vocabulary, hidden {cfg.hidden}, "
          f"{cfg.dtype}, LOGP_CHUNK {cfg.chunk or train.LOGP_CHUNK}")
    print(f"{'variant':<17}{'peak MB':>10}{'formula MB':>12}{'s':>8}   measured by")
    for variant in cfg.variants:
        args = [sys.executable, os.path.abspath(__file__), "--positions", str(cfg.positions), "--vocab",
                str(cfg.vocab), "--hidden", str(cfg.hidden), "--dtype", cfg.dtype, "--variants", variant,
                "--chunk", str(cfg.chunk)]
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "M2RL_BENCH_CHILD": "1"})
        if r.returncode != 0:
            print(f"{variant:<17} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        x = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{variant:<17}{x['peak_mb']:>10,.0f}{x['formula_mb']:>12,.0f}{x['s']:>8.2f}   {x['how']}")
    paper_before, paper_after = 8 * 8448, 65536
    print(f"paper micro-batch, by the formula: before {formula_bytes(paper_before, cfg.vocab) / 2**30:,.1f} GiB "
          f"({paper_before:,} positions), after {formula_bytes(train.LOGP_CHUNK, cfg.vocab) / 2**30:,.2f} GiB "
          f"(any number of positions, {paper_after:,} in the paper preset)")


if __name__ == "__main__":
    cfg = tyro.cli(Config)
    if os.environ.get("M2RL_BENCH_CHILD"):
        print(json.dumps(run_variant(cfg, cfg.variants[0])))
    else:
        main(cfg)
