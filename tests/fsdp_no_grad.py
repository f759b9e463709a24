"""FSDP2's passes without grad, over gloo, written to OUT for test_train.py:
    torchrun --nproc_per_node 2 tests/fsdp_no_grad.py OUT
- Frozen models (the KL reference, an MT-OPD teacher): after a training micro-batch that scores with both, which
  of their parameters are still unsharded (FSDP2 registers the unsharded tensors as the module's parameters,
  and DTensors again once resharded), and the reference's log-probs from two passes.
- train.sync_weights into a bf16 HF engine (as on a GPU): the dtype and bytes of each all-gather, and the
  engine's weights afterwards.
- The old log-probs of a minibatch update when the ranks have different numbers of micro-batches (rank 0: 5
  samples in 3, rank 1: 1 sample in 1); rank 0's."""

import os
import sys

import copy

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as modeling  # noqa: E402
import train  # noqa: E402
from fsdp_grads import fixed_batch  # noqa: E402


def unsharded(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if not isinstance(p, DTensor)]


class GatherRecorder(TorchDispatchMode):
    """dtype and bytes of the input of every all-gather (how DTensor.full_tensor moves an FSDP2 shard)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops._c10d_functional.all_gather_into_tensor.default:
            self.seen.append((args[0].dtype, args[0].numel() * args[0].element_size()))
        return func(*args, **(kwargs or {}))


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")
    policy = train.shard(modeling.load_model("tiny"), cpu)
    ref = train.shard(modeling.load_model("tiny-init", seed=1).eval().requires_grad_(False), cpu)
    teacher = train.shard(modeling.load_model("tiny-init", seed=2).eval().requires_grad_(False), cpu)
    samples, adv = fixed_batch(8, policy.config.vocab_size)
    for s in samples:
        s["domain"] = "math"
    mine = samples[rank::world]
    cfg = train.Config(domains=("math",), micro_batch=4, kl_coef=0.1, max_new_tokens=4, teachers="math=unused")
    train.train_on(policy, mine, adv[rank::world], cfg, 0, cpu, denom=8.0, n_micro=1, ref_model=ref,
                   teachers={"math": teacher})
    result = {"policy": unsharded(policy), "ref": unsharded(ref), "teacher": unsharded(teacher)}
    ids, attn, targets, _ = train.pack(samples, 0, cpu)
    result["ref_logp"] = [train.frozen_logprobs(ref, ids, attn, targets, 0.7) for _ in range(2)]
    engine = copy.deepcopy(modeling.load_model("tiny-init", seed=3)).to(torch.bfloat16)
    rec = GatherRecorder()
    with rec:
        train.sync_weights(policy, engine)
    result["sync_gathers"] = rec.seen
    result["engine"] = {n: p.detach().clone() for n, p in engine.named_parameters()}
    uneven = samples[:5] if rank == 0 else samples[5:6]
    result["old_logps"] = train._logps(policy, uneven, train.Config(domains=("math",), micro_batch=2), 0, cpu)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
