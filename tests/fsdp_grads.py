"""Gradients of one GRPO micro-batched backward pass, written to a file; run both as
`python tests/fsdp_grads.py OUT NORM [paper]` (one process, no sharding) and
`torchrun --nproc_per_node 2 tests/fsdp_grads.py OUT NORM [paper]` (FSDP2 over gloo). test_train.py compares them.
paper: activation checkpointing and micro-batches capped by padded tokens, as --preset paper (the ranks then
run different numbers of real micro-batches)."""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as modeling  # noqa: E402
import train  # noqa: E402


def fixed_batch(n: int, vocab: int):
    g = torch.Generator().manual_seed(1)
    samples = []
    for i in range(n):
        p = torch.randint(3, vocab, (2 + i % 3,), generator=g).tolist()
        c = torch.randint(3, vocab, (1 + (i * 5) % 4,), generator=g).tolist()
        samples.append({"prompt_ids": p, "completion_ids": c, "truncated": False, "rollout_logp": None})
    adv = torch.randn(n, generator=g)
    return samples, adv


def main(out: str, norm: str, paper: bool = False) -> None:
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    model = modeling.load_model("tiny")
    cfg = train.Config(domains=("math",), micro_batch=2, loss_norm=norm, max_new_tokens=4,
                       micro_batch_tokens=12 if paper else 0)
    samples, adv = fixed_batch(7, model.config.vocab_size)  # 7: ranks get unequal shares (4 and 3)
    if paper:
        train.enable_activation_checkpointing(model)
    if distributed:
        model = train.shard(model, torch.device("cpu"))
    local = list(range(rank, len(samples), world))
    mine = [samples[i] for i in local]
    denom = train.loss_denominator(mine, cfg, "cpu")
    n_micro = train.all_max(len(train.micro_batches(mine, cfg.micro_batch, cfg.micro_batch_tokens)), "cpu")
    train.train_on(model, mine, adv[local], cfg, 0, "cpu", denom, n_micro)
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in model.named_parameters()}
    if rank == 0:
        torch.save(grads, out)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], paper=sys.argv[3:] == ["paper"])
