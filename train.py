"""GRPO for multi-domain RL with verifiable rewards: one expert per domain, or one model on a mix.

Commands (CPU, offline, the embedded default: the tiny SFT'd Qwen3 in data/tiny_sft, embedded data):
    python train.py --domains math --steps 20                    # one expert, one process
    torchrun --nproc_per_node 2 train.py --domains math,code     # the mixed model, 2 processes (gloo)
    torchrun --nproc_per_node 2 train.py --domains math,code --resume   # continue from the last checkpoint
    python train.py --domains math,code --teachers math=out/math,code=out/code   # MT-OPD from two experts
One 8-GPU node (NCCL, FSDP2, Liger loss when CUDA is available):
    torchrun --nproc_per_node 8 train.py --preset paper --model PATH_TO_SFT --data blend.jsonl --domains math
    torchrun --nproc_per_node 8 train.py --preset paper-mixed --model PATH_TO_SFT --data blend.jsonl \
        --domains math,code,science,if
Outputs go to out/<run_name>/: the final model in HF format at the top (merge.py and analyze.py read
it directly; links switched together to the newest checkpoint), checkpoints/step_N/ (HF model + trainer_state.pt
+ manifest.json, each whole or absent), metrics.jsonl, samples.jsonl, run.json; train.lock while it runs.

How this file differs from the paper (M2RL, arXiv 2602.12566), on purpose:
- The default preset is a small world: a 0.9M-parameter Qwen3 SFT'd by sft.py on generated demonstrations
  and embedded problems of the four domains (data/embedded.py), so a CPU run learns within minutes.
  `--preset paper` (an expert, 200 steps), `paper-mixed` (the mixed model, 400 steps) and
  `paper-opd` (MT-OPD, 200 steps) set the paper's hyper-parameters, its loss reduction (`--loss-norm sequence`)
  and Megatron's weight decay (none on 1-D parameters); their max_new_tokens (8192) is our choice, not the paper's.
- Rollouts come from HF `generate` on an unsharded copy of the weights (default), or from SGLang colocated
  on every GPU (--rollout sglang, rollout_sglang.py), the paper's kind of inference engine.
- The importance weight for the rollout-vs-trainer gap (truncated at `tis_cap`, paper: 2) only applies when
  the rollout backend returns its own log-probabilities; HF rollouts share the trainer's weights, so the gap
  is zero there and the weight is skipped.
- MT-OPD (--teachers) uses the GRPO loop with the teachers' per-token advantage in place of the group
  advantage; verifier rewards are still computed, for the logs only.
- Group std uses the unbiased estimator (torch default); a group whose rewards are all equal gets zero
  advantage either way.
"""

import contextlib
import copy
import dataclasses
import faulthandler
import fcntl
import importlib.util
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import data
from cli import Domains, UserError, parse, run
from data import RL_KINDS_SPEC


# ----------------------------------------------------------------------------- config

@dataclass
class Config:
    """GRPO training for one domain (an expert) or several (the mixed multi-task model)."""

    # Run
    preset: str = "tiny"
    """Named set of defaults: tiny (CPU toy); paper (the paper's GRPO, an expert: 200 steps), paper-mixed (the same
    for the mixed model: 400 steps), paper-opd (its MT-OPD). Flags override it."""
    run_name: str = ""
    """Directory under out_dir; empty: the domains joined by '-', e.g. math-code."""
    out_dir: str = "out"
    """Where runs are written."""
    seed: int = 0
    """Seeds the model init, the data order and the rollouts (the run is reproducible from it)."""
    steps: int = 100
    """Optimisation steps (each: rollout, reward, update). 0 saves the starting model and stops."""
    save_every: int = 20
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    resume: bool = False
    """Continue the run in out_dir/run_name from its last checkpoint, with its own settings (saved in its
    train_config.json; flags given now override them), the same data order and optimizer state."""
    overwrite: bool = False
    """Delete a finished or killed run in out_dir/run_name and start over (without it, or --resume, a run that
    is there stops this one before anything is written)."""

    # Data and model
    domains: Domains = data.DOMAINS
    """Comma-separated domains to train on: one gives an expert, several the mixed model."""
    mix: str = "proportional"
    """Domain ratios per step: proportional (pooled shuffle, as the paper), uniform, or math=0.5,code=0.5."""
    data: str = "embedded"
    """Training rows: 'embedded', a .jsonl/.parquet/... file or dataset directory, or a Hub id such as
    nvidia/Nemotron-3-Nano-RL-Training-Blend (row schema or the Nemotron RL blend; data/README.md)."""
    kinds: str = RL_KINDS_SPEC
    """Shares of the embedded world's item kinds in the RL pools, e.g. shared=0.4,specific=0.3,conflict=0.3
    (data/embedded.py says what each kind teaches; the eval always uses the same shares); other --data ignore it."""
    model: str = "tiny"
    """Starting model: 'tiny' (the SFT base shipped in data/tiny_sft, built by sft.py), 'smollm2-135m', or any
    HF causal LM path or hub id."""

    # GRPO
    prompts_per_step: int = 16
    """Prompts per step across all processes (paper: 128); a multiple of the number of processes."""
    group_size: int = 8
    """Completions sampled per prompt (paper: 16)."""
    max_new_tokens: int = 64
    """Longest completion; longer ones are truncated (the embedded world's longest reference is 45 tokens)."""
    temperature: float = 1.0
    """Sampling temperature; the trainer divides logits by it too, so both score the same policy."""
    lr: float = 1.5e-4
    """Adam learning rate, constant (paper: 2e-6)."""
    adam_betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas (paper: 0.9, 0.98)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the matrices (paper: 0.1); 1-D parameters (norms, biases) get none, as in
    Megatron, which the paper trained with."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (paper: 1.0); 0 turns clipping off."""
    clip_low: float = 0.2
    """Lower ratio clip epsilon (paper: 0.2)."""
    clip_high: float = 0.28
    """Upper ratio clip epsilon, DAPO's clip-higher (paper: 0.28)."""
    loss_norm: Literal["token", "sequence", "constant"] = "sequence"
    """Loss reduction: "sequence", the mean of per-sequence means (original GRPO, and the paper: each sample's
    token mean, summed and divided by the global batch; also the tiny default, since with token means long wrong
    completions outweigh short right ones and a tiny mixed run fell back to zero reward); "token", the mean over
    all completion tokens of the batch (DAPO); "constant", the sum over sequences x max_new_tokens (Dr.GRPO)."""
    scale_std: bool = True
    """Divide group advantages by the group std; --no-scale-std is Dr.GRPO."""
    filter_zero_var: bool = False
    """Drop groups whose rewards are all equal before the update (DAPO dynamic sampling, no resampling)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the starting model (paper: 0, and then no reference model is built)."""
    tis_cap: float = 2.0
    """Cap of the truncated importance weight pi_trainer/pi_rollout (paper: 2); 0 turns it off."""
    overlong_mask: bool = False
    """Give truncated completions no gradient (DAPO overlong filtering)."""
    overlong_penalty: float = 0.0
    """Subtract this from the reward of a truncated completion."""
    minibatches: int = 1
    """Optimizer steps per rollout batch; 1 is fully on-policy (the clip ratio is then exactly 1)."""
    micro_batch: int = 64
    """Sequences per forward/backward pass (gradient accumulation below that)."""
    micro_batch_tokens: int = 0
    """Cap on a micro-batch's padded tokens (sequences x longest); 0: none. With a cap, sequences are grouped
    longest first, so a pass holds many short ones or a few long ones (see train.micro_batches)."""
    think: bool = True
    """Reward gate: a completion that opens <think> must close it; only the text after it is graded."""
    grader: Literal["lenient", "paper"] = "paper"
    """Rewards: "paper" = the paper's graders (DeepScaleR's boxed math answer, GPQA's "Answer: X",
    pass-all on at most 20 code tests, IFEvalG all-or-nothing, 0 without </think>), which the embedded world's
    completions follow; "lenient" = also a last-number math fallback and no box or reasoning block needed,
    for models that do not write them (see verifiers/)."""
    teachers: str = ""
    """Multi-teacher on-policy distillation (MT-OPD): domain=path,... (e.g. math=out/math,code=out/code).
    Each sample's per-token advantage is log pi_teacher - log pi_student under its own domain's teacher
    (a reverse-KL reward); empty: GRPO with verifier rewards. Paper: clip 0.2/0.2, 256 prompts x 4, lr 1e-6."""

    # System
    rollout: Literal["hf", "sglang"] = "hf"
    """Rollout backend: HF generate on an unsharded copy of the weights, or one SGLang engine per GPU,
    colocated with the trainer (CUDA only; rollout_sglang.py, requirements-gpu.txt)."""
    sglang_mem_fraction: float = 0.5
    """SGLang's share of each GPU's memory (its weights + KV cache) while it generates (paper presets: 0.7)."""
    activation_checkpointing: bool = False
    """Recompute each decoder block's activations in backward (less memory for long completions)."""
    liger: bool | None = None
    """Liger kernels: the fused linear GRPO loss (chunked, no full logits) and fused RMSNorm/SwiGLU/RoPE.
    None: on when CUDA and liger-kernel are present."""
    liger_chunk_size: int = 1
    """Sequences per chunk of Liger's fused loss (its chunk_size; Liger's default 1). Each chunk allocates a
    weight-sized fp32 gradient of lm_head, so fewer chunks move less memory (paper presets: 64, one chunk per
    micro-batch)."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Optional experiment tracker (metrics.jsonl is always written)."""
    log_samples: int = 4
    """Completions per step written to samples.jsonl."""
    max_bad_steps: int = 3
    """Stop after this many non-finite steps in a row."""
    reward_workers: int = 4
    """Parallel workers for the verifiers (code runs in sandboxed subprocesses)."""
    dist_timeout_min: float = 60.0
    """How long a collective waits for the slowest rank before the job is killed (NCCL and gloo; torch's default is
    10 minutes). Ranks finish long rollouts at different times, and on save steps rank 0 alone writes the whole
    model while the others wait at the next collective."""

    # Evaluation during training (the paper's Figure 2): held-out problems of every domain, not only the trained
    eval_every: int = 0
    """Evaluate every N steps (and at step 0 and the last step), into eval.jsonl; 0: never. Its time is logged
    apart (eval_s in run.json) and left out of the training time and the device-hours."""
    eval_domains: Domains = ("all",)
    """Domains evaluated during training, comma separated; "all": every domain, trained or not."""
    eval_problems: int = 16
    """Held-out problems per domain (the first N of each domain's eval rows, the same at every step)."""
    eval_k: int = 2
    """Samples per problem (avg@k), drawn as analyze.py eval draws them (its temperature and top-p)."""
    eval_data: str = ""
    """Held-out rows: empty takes the eval split of --data embedded; with any other --data, give a row-schema
    file of held-out problems here (a training file is used whole, so it holds no held-out split)."""

    def __post_init__(self):
        unknown = [d for d in self.domains if d not in data.DOMAINS]
        if unknown or not self.domains:
            raise UserError(f"unknown domain(s) {unknown or '(none given)'}; valid: {', '.join(data.DOMAINS)}")
        try:
            data.parse_kinds(self.kinds)
        except ValueError as e:
            raise UserError(str(e)) from None
        if self.resume and self.overwrite:
            raise UserError("--resume continues a run and --overwrite deletes it: give one of them")
        assert self.group_size >= 2, "GRPO needs at least 2 completions per prompt"
        assert self.prompts_per_step >= 1 and self.minibatches >= 1 and self.micro_batch >= 1
        assert 0 <= self.clip_low < 1 and self.clip_high >= 0
        if tuple(self.eval_domains) == ("all",):
            self.eval_domains = data.DOMAINS
        bad = [d for d in self.eval_domains if d not in data.DOMAINS]
        if bad or not self.eval_domains:
            raise UserError(f"--eval-domains: unknown domain(s) {bad or '(none given)'}; valid: all, "
                            f"{', '.join(data.DOMAINS)}")
        if self.eval_every and (self.eval_problems < 1 or self.eval_k < 1):
            raise UserError(f"--eval-problems and --eval-k must be at least 1, got {self.eval_problems}, {self.eval_k}")
        if self.eval_every and self.data != "embedded" and not self.eval_data:
            raise UserError(f"--eval-every with --data {self.data}: give held-out problems with --eval-data FILE")
        missing = [d for d in self.domains if self.teachers and d not in teacher_paths(self.teachers)]
        if missing:
            raise UserError(f"--teachers has no teacher for domain(s) {', '.join(missing)}")


# Memory of the paper presets, Qwen3-4B on 8 x 80 GB, per GPU in training (README "GPU memory" has each phase; GB =
# 1e9 bytes): FSDP2's fp32 weight, gradient and Adam shards, 16 B x 4.02e9 / 8 = 8.0 GB; gathered bf16 weights,
# gradient buffers, Liger's lm_head gradient and CUDA contexts, about 9 GB. Activations: without checkpointing a
# decoder layer keeps about 59k bf16 values per token (120 KB), 36 layers 4.3 MB, so the old micro-batch of
# 8 x 8,448 tokens needed about 290 GB. With checkpointing a token keeps its 36 layer inputs (36 x 2,560 x 2 B =
# 184 KB) plus the layer being recomputed and its gradients (about 180 KB): about 0.38 MB. A cap of 65,536 padded
# tokens is then about 25 GB, the chunked log-prob passes 1.2 GB, Liger's chunk (below) 3.0 GB: about 46 GB in all.
# sglang_mem_fraction 0.7 (issue 22; 0.5 before): during rollout the trainer keeps its fp32 weight and Adam shards,
# 12 B x 4.02e9 / 8 = 6.0 GB (MT-OPD adds four bf16 teacher shards, 4 x 1.0 GB), the weight sync 1.3 GB and SGLang
# its CUDA graphs and contexts, about 4 GB; 0.7 x 80 = 56 GB for SGLang's bf16 weights (8.0) and KV cache (48 GB at
# 147 KB a token: 325,000 tokens, 38 of the 256 full-length 8,448-token sequences a GPU generates, against 25 at
# 0.5). In all 6.0 + 56 + 4 + 1.3 = 67 GB, 71 GB with four teachers, of 80.
# liger_chunk_size 64 = micro_batch (issue 22; Liger's default 1): Liger 0.8.5 makes each chunk's gradient through a
# fresh fp32 (V, H) lm_head gradient, 151,936 x 2,560 x 4 B = 1.56 GB, then its bf16 copy (0.78 GB), so a chunk per
# sequence zero-fills, casts and adds them 256 times a step. One chunk per micro-batch: a handful a step, and the
# chunk's transients are that 2.3 GB plus its fp32 hidden-state gradient, 65,536 x 2,560 x 4 B = 0.67 GB: 3.0 GB.
_PAPER = Config(preset="paper", prompts_per_step=128, group_size=16, max_new_tokens=8192, lr=2e-6, weight_decay=0.1,
                micro_batch=64, micro_batch_tokens=65_536, activation_checkpointing=True, save_every=50, steps=200,
                loss_norm="sequence", grader="paper", sglang_mem_fraction=0.7, liger_chunk_size=64)
PRESETS = {
    "tiny": Config(),
    # The paper's GRPO settings for one expert (200 steps; 128 prompts x 16 rollouts); --model and --data must point
    # at the real checkpoint and blend. max_new_tokens is our choice for a 4B thinking model, not the paper's number.
    "paper": _PAPER,
    # The paper's mixed multi-task run: the same settings for 400 steps. Its 33.2% GPU-hour figure compares this
    # run with the four 200-step experts.
    "paper-mixed": dataclasses.replace(_PAPER, preset="paper-mixed", steps=400),
    # The paper's MT-OPD settings (200 steps, 256 prompts x 4, lr 1e-6, clip 0.2/0.2); add --teachers.
    "paper-opd": dataclasses.replace(_PAPER, preset="paper-opd", prompts_per_step=256, group_size=4, lr=1e-6,
                                     clip_high=0.2),
}


def teacher_paths(spec: str) -> dict[str, str]:
    """"math=out/math,code=out/code" -> {"math": "out/math", "code": "out/code"}."""
    out = {}
    for part in filter(None, spec.split(",")):
        domain, sep, path = part.partition("=")
        if not sep or not path or domain not in data.DOMAINS:
            raise UserError(f"--teachers {part!r}: expected DOMAIN=PATH with DOMAIN in {', '.join(data.DOMAINS)}")
        out[domain] = path
    return out


def run_dir_of(cfg: Config) -> str:
    return os.path.join(cfg.out_dir, cfg.run_name or "-".join(cfg.domains))


def cli(argv: list[str]) -> Config:
    """`--preset NAME` picks the defaults; the remaining flags override them. With --resume, the run's own
    settings (its train_config.json) are the defaults instead, so `--resume` alone continues it as it was."""
    cfg = parse(argv, Config, PRESETS)
    saved = os.path.join(run_dir_of(cfg), "train_config.json")
    if cfg.resume and os.path.exists(saved):
        with open(saved) as f:
            fields = json.load(f)
        fields.update(domains=tuple(fields["domains"]), adam_betas=tuple(fields["adam_betas"]))
        if "eval_domains" in fields:
            fields["eval_domains"] = tuple(fields["eval_domains"])
        cfg = parse(argv, Config, PRESETS, defaults=Config(**fields))
    return cfg


if __name__ == "__main__":   # parse first: --help and a bad flag answer before torch and transformers load
    CFG = cli(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import model as modeling  # noqa: E402
import verifiers.code  # noqa: E402
from verifiers import verify_batch  # noqa: E402


# ----------------------------------------------------------------------------- distributed

def init_distributed(cfg: Config) -> tuple[bool, int, int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE; a plain `python train.py` on CPU is one unsharded process, on a GPU a
    one-process group, so FSDP2's bf16 mixed precision applies there too. Every group waits
    cfg.dist_timeout_min for a collective. Returns (distributed, rank, world, local_rank, device)."""
    import datetime
    distributed = "RANK" in os.environ or torch.cuda.is_available()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # share the cores: else every rank starts one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    timeout = datetime.timedelta(minutes=cfg.dist_timeout_min)
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    elif distributed:
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return distributed, rank, world, local_rank, device


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_max(x: int, device) -> int:
    t = torch.tensor([x], device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def attention_implementation(device: torch.device) -> str:
    """"flash_attention_2" when FlashAttention 2 itself is installed and the device is CUDA, else "sdpa".
    Asked of transformers (tested with 5.19.0): sglang's dependencies install flash-attn-4, whose files live
    under flash_attn/cute/ with no flash_attn/__init__.py, so `flash_attn` is found as a namespace package
    that holds no FA2; transformers checks the distribution's name and version (flash-attn >= 2.3.3) and
    would refuse that attention, then try to fetch a kernel from the Hub."""
    from transformers.utils import is_flash_attn_2_available
    return "flash_attention_2" if device.type == "cuda" and is_flash_attn_2_available() else "sdpa"


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward; only its input is kept in between.
    Tested with transformers 5.19.0, the version sglang pins (requirements.txt): it has
    gradient_checkpointing_enable only (activation_checkpointing_enable came later). Non-reentrant
    checkpointing works with FSDP2's hooks, which run inside each checkpointed layer."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: shard each decoder block, then the root (which holds the embedding, tied to lm_head).
    The root keeps its parameters unsharded after forward, so the loss can use lm_head.weight directly;
    backward reshards them, and frozen_logprobs does for the frozen models."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # HF returns a sliced (view) output with logits_to_keep; we never modify outputs in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    # bf16 compute with fp32 master weights and fp32 gradient reduction on GPU; plain fp32 on CPU.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


# ----------------------------------------------------------------------------- rollout

def sync_weights(model: torch.nn.Module, engine) -> None:
    """Copy the trainer's (possibly sharded) weights into the rollout engine, one tensor at a time.
    HF backend: the engine is an unsharded copy of the model; each DTensor is all-gathered on its own,
    so peak extra memory is one full tensor, and in the engine's dtype (bf16 on GPU: half the bytes of the
    fp32 shards), since each shard is cast before the gather."""
    with torch.no_grad():
        for (name, p), (name_e, p_e) in zip(model.named_parameters(), engine.named_parameters()):
            assert name == name_e, f"engine parameter order differs: {name} vs {name_e}"
            full = p.to(p_e.dtype).full_tensor() if hasattr(p, "full_tensor") else p
            p_e.copy_(full.to(p_e.dtype))


def rollout(policy, engine, tokenizer, rows: list[dict], cfg: Config, seed: int) -> tuple[list[dict], float]:
    """Push the current weights to the engine, then group_size completions per row, prompt-major. Each
    sample: prompt_ids, completion_ids, text, truncated, and rollout_logp (list[float], or None when the
    backend shares the trainer's weights). Returns the samples and the seconds the weight push took."""
    if cfg.rollout == "sglang":   # sync, generate, release: the engine holds no memory when training starts
        import rollout_sglang
        prompt_ids = [tokenizer(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)["input_ids"] for r in rows]
        samples, stats = rollout_sglang.rollout_step(
            policy, engine, prompt_ids, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, stop_ids=modeling.stop_token_ids(tokenizer, policy.generation_config),
            tokenizer=tokenizer)
        return samples, stats["sync_s"]
    t0 = time.time()
    sync_weights(policy, engine)
    t1 = time.time()
    # the small world on the CPU decodes with model.fast_generate (same tokens as HF generate, less overhead)
    samples = modeling.generate_for(engine)(engine, tokenizer, [r["prompt"] for r in rows], n=cfg.group_size,
                                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    for s in samples:
        s.setdefault("rollout_logp", None)
    return samples, t1 - t0


# ----------------------------------------------------------------------------- GRPO math

def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6):
    """(r - mean_group) / (std_group + eps); without the division when scale_std is off (Dr.GRPO)."""
    r = rewards.view(-1, group_size)                        # (P, G)
    adv = r - r.mean(dim=1, keepdim=True)                   # (P, G)
    if scale_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)      # (P, G)
    return adv.reshape(-1)                                  # (P*G,)


LOGP_CHUNK = 1024   # positions per chunk of logits: (1024, 151,936) is 0.6 GB in fp32, and fills a GPU's matmul


def _chunk_logits(h, weight, temperature: float):
    """fp32 logits / temperature of a few positions: (N, H), (V, H) -> (N, V)."""
    logits = (h @ weight.T).float()                         # (N, V)
    return logits.div_(temperature) if temperature != 1.0 else logits


def token_logprobs(hidden, weight, targets, temperature: float = 1.0, chunk: int | None = None):
    """log pi(target) from final hidden states: (B, T, H), (V, H), (B, T) -> (B, T) fp32.
    The logits are made `chunk` positions at a time, so without grad (the reference, teacher, old and TIS
    passes) the peak is two (chunk, V) fp32 tensors, logits and log-softmax, not two (B, T, V) ones: at
    Qwen3's 151,936 tokens that is 1.2 GB instead of 77 GB for 8 x 8,448 positions (bench/logprobs.py).
    With grad, autograd keeps each chunk's log-softmax, as the unchunked formula would. chunk: default
    LOGP_CHUNK."""
    chunk = chunk or LOGP_CHUNK
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1, 1)   # (B*T, H), (B*T, 1)
    out = []
    for i in range(0, h.shape[0], chunk):
        logp_all = torch.log_softmax(_chunk_logits(h[i: i + chunk], weight, temperature), dim=-1)   # (N, V)
        out.append(logp_all.gather(-1, t[i: i + chunk]).squeeze(-1))
        del logp_all   # free before the next chunk is made
    return torch.cat(out).view(targets.shape)


@torch.no_grad()
def token_logprobs_entropy(hidden, weight, targets, temperature: float = 1.0, chunk: int | None = None):
    """token_logprobs and the policy's entropy at each position, (B, T) each, without grad and in chunks
    (the Liger loss never makes full logits, so its entropy is computed here)."""
    chunk = chunk or LOGP_CHUNK
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1, 1)
    logp = torch.empty(t.shape[0], device=hidden.device)
    entropy = torch.empty(t.shape[0], device=hidden.device)
    for i in range(0, h.shape[0], chunk):
        logp_all = torch.log_softmax(_chunk_logits(h[i: i + chunk], weight, temperature), dim=-1)   # (N, V)
        logp[i: i + chunk] = logp_all.gather(-1, t[i: i + chunk]).squeeze(-1)
        entropy[i: i + chunk] = -(logp_all.exp().mul_(logp_all)).sum(-1)
        del logp_all
    return logp.view(targets.shape), entropy.view(targets.shape)


def teacher_advantage(teacher_logps: torch.Tensor, which: torch.Tensor, student_logp: torch.Tensor):
    """MT-OPD per-token advantage: log pi_teacher - log pi_student, each sample under its own domain's
    teacher. teacher_logps (N_teachers, B, T), which (B,) teacher index per sample, student_logp (B, T)
    -> (B, T). Its mean over the student's samples estimates -KL(student || teacher)."""
    own = teacher_logps[which, torch.arange(which.shape[0])]   # (B, T)
    return own - student_logp.detach()                          # (B, T)


def k3_kl(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: e^(ref - logp) - (ref - logp) - 1."""
    d = ref_logp - logp                                     # (B, T)
    return torch.exp(d) - d - 1


def masked_reduce(x, mask, norm: str, max_tokens: int):
    """The numerator of the loss; the caller divides by the batch-wide count that `norm` names
    (tokens for "token", sequences for "sequence" and "constant"), so micro-batches and ranks add up."""
    if norm == "token":
        return (x * mask).sum()
    if norm == "sequence":
        return ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
    return (x * mask).sum() / max_tokens                    # constant (Dr.GRPO)


class _ChunkedLogprobs(torch.autograd.Function):
    """log pi(target) with its gradient, LOGP_CHUNK positions at a time in both directions: forward keeps only
    each position's log-normaliser (N,), and backward makes each chunk's logits again. So the peak is a few
    (chunk, V) fp32 tensors, not the (B, T, V) logits, their fp32 copy, the scaled copy and the log-softmax that
    autograd would keep: at 65,536 positions x 151,936 tokens those are about 40 GB each (issue 22). Also returns
    the entropy at each position (no grad), which the same logits give. Written from the softmax's gradient:
    d logp(y) / d logits = (onehot(y) - softmax) / temperature."""

    @staticmethod
    def forward(ctx, h, weight, t, temperature: float, chunk: int):   # (N, H), (V, H), (N,) -> (N,), (N,)
        logp, log_z, entropy = (torch.empty(t.shape[0], device=h.device) for _ in range(3))
        for i in range(0, h.shape[0], chunk):
            logits = _chunk_logits(h[i: i + chunk], weight, temperature)            # (n, V) fp32
            log_z[i: i + chunk] = torch.logsumexp(logits, dim=-1)
            logits -= log_z[i: i + chunk, None]                                      # now the log-softmax
            logp[i: i + chunk] = logits.gather(-1, t[i: i + chunk, None]).squeeze(-1)
            entropy[i: i + chunk] = -(logits.exp().mul_(logits)).sum(-1)
            del logits
        ctx.save_for_backward(h, weight, t, log_z)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        h, weight, t, log_z = ctx.saved_tensors
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, device=weight.device) if ctx.needs_input_grad[1] else None   # fp32 sum
        for i in range(0, h.shape[0], ctx.chunk):
            g = grad_logp[i: i + ctx.chunk].float()                                  # (n,)
            d = _chunk_logits(h[i: i + ctx.chunk], weight, ctx.temperature)          # (n, V) fp32
            d.sub_(log_z[i: i + ctx.chunk, None]).exp_().mul_(-g[:, None])          # -g * softmax
            d.scatter_add_(-1, t[i: i + ctx.chunk, None], g[:, None])                # + g * onehot(target)
            d.div_(ctx.temperature)                                                  # d loss / d logits
            if grad_h is not None:
                grad_h[i: i + ctx.chunk] = d.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(d.T, h[i: i + ctx.chunk].float())
            del d
        return grad_h, grad_w.to(weight.dtype) if grad_w is not None else None, None, None, None


def logprobs_with_grad(hidden, weight, targets, temperature: float = 1.0, chunk: int | None = None):
    """token_logprobs with a gradient that is made in chunks too (_ChunkedLogprobs), and the entropy (no grad):
    (B, T, H), (V, H), (B, T) -> (B, T), (B, T) fp32."""
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    logp, entropy = _ChunkedLogprobs.apply(h, weight, t, temperature, chunk or LOGP_CHUNK)
    return logp.view(targets.shape), entropy.view(targets.shape)


def policy_loss_torch(hidden, weight, targets, mask, adv, old_logp, cfg: Config,
                      ref_logp=None, is_weight=None):
    """Clipped surrogate (+ optional k3 KL), plain torch. Shapes: hidden (B, T, H), weight (V, H),
    targets/mask (B, T), adv (B,) per sequence or (B, T) per token, old_logp/ref_logp/is_weight (B, T).
    old_logp=None means on-policy: the ratio is exactly 1 but its gradient is not. The log-probs and their
    gradient are made LOGP_CHUNK positions at a time (logprobs_with_grad), never as (B, T, V) logits, and only
    where mask is not 0 (log-probs and entropy are 0 elsewhere).
    Returns (loss numerator, stats numerators: clipped tokens, entropy, kl)."""
    # only the positions the loss counts (completion tokens): prompt and padding positions are skipped, and each
    # row's gradient does not depend on how the batch was padded
    keep = (mask != 0).reshape(-1).nonzero().squeeze(1)                              # (n,)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)                   # (n, H)
    lp, ent = logprobs_with_grad(h, weight, targets.reshape(-1).index_select(0, keep), cfg.temperature)
    logp = torch.zeros(mask.numel(), device=lp.device).index_put((keep,), lp).view(mask.shape)      # (B, T)
    entropy = torch.zeros(mask.numel(), device=lp.device).index_put((keep,), ent).view(mask.shape)
    old_logp = logp.detach() if old_logp is None else old_logp
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv                     # (B, 1) or (B, T)
    ratio = torch.exp(logp - old_logp)                                    # (B, T)
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    per_tok = -torch.min(ratio * adv, clipped * adv)                      # (B, T)
    if is_weight is not None:   # truncated importance sampling for the rollout/trainer mismatch
        per_tok = per_tok * is_weight
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_tok = per_tok + cfg.kl_coef * kl
    with torch.no_grad():
        was_clipped = ((ratio < 1 - cfg.clip_low) & (adv < 0)) | ((ratio > 1 + cfg.clip_high) & (adv > 0))
        stats = {"clip_frac": (was_clipped * mask).sum(), "entropy": (entropy * mask).sum(),
                 "kl": (kl.detach() * mask).sum()}
    return masked_reduce(per_tok, mask, cfg.loss_norm, cfg.max_new_tokens), stats


def policy_loss_liger(hidden, weight, targets, mask, adv, old_logp, cfg: Config,
                      ref_logp=None, is_weight=None, entropy=None):
    """The same loss through Liger's fused linear GRPO loss (chunked: never holds (B, T, V) logits).
    Liger normalises inside; we multiply its normaliser back so both return the same numerator.
    Per-token advantages are not supported by Liger (it takes adv of shape (B,)). Liger reports no entropy:
    `entropy` (B, T) is the caller's, from a pass it made anyway (train_on's TIS pass); None: a chunked pass
    here, without grad."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # tested with liger-kernel 0.8.5
    loss_type = {"token": "bnpo", "sequence": "grpo", "constant": "dr_grpo"}[cfg.loss_norm]
    fn = LigerFusedLinearGRPOLoss(beta=cfg.kl_coef, compiled=hidden.is_cuda, use_ref_model=ref_logp is not None,
                                  epsilon_low=cfg.clip_low, epsilon_high=cfg.clip_high, loss_type=loss_type,
                                  max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
                                  chunk_size=cfg.liger_chunk_size)
    loss, metrics = fn(hidden, weight, targets, mask, adv, ref_per_token_logps=ref_logp,
                       old_per_token_logps=old_logp, vllm_is_ratio=is_weight)
    n_tok = mask.sum().clamp(min=1)
    local_norm = n_tok if cfg.loss_norm == "token" else torch.tensor(float(mask.shape[0]))
    clip = metrics[-1] * n_tok  # Liger reports fractions of the tokens it saw
    kl = metrics[0] * n_tok if ref_logp is not None else torch.zeros(())
    if entropy is None:
        entropy = token_logprobs_entropy(hidden, weight, targets, cfg.temperature)[1]
    return loss * local_norm, {"clip_frac": clip.detach(), "entropy": (entropy * mask).sum(), "kl": kl.detach()}


# ----------------------------------------------------------------------------- batching

def pack(samples: list[dict], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt+completion ids and the loss mask over targets, built from the lengths
    (so the EOS that ends a completion gets its gradient, and padding never does).
    Returns ids (B, L), attn (B, L), targets (B, L-1), mask (B, L-1)."""
    L = max(len(s["prompt_ids"]) + len(s["completion_ids"]) for s in samples)
    ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), L), dtype=torch.long)
    mask = torch.zeros((len(samples), L - 1))
    for i, s in enumerate(samples):
        p, c = len(s["prompt_ids"]), len(s["completion_ids"])
        ids[i, : p + c] = torch.tensor(s["prompt_ids"] + s["completion_ids"])
        attn[i, : p + c] = 1
        mask[i, p - 1 : p - 1 + c] = 1.0   # position t predicts token t+1
    return ids.to(device), attn.to(device), ids[:, 1:].to(device), mask.to(device)


def final_hidden(model, ids, attn):
    """Last hidden states (the final norm's output, taken by a hook on it) and the output projection weight.
    logits_to_keep=1 skips the full logits inside HF; the loss computes them (or Liger chunks them). Neither
    output_hidden_states nor a KV cache: in the passes without grad (reference, teachers, old log-probs) they
    would keep every layer's hidden states and keys/values until the forward returns, 37 x 2,560 x 2 B and
    36 x 2 x 1,024 x 2 B per token for Qwen3-4B, about 22 GB at 65,536 tokens (issue 22); with grad,
    autograd keeps what it needs anyway."""
    out = {}
    hook = model.model.norm.register_forward_hook(lambda module, args, h: out.__setitem__("h", h))
    try:
        model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return out["h"][:, :-1], model.lm_head.weight


def frozen_logprobs(model, ids, attn, targets, temperature: float) -> torch.Tensor:
    """Target log-probs (B, T) of a frozen model (the KL reference, an MT-OPD teacher), without grad.
    Under FSDP2 the root keeps its parameters (the embedding, tied to lm_head, and the final norm) unsharded after
    forward, for the loss to read lm_head.weight, and backward reshards them; a frozen model has no backward, so
    they are resharded here, or every frozen model would hold them whole for the rest of the run."""
    with torch.no_grad():
        logp = token_logprobs(*final_hidden(model, ids, attn), targets, temperature)
    if hasattr(model, "reshard"):   # an FSDP2 module
        model.reshard()
    return logp


def per_token(values: list[float] | None, length: int, offset: int, L: int) -> list[float]:
    row = [0.0] * L
    if values is not None:
        row[offset: offset + length] = values[:length]
    return row


TOTALS = ("loss", "clip_frac", "entropy", "kl", "tokens", "teacher_kl")   # what train_on sums per step


def train_on(model, samples: list[dict], adv: torch.Tensor, cfg: Config, pad_id: int, device,
             denom: float, n_micro: int, ref_model=None, old_logps: list | None = None,
             teachers: dict | None = None) -> dict:
    """Forward/backward over samples in the micro-batches of `micro_batches`, then zero-weight passes up to
    n_micro (every rank runs the same count, since FSDP's collectives must match); gradients accumulate.
    With teachers ({domain: model}) the per-token MT-OPD advantage replaces adv.
    Returns this rank's share of the loss, and stats numerators with the token count they divide by."""
    loss_fn = policy_loss_liger if cfg.liger and not teachers else policy_loss_torch  # Liger: adv per sequence only
    totals = dict.fromkeys(TOTALS, 0.0)
    plan = micro_batches(samples, cfg.micro_batch, cfg.micro_batch_tokens)
    assert len(plan) <= n_micro, f"{len(plan)} micro-batches, but n_micro is {n_micro}"
    for idx in plan + [[]] * (n_micro - len(plan)):
        chunk, weight_scale = [samples[i] for i in idx], 1.0
        if not chunk:  # an empty pass that keeps collectives in step; contributes zero gradient
            chunk, weight_scale = samples[:1] or [_dummy_sample(pad_id)], 0.0
        ids, attn, targets, mask = pack(chunk, pad_id, device)
        a = adv[idx].to(device) if weight_scale else torch.zeros(len(chunk), device=device)
        if cfg.overlong_mask:
            mask = mask * torch.tensor([0.0 if s.get("truncated") else 1.0 for s in chunk], device=device)[:, None]
        old = None
        if old_logps is not None and weight_scale:
            old = torch.stack([torch.nn.functional.pad(old_logps[i], (0, mask.shape[1] - old_logps[i].shape[0]))
                               for i in idx])
        ref_logp = frozen_logprobs(ref_model, ids, attn, targets, cfg.temperature) if ref_model is not None else None
        hidden, weight = final_hidden(model, ids, attn)
        if teachers:
            student = old if old is not None else token_logprobs(hidden.detach(), weight.detach(), targets, cfg.temperature)
            a = teacher_logp_advantage(teachers, chunk, ids, attn, targets, student, cfg, device) * mask
            totals["teacher_kl"] -= float((a * mask).sum()) * weight_scale
        is_w = entropy = None
        if cfg.tis_cap > 0 and chunk[0].get("rollout_logp") is not None:
            # truncated importance weight min(pi_trainer / pi_rollout, cap), from the pre-update log-probs; the
            # same chunked pass gives the entropy that the Liger loss cannot report
            r_logp = torch.tensor([per_token(s["rollout_logp"], len(s["completion_ids"]), len(s["prompt_ids"]) - 1,
                                             mask.shape[1]) for s in chunk], device=device)
            cur = old
            if old is None:
                cur, entropy = token_logprobs_entropy(hidden, weight, targets, cfg.temperature)
            is_w = torch.exp(cur - r_logp).clamp(max=cfg.tis_cap) * mask
        kw = {"entropy": entropy} if loss_fn is policy_loss_liger else {}   # the torch loss has the full logits
        loss, stats = loss_fn(hidden, weight, targets, mask, a, old, cfg, ref_logp=ref_logp, is_weight=is_w, **kw)
        # FSDP averages gradients over ranks; multiplying by world size turns that into the sum the
        # batch-wide denominator expects, so N ranks give the single-process gradient.
        world = dist.get_world_size() if dist.is_initialized() else 1
        (loss * weight_scale * world / denom).backward()
        totals["loss"] += float(loss.detach()) * weight_scale / denom
        totals["tokens"] += float(mask.sum()) * weight_scale
        for k, v in stats.items():
            totals[k] += float(v) * weight_scale
    return totals


def micro_batches(samples: list[dict], max_seqs: int, max_tokens: int = 0) -> list[list[int]]:
    """Indices of the samples in each micro-batch. Without a token cap: runs of max_seqs, in order. With one:
    longest first, each micro-batch taking sequences while its padded size (sequences x its first, longest)
    stays within max_tokens and its count within max_seqs; a sequence longer than the cap goes alone.
    Activation memory follows the padded tokens, so the cap bounds it whatever the lengths; grouping by length
    also cuts the padding."""
    if not max_tokens:
        return [list(range(i, min(i + max_seqs, len(samples)))) for i in range(0, len(samples), max_seqs)]
    length = [len(s["prompt_ids"]) + len(s["completion_ids"]) for s in samples]
    plan = []
    for i in sorted(range(len(samples)), key=lambda i: -length[i]):   # stable: equal lengths keep their order
        if plan and len(plan[-1]) < max_seqs and (len(plan[-1]) + 1) * length[plan[-1][0]] <= max_tokens:
            plan[-1].append(i)
        else:
            plan.append([i])
    return plan


def teacher_logp_advantage(teachers: dict, chunk: list[dict], ids, attn, targets, student_logp, cfg: Config, device):
    """Score a micro-batch with its domains' teachers; (B, T) advantage. Teachers are FSDP-sharded like the
    student, so every rank must run the same teachers: those whose domain any rank has in this micro-batch."""
    names = list(teachers)
    which = torch.tensor([names.index(s.get("domain", names[0])) for s in chunk], device=device)
    present = torch.zeros(len(names), device=device)
    present[which] = 1.0
    if dist.is_initialized():
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
    logps = torch.zeros((len(names),) + tuple(targets.shape), device=device)
    with torch.no_grad():
        for i, name in enumerate(names):
            if present[i]:   # each teacher scores only its own domain's rows (one row when this rank has none)
                rows = (which == i).nonzero().squeeze(1) if (which == i).any() else torch.zeros(1, dtype=torch.long, device=device)
                logps[i, rows] = frozen_logprobs(teachers[name], ids[rows], attn[rows], targets[rows], cfg.temperature)
    return teacher_advantage(logps, which, student_logp)


def _dummy_sample(pad_id: int) -> dict:
    return {"prompt_ids": [pad_id], "completion_ids": [pad_id], "truncated": False, "rollout_logp": None}


def loss_denominator(samples: list[dict], cfg: Config, device) -> float:
    """Batch-wide count the loss numerator is divided by, summed over ranks."""
    if cfg.loss_norm == "token":
        n = sum(len(s["completion_ids"]) for s in samples if not (cfg.overlong_mask and s.get("truncated")))
    else:
        n = len(samples)
    return max(1.0, float(all_sum(torch.tensor([float(n)], device=device)).item()))


def update(policy, optimizer, samples: list[dict], adv: torch.Tensor, cfg: Config, pad_id: int, device,
           ref_model=None, teachers=None) -> tuple[dict, list[float], bool]:
    """cfg.minibatches optimizer steps on one rollout batch. Returns the stats totals, the gradient norm of
    each step, and whether a step was skipped for a non-finite gradient (same decision on every rank)."""
    parts = max(1, cfg.minibatches)
    per_part = math.ceil(len(samples) / parts) if samples else 0
    old_logps = None
    if cfg.minibatches > 1:  # log-probs before any update, for the clip ratio (a collective: every rank)
        old_logps = _logps(policy, samples, cfg, pad_id, device)
    totals, grad_norms, skipped = dict.fromkeys(TOTALS, 0.0), [], False
    for part in range(parts):
        sl = slice(part * per_part, (part + 1) * per_part)
        n_micro = all_max(max(1, len(micro_batches(samples[sl], cfg.micro_batch, cfg.micro_batch_tokens))), device)
        out = train_on(policy, samples[sl], adv[sl], cfg, pad_id, device, loss_denominator(samples[sl], cfg, device),
                       n_micro, ref_model, old_logps[sl] if old_logps is not None else None, teachers)
        for k in totals:
            totals[k] += out[k]
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        if math.isfinite(grad_norms[-1]):   # the norm is global, so every rank decides the same
            optimizer.step()
        skipped |= not math.isfinite(grad_norms[-1])
        optimizer.zero_grad(set_to_none=True)
    return totals, grad_norms, skipped


def _logps(model, samples, cfg: Config, pad_id: int, device) -> list[torch.Tensor]:
    """Per-sample target log-probs (no grad), trimmed of padding: the 'old' policy for minibatch updates.
    In the training passes' micro-batches; every rank runs as many forwards as the rank with the most."""
    plan = micro_batches(samples, cfg.micro_batch, cfg.micro_batch_tokens)
    out = [None] * len(samples)
    with torch.no_grad():
        for idx in plan + [[]] * (all_max(len(plan), device) - len(plan)):
            chunk = [samples[i] for i in idx] or [_dummy_sample(pad_id)]   # an empty pass keeps FSDP in step
            ids, attn, targets, _ = pack(chunk, pad_id, device)
            lp = token_logprobs(*final_hidden(model, ids, attn), targets, cfg.temperature)
            for j, i in enumerate(idx):
                out[i] = lp[j, : len(samples[i]["prompt_ids"]) + len(samples[i]["completion_ids"]) - 1]
    return out


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups as Megatron makes them (the paper trained with it): no weight decay on biases and 1-D
    parameters (norm weights), weight_decay on the rest."""
    params = list(model.named_parameters())
    exempt = [p for n, p in params if p.ndim == 1 or n.endswith(".bias")]
    decay = [p for n, p in params if not (p.ndim == 1 or n.endswith(".bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def step_metrics(samples, srows, results, reward, zero_var, totals: dict, cfg: Config, device,
                 seen: dict | None = None) -> dict:
    """One step's figures, summed over ranks: reward, accuracy and length per domain and overall, the
    zero-variance group fraction, the share of completions the verifier could not grade ("ungraded": no final
    answer in the graded form, a <think> left open, a check that timed out), and the loss stats per trained
    token. prompts/<domain> is the number of the step's prompts from each domain (a mixed run's domain mix,
    step by step); with `seen`
    (the trainer state, so it survives --resume) prompts_total/<domain> adds them up over the run."""
    D = len(cfg.domains)
    per = torch.zeros(D + 1, 5, dtype=torch.float64)   # rows: each domain, then all; columns below
    for s, r, x, rw in zip(samples, srows, results, reward.tolist()):
        row = torch.tensor([1.0, rw, float(x["reward"] >= 1), len(s["completion_ids"]), float(s["truncated"])],
                           dtype=torch.float64)        # n, reward, acc, len, truncated
        per[cfg.domains.index(r["domain"])] += row
        per[D] += row
    extra = [float(zero_var.sum()), float(len(zero_var)), sum(x["error"] is not None for x in results)]
    flat = all_sum(torch.cat([per.flatten(), torch.tensor(extra + [totals[k] for k in TOTALS], dtype=torch.float64)])
                   .to(device)).cpu()
    per, (n_zero, n_groups, n_err, *tot) = flat[: per.numel()].view(D + 1, 5).tolist(), flat[per.numel():].tolist()
    tot = dict(zip(TOTALS, tot))
    out = {}
    for d, (n, rw, acc, length, _) in zip(cfg.domains, per):
        out[f"prompts/{d}"] = int(n) // cfg.group_size   # every prompt is sampled group_size times
        if seen is not None:
            seen[d] = seen.get(d, 0) + out[f"prompts/{d}"]
            out[f"prompts_total/{d}"] = seen[d]
        if n:
            out.update({f"reward/{d}": rw / n, f"acc/{d}": acc / n, f"len/{d}": length / n})
    n, rw, _, length, trunc = per[D]
    out = {"reward": rw / max(n, 1), **out, "truncated": trunc / max(n, 1), "zero_var_frac": n_zero / max(n_groups, 1),
           "ungraded": n_err / max(n, 1), "loss": tot["loss"], "completion_tokens": length}
    if tot["tokens"]:   # per trained token; absent on a step that trained nothing (every group filtered)
        out.update({k: tot[k] / tot["tokens"] for k in ("clip_frac", "entropy", "kl", "teacher_kl")
                    if k != "teacher_kl" or cfg.teachers})
    return out


# ----------------------------------------------------------------------------- evaluation during training

def eval_schedule(steps: int, every: int) -> list[int]:
    """The steps after which the policy is evaluated: 0 (the starting model), every `every`-th, and the last;
    none when every is 0."""
    if every <= 0:
        return []
    return sorted({0, *range(every, steps + 1, every), steps})


def eval_rows(cfg: Config) -> list[dict]:
    """The held-out problems evaluated during training: the first eval_problems rows of each eval domain, the
    same at every step (embedded: the eval split drawn with seed 0, as `analyze.py eval --problem-seed 0`)."""
    rows = data.load(cfg.eval_data or cfg.data, list(cfg.eval_domains), "eval", seed=0)
    out = []
    for d in cfg.eval_domains:
        mine = [r for r in rows if r["domain"] == d][: cfg.eval_problems]
        if not mine:
            raise UserError(f"--eval-data {cfg.eval_data or cfg.data}: no held-out rows of domain {d}")
        out += mine
    return out


def eval_record(step: int, problems: list[dict], seconds: float) -> dict:
    """One line of eval.jsonl: avg@k and the problem count per domain, and every problem's rewards (so that
    report.py can put bootstrap intervals on the curves)."""
    by = {}
    for p in problems:
        by.setdefault(p["domain"], []).append(float(np.mean(p["rewards"])))
    return {"step": step, "eval_s": seconds, "k": min(len(p["rewards"]) for p in problems),
            "avg@k": {d: float(np.mean(v)) for d, v in by.items()}, "n": {d: len(v) for d, v in by.items()},
            "problems": problems}


def evaluate_policy(policy, engine, tokenizer, rows: list[dict], cfg: Config, rank: int, world: int) -> list[dict]:
    """eval_k samples of each held-out row, graded like the training rewards; every rank samples its slice
    rows[rank::world] with the rollout engine and the ranks' results are gathered (a collective: every rank
    calls it). Sampled with analyze.py eval's temperature and top-p, so the curves end where its table starts.
    Returns {"id", "domain", "rewards"} per row, in row order (on every rank)."""
    from analyze import EvalConfig   # its sampling defaults, not a second copy of them
    mine = rows[rank::world] or rows[:1]   # a rank without a row still joins the weight push (then drops it)
    kept = len(rows[rank::world])
    if cfg.rollout == "sglang":
        import rollout_sglang
        prompt_ids = [tokenizer(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)["input_ids"] for r in mine]
        samples, _ = rollout_sglang.rollout_step(
            policy, engine, prompt_ids, n=cfg.eval_k, max_new_tokens=cfg.max_new_tokens,
            temperature=EvalConfig.temperature, top_p=EvalConfig.top_p,
            stop_ids=modeling.stop_token_ids(tokenizer, policy.generation_config), tokenizer=tokenizer)
    else:
        sync_weights(policy, engine)
        samples = modeling.generate(engine, tokenizer, [r["prompt"] for r in mine], n=cfg.eval_k,
                                    max_new_tokens=cfg.max_new_tokens, temperature=EvalConfig.temperature,
                                    top_p=EvalConfig.top_p, seed=cfg.seed * 7919 + rank)   # the same draws at
        # every step (common random numbers): a step-to-step change is the policy's, less the sampling noise
    graded = verify_batch([s["text"] for s in samples], [r for r in mine for _ in range(cfg.eval_k)],
                          think=cfg.think, workers=cfg.reward_workers, grader=cfg.grader)
    k = cfg.eval_k
    local = [(rank + world * i, {"id": r["id"], "domain": r["domain"],
                                 "rewards": [g["reward"] for g in graded[i * k:(i + 1) * k]]})
             for i, r in enumerate(mine[:kept])]
    if dist.is_initialized() and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        local = [x for part in gathered for x in part]
    return [rec for _, rec in sorted(local, key=lambda x: x[0])]


# ----------------------------------------------------------------------------- checkpoints

def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop log lines past the checkpoint a resumed run restarts from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def resume_checkpoint(run_dir: str, device) -> str | None:
    """The checkpoint every rank resumes from: rank 0's latest, broadcast, so all ranks start at the same step.
    Every rank then reads it (the model and trainer_state.pt), so out_dir must be on a filesystem all nodes
    share (README, "On one 8-GPU node"). On node-local disks rank 0 would find step N and the others nothing,
    and the job would hang in the optimizer-state broadcast; here every rank stops with the same error instead.
    Rank 0 alone verifies the checkpoints against their manifests (model.resume_checkpoint skips, with one line
    each, the newest ones that are incomplete or corrupt, and removes them)."""
    if not dist.is_initialized():
        return modeling.resume_checkpoint(run_dir)
    got = [None, None]   # rank 0's checkpoint, or its error: every rank stops with it rather than wait for rank 0
    if dist.get_rank() == 0:
        try:
            got[0] = modeling.resume_checkpoint(run_dir)
        except UserError as e:
            got[1] = str(e)
    dist.broadcast_object_list(got, src=0, device=device if device.type == "cuda" else None)
    ckpt, problem = got
    if problem:
        raise UserError(problem)
    blind = ckpt is not None and not os.path.exists(os.path.join(ckpt, "trainer_state.pt"))
    n_blind = int(all_sum(torch.tensor([float(blind)], device=device)).item())
    if n_blind:
        raise UserError(f"--resume: {n_blind} of {dist.get_world_size()} ranks cannot read {ckpt}, the checkpoint "
                        f"rank 0 resumes from{' (this rank among them)' if blind else ''}: out_dir ({run_dir}) must "
                        "be on a filesystem that every node shares")
    return ckpt


LOCK = "train.lock"


@contextlib.contextmanager
def run_lock(run_dir: str, enabled: bool = True):
    """One writer per run folder: an exclusive flock on run_dir/train.lock, which names the holder's host and pid,
    held from before anything is written until the run ends. The kernel drops the lock when its process dies,
    however it dies, so a lock that can be taken is stale: its file is taken over with a note. flock is atomic,
    so of two runs started at the same instant exactly one gets it; the other (and any later one while it runs)
    stops with one line. A run folder that did not exist and holds nothing afterwards is removed again."""
    if not enabled:   # ranks other than 0: rank 0 holds the lock for the whole run
        yield
        return
    created = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(f"{run_dir} is being written by another run ({owner or 'holder unknown'}, lock file "
                            f"{path}); wait for it to end or stop it") from None
        try:   # the holder may have removed the file between our open and our flock: lock the new file then
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = os.pread(fd, 200, 0).decode(errors="replace").strip()
    if stale:
        print(f"note: taking over the lock {path} left by {stale}, which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        try:
            os.remove(path)   # while still holding it, so no one locks a file that is about to go
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            try:
                os.rmdir(run_dir)   # only when empty: a run that failed before writing anything
            except OSError:
                pass


# ----------------------------------------------------------------------------- main

def main(cfg: Config) -> None:
    """Train, holding the run folder's lock (run_lock) from before anything is written until the end."""
    with run_lock(run_dir_of(cfg), enabled=int(os.environ.get("RANK", 0)) == 0):
        run_training(cfg)


def run_training(cfg: Config) -> None:
    faulthandler.enable()   # a rank that dies in C code (e.g. a collective) still prints its Python stack
    distributed, rank, world, local_rank, device = init_distributed(cfg)
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    if cfg.prompts_per_step % world:
        raise UserError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of {world} processes")
    if cfg.liger is None:
        cfg = dataclasses.replace(cfg, liger=device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None)
    if cfg.liger and device.type != "cuda":
        print0("note: --liger runs on CPU without torch.compile (slow); it is meant for GPUs")

    # --- the run's folder: never clobber a run that is there (every rank sees the same files and decides alike)
    run_name = cfg.run_name or "-".join(cfg.domains)
    run_dir = run_dir_of(cfg)
    there = [n for n in ("train_config.json", "metrics.jsonl", "run.json", "checkpoints")
             if os.path.exists(os.path.join(run_dir, n))]
    if there and not (cfg.resume or cfg.overwrite):
        done = json.load(open(os.path.join(run_dir, "run.json"))).get("steps_done") if "run.json" in there else None
        raise UserError(f"{run_dir} holds a run ({f'{done} steps done' if done is not None else ', '.join(there)}); "
                        "--resume continues it, --overwrite deletes it and starts over, --run-name picks another folder")
    if cfg.overwrite and there and master:   # all but the lock this run holds
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            if name != LOCK:
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if dist.is_initialized():
        dist.barrier()

    # --- data: fails before any model work on a bad path, a bad row or an unknown domain
    try:
        rows = data.load(cfg.data, list(cfg.domains), "train", seed=cfg.seed, kinds=cfg.kinds)
    except (ValueError, FileNotFoundError) as e:   # the loaders' errors name the file, line and field
        raise UserError(str(e) if str(e).startswith(f"--data {cfg.data}") else f"--data {cfg.data}: {e}") from None
    pools = {d: [r for r in rows if r["domain"] == d] for d in cfg.domains}
    empty = [d for d, p in pools.items() if not p]
    if empty:
        raise UserError(f"--data {cfg.data}: no training rows for domain(s) {', '.join(empty)}")
    try:
        weights = data.mix_weights(cfg.mix, cfg.domains)
        held_out = eval_rows(cfg) if cfg.eval_every else []   # Figure 2's problems, checked before any model work
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None

    # --- model: resume from the last checkpoint or start from cfg.model
    ckpt = resume_checkpoint(run_dir, device) if cfg.resume else None
    if cfg.resume and ckpt is None:
        print0(f"--resume: no checkpoint in {run_dir}, starting fresh")
    if master and ckpt and modeling.top_level_checkpoint(run_dir) != os.path.basename(ckpt):
        modeling.point_top_level(run_dir, ckpt)   # a save that stopped between its checkpoint and the top level
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location="cpu", weights_only=False) \
        if ckpt else {"step": 0, "elapsed_s": 0.0, "device_s": 0.0}
    tokenizer = modeling.load_tokenizer(ckpt or cfg.model)
    torch.manual_seed(cfg.seed)
    attn = None
    if device.type == "cuda":
        attn = attention_implementation(device)
        if cfg.liger:   # fused RMSNorm, SwiGLU and RoPE kernels, patched into the HF Qwen3 classes
            from liger_kernel.transformers import apply_liger_kernel_to_qwen3
            apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    policy = modeling.load_model(ckpt or cfg.model, attn_implementation=attn)
    template = copy.deepcopy(policy) if master else None   # unsharded CPU copy used to write HF checkpoints
    if cfg.rollout == "sglang":   # before the trainer takes the GPU: SGLang sizes its KV cache from free memory
        if device.type != "cuda":
            raise UserError("--rollout sglang needs CUDA; use --rollout hf")
        import rollout_sglang
        engine = rollout_sglang.make_engine(policy, local_rank=local_rank, mem_fraction=cfg.sglang_mem_fraction,
                                            seed=cfg.seed + rank)
    else:   # HF backend: an unsharded copy of the weights, bf16 on GPU
        engine = copy.deepcopy(policy).to(device, torch.bfloat16 if device.type == "cuda" else None).eval()
    # the KL reference (always the starting model, also after a resume) and the MT-OPD teachers: frozen, bf16 on
    # a GPU, sharded like the student before they are moved (model.load_frozen)
    ref_model = modeling.load_frozen(cfg.model, device, shard if distributed else None) if cfg.kl_coef > 0 else None
    teachers = {d: modeling.load_frozen(p, device, shard if distributed else None)
                for d, p in teacher_paths(cfg.teachers).items()}
    policy.to(device).train()
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(policy)
    if distributed:
        policy = shard(policy, device)
    optimizer = torch.optim.AdamW(param_groups(policy, cfg.weight_decay), lr=cfg.lr, betas=cfg.adam_betas)
    if ckpt:
        modeling.load_optimizer(policy, optimizer,
                                os.path.join(ckpt, "trainer_state.pt") if master or not distributed else None)
    start = state["step"]

    # --- outputs
    tracker = None
    if master:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "train_config.json.tmp"), "w") as f:   # what a later --resume continues with
            json.dump({**asdict(cfg), "resume": False, "overwrite": False}, f, indent=1)
        os.replace(os.path.join(run_dir, "train_config.json.tmp"), os.path.join(run_dir, "train_config.json"))
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
            if ckpt:
                truncate_jsonl(os.path.join(run_dir, name), start)
            elif os.path.exists(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        print0(json.dumps({"config": asdict(cfg), "world_size": world, "device": device.type}))
        if "code" in cfg.domains:
            print0(verifiers.code.sandbox_status())
        if cfg.tracker == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            tracker = SummaryWriter(os.path.join(run_dir, "tb"))
        elif cfg.tracker == "wandb":
            import wandb
            tracker = wandb.init(project="m2rl", name=run_name, config=asdict(cfg))
    if cfg.steps == 0 or start == 0:
        # step 0 is the starting model: the common base that merge.py and analyze.py compare against
        modeling.save_checkpoint(run_dir, 0, policy, optimizer, tokenizer, template, state, rank, cfg.keep_checkpoints)
    if cfg.steps == 0:
        return _finish(run_dir, cfg, state, world, device, master, time.time())

    schedule = set(eval_schedule(cfg.steps, cfg.eval_every))

    def evaluate_now(step: int) -> None:   # eval.jsonl; its seconds go to state["eval_s"], not elapsed_s
        t = time.time()
        problems = evaluate_policy(policy, engine, tokenizer, held_out, cfg, rank, world)
        seconds = time.time() - t
        state["eval_s"] = state.get("eval_s", 0.0) + seconds
        if master:
            with open(os.path.join(run_dir, "eval.jsonl"), "a") as f:
                f.write(json.dumps(eval_record(step, problems, seconds)) + "\n")

    if start == 0 and 0 in schedule:
        evaluate_now(0)
    from tqdm import tqdm
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not master, desc=run_name)
    t_run, bad_steps = time.time(), 0
    for step in bar:
        t0 = time.time()
        # --- rollout: every rank takes its slice of the step's prompts; a prompt's group stays on one rank
        batch = data.batch_for_step(pools, weights, step, cfg.prompts_per_step, cfg.seed)[rank::world]
        samples, sync_s = rollout(policy, engine, tokenizer, batch, cfg, seed=cfg.seed * 1_000_003 + step * 1009 + rank)
        t2 = time.time()
        t1 = t0 + sync_s

        # --- reward: binary verifier score; the only shaping is the optional overlong penalty
        srows = [r for r in batch for _ in range(cfg.group_size)]
        for s, r in zip(samples, srows):
            s["domain"] = r["domain"]   # picks the MT-OPD teacher
        results = verify_batch([s["text"] for s in samples], srows, think=cfg.think, workers=cfg.reward_workers,
                               grader=cfg.grader)
        score = torch.tensor([x["reward"] for x in results])
        truncated = torch.tensor([float(s["truncated"]) for s in samples])
        reward = score - cfg.overlong_penalty * truncated
        adv = group_advantages(reward, cfg.group_size, cfg.scale_std)
        t3 = time.time()

        # --- loss and update
        zero_var = reward.view(-1, cfg.group_size).std(dim=1) == 0          # (P,)
        keep = ~zero_var.repeat_interleave(cfg.group_size) if cfg.filter_zero_var and not teachers \
            else torch.ones(len(samples), dtype=torch.bool)
        totals, grad_norms, skipped = update(policy, optimizer, [s for s, k in zip(samples, keep) if k], adv[keep],
                                             cfg, tokenizer.pad_token_id, device, ref_model, teachers)
        bad_steps = bad_steps + 1 if skipped else 0
        t4 = time.time()

        # --- metrics, summed over ranks
        state.update(step=step + 1, elapsed_s=state["elapsed_s"] + (t4 - t0),
                     device_s=state["device_s"] + (t4 - t0) * world)
        metrics = {"step": step + 1, "time": round(state["elapsed_s"], 3),
                   **step_metrics(samples, srows, results, reward, zero_var, totals, cfg, device,
                                  state.setdefault("prompts_seen", {})),
                   "grad_norm": float(np.mean(grad_norms)), "skipped": skipped,
                   "time/sync": t1 - t0, "time/rollout": t2 - t1, "time/reward": t3 - t2, "time/train": t4 - t3}
        metrics["tokens_per_s"] = metrics.pop("completion_tokens") / max(t4 - t0, 1e-9)
        if master:
            with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
            with open(os.path.join(run_dir, "samples.jsonl"), "a") as f:
                for s, r, x in list(zip(samples, srows, results))[: cfg.log_samples]:
                    f.write(json.dumps({"step": step + 1, "domain": r["domain"], "id": r["id"],
                                        "prompt": r["prompt"][-1]["content"], "completion": s["text"],
                                        "reward": x["reward"], "error": x["error"]}) + "\n")
            if tracker is not None:
                if cfg.tracker == "wandb":
                    tracker.log(metrics, step=step + 1)
                else:
                    for k, v in metrics.items():
                        tracker.add_scalar(k, float(v), step + 1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", **{d: f"{metrics.get(f'reward/{d}', 0):.2f}" for d in cfg.domains})
        if bad_steps >= cfg.max_bad_steps:
            raise SystemExit(f"step {step + 1}: {bad_steps} steps in a row had a non-finite loss or gradient; "
                             f"stopping (lower --lr, check the data, or resume from {modeling.latest_checkpoint(run_dir)})")
        if step + 1 in schedule:
            evaluate_now(step + 1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            modeling.save_checkpoint(run_dir, step + 1, policy, optimizer, tokenizer, template, state, rank,
                            cfg.keep_checkpoints)
    if cfg.rollout == "sglang":
        engine.shutdown()
    _finish(run_dir, cfg, state, world, device, master, t_run)


def _finish(run_dir, cfg, state, world, device, master, t_run):
    """run.json: the cost of this run, so mixed vs separate+merge can be compared from the runs."""
    if master:
        info = {"config": asdict(cfg), "steps_done": state["step"], "wall_s": state["elapsed_s"],
                "world_size": world, "device": device.type,
                "device_hours": state["device_s"] / 3600, "eval_s": state.get("eval_s", 0.0),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        with open(os.path.join(run_dir, "run.json.tmp"), "w") as f:
            json.dump(info, f, indent=1)
        os.replace(os.path.join(run_dir, "run.json.tmp"), os.path.join(run_dir, "run.json"))
        print(f"done: {run_dir} ({state['step']} steps, {state['elapsed_s']:.1f} s)")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main, CFG, "train.py")
