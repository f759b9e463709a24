"""Benchmark the small world's sampling: HF generate (model.generate) vs model.fast_generate on the tiny model.

    python bench/generate.py                         # train.py's rollout: 16 prompts x 8, 64 new tokens; ~1 minute
    python bench/generate.py --repeats 10 --threads 1

The work is one rollout of train.py's tiny preset (its prompts_per_step math prompts, group_size samples each,
max_new_tokens, temperature, read from train.PRESETS["tiny"]), then analyze.py's kind of greedy eval (the same
prompts, temperature 0). The two paths alternate (HF, fast, HF, fast, ...; --repeats of each), so a burst of load
from other processes hits both alike. Printed per path and decoding: the median seconds per call, completion
tokens per second (tokens generated / seconds, summed over the calls), and fast's speed-up (HF's median seconds
over fast's); for greedy decoding, how many completions of the two paths are token for token equal (all of them,
when fast_generate is right). Nothing to install: both paths are this repository's.
"""

import os
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import model as modeling  # noqa: E402
import train  # noqa: E402


@dataclass
class Config:
    """Seconds and tokens/s of HF generate vs fast_generate on the tiny model."""

    prompts: int = 0
    """Prompts per call; 0: train.py's tiny prompts_per_step."""
    group_size: int = 0
    """Samples per prompt; 0: train.py's tiny group_size."""
    max_new_tokens: int = 0
    """Longest completion; 0: train.py's tiny max_new_tokens."""
    repeats: int = 5
    """Calls of each path per decoding, alternating (plus one warm-up call each, not counted)."""
    threads: int = 0
    """torch threads; 0: torch's default (one per core)."""


def main(cfg: Config) -> None:
    tiny = train.PRESETS["tiny"]
    tcfg = replace(tiny, prompts_per_step=cfg.prompts or tiny.prompts_per_step,
                   group_size=cfg.group_size or tiny.group_size, max_new_tokens=cfg.max_new_tokens or tiny.max_new_tokens)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok, net = modeling.load_tokenizer(tcfg.model), modeling.load_model(tcfg.model)
    prompts = [r["prompt"] for r in data.embedded("math", "train", n=tcfg.prompts_per_step)]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}; "
          f"model {tcfg.model}, {len(prompts)} prompts x {tcfg.group_size}, max_new_tokens {tcfg.max_new_tokens}, "
          f"{cfg.repeats} alternating calls of each path (after one warm-up each)")
    paths = {"hf generate": modeling.generate, "fast_generate": modeling.fast_generate}
    print(f"\n{'decoding':<10}{'path':<15}{'median s':>10}{'tok/s':>9}{'tokens':>8}{'speed-up':>10}")
    for decoding, temperature, n in (("sample", tcfg.temperature, tcfg.group_size), ("greedy", 0.0, 1)):
        secs, tokens, outs = {p: [] for p in paths}, dict.fromkeys(paths, 0), {}
        for rep in range(cfg.repeats + 1):
            for name, fn in paths.items():
                t = time.perf_counter()
                out = fn(net, tok, prompts, n=n, max_new_tokens=tcfg.max_new_tokens, temperature=temperature,
                         seed=rep)
                if rep:   # the first call of each warms up
                    secs[name].append(time.perf_counter() - t)
                    tokens[name] += sum(len(s["completion_ids"]) for s in out)
                outs[name] = out
        base = statistics.median(secs["hf generate"])
        for name in paths:
            med = statistics.median(secs[name])
            print(f"{decoding:<10}{name:<15}{med:>10.3f}{tokens[name] / sum(secs[name]):>9.0f}"
                  f"{tokens[name] / cfg.repeats:>8.0f}{base / med:>9.2f}x")
        if decoding == "greedy":
            same = sum(a["completion_ids"] == b["completion_ids"] for a, b in zip(*outs.values()))
            print(f"greedy completions token for token equal: {same}/{len(prompts)}")
    print("speed-up = HF generate's median s / the path's; tokens = completion tokens per call")


if __name__ == "__main__":
    main(tyro.cli(Config))
