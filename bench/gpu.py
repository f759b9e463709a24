"""GPU benchmark of one GRPO step: rollout (SGLang colocated, or HF generate), weight sync, training, MFU.

    python bench/gpu.py --help                                       # works anywhere; a run needs CUDA
    python bench/gpu.py --rollout sglang --model qwen3-0.6b          # one GPU (needs requirements-gpu.txt)
    python bench/gpu.py --rollout hf --model qwen3-1.7b --no-liger   # the fallback: no SGLang, no Liger
    torchrun --nproc_per_node 8 bench/gpu.py --rollout sglang --model qwen3-1.7b --out bench.json

The model is a random-init Qwen3 built from the config dimensions written below (nothing is downloaded);
prompts are random token ids, prompt_len long; every GPU runs its own `prompts` x `group_size` requests.
One warm-up step, then `steps` measured steps, each: sync, generate, (SGLang: release), train, exactly as
train.py does them (rollout_sglang.sync_weights / generate / release; train.sync_weights + HF generate;
train.train_on with random advantages, grad clip, AdamW). Every phase ends on a barrier, so its time is
the slowest GPU's. Printed (and written as JSON with --out):
  rollout tok/s    completion tokens of all GPUs / generate seconds. For SGLang, also the same engine
                   standalone (before the trainer exists, all its memory resumed) and the ratio (goal >= 0.9).
  train tok/s      prompt + completion tokens trained on / train seconds.
  MFU              training FLOPs / (train seconds x GPUs x --peak-tflops). FLOPs per sequence of L tokens:
                   6 x N x L (N: parameters used in matmuls, lm_head included, embedding lookup not)
                   + 6 x layers x heads x head_dim x L x (L + 1) (causal attention, forward and backward).
                   Goal >= 40% of H100 bf16 dense peak (989 TFLOPs).
  sync s/B params  weight-sync seconds per billion parameters (goal <= 0.5). SGLang: resume, bucketed
                   push, flush, resume KV. HF: train.sync_weights into the bf16 copy.
  per phase        mean seconds; the trainer's peak allocated GiB (torch.cuda.max_memory_allocated) and
                   the device's used GiB at the phase's end (total - free: includes the SGLang engine,
                   which lives in its own process).
"""

import contextlib
import copy
import json
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.distributed as dist
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Qwen3 dimensions from the released config.json files (all tie their embeddings at these sizes).
QWEN3 = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128),
}
QWEN3_COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    bos_token_id=None, eos_token_id=151645, pad_token_id=151643)


@dataclass
class Config:
    """Throughput of one GRPO step on GPUs: rollout, weight sync, training and MFU."""

    model: Literal["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "tiny"] = "qwen3-0.6b"
    """Random-init model: a Qwen3 size, or model.py's tiny one (for checking the plumbing)."""
    rollout: Literal["sglang", "hf"] = "sglang"
    """Rollout backend: SGLang colocated (rollout_sglang.py) or HF generate on a bf16 copy (no SGLang)."""
    prompts: int = 32
    """Prompts per GPU per step."""
    group_size: int = 8
    """Completions per prompt."""
    prompt_len: int = 256
    """Tokens per prompt."""
    max_new_tokens: int = 512
    """Longest completion (random weights rarely emit eos, so most run to this length)."""
    steps: int = 3
    """Measured steps, after one warm-up step."""
    micro_batch: int = 8
    """Sequences per forward/backward pass."""
    mem_fraction: float = 0.4
    """SGLang's share of each GPU's memory (its weights and KV cache), mem_fraction_static."""
    bucket_mb: int = 512
    """Weight-sync bucket size in MiB (SGLang)."""
    liger: bool = True
    """Liger kernels: Qwen3 RMSNorm/SwiGLU/RoPE and the fused linear GRPO loss (needs liger-kernel)."""
    attn: Literal["auto", "flash_attention_2", "sdpa"] = "auto"
    """Trainer attention: auto is flash_attention_2 when FlashAttention 2 is installed (not sglang's
    flash-attn-4; train.attention_implementation), else sdpa."""
    grad_ckpt: bool = False
    """Activation checkpointing in the trainer."""
    peak_tflops: float = 989.0
    """Dense bf16 peak of one GPU for MFU (H100 SXM: 989)."""
    seed: int = 0
    """Seeds the weights and the prompts."""
    out: str = ""
    """Also write the figures to this JSON file."""


# ----------------------------------------------------------------------------- model and figures

def build_model(name: str, attn: str, seed: int):
    """Random-init Qwen3 in fp32 (the trainer's master weights), built on the CPU from its dimensions."""
    import model as modeling
    from transformers import Qwen3Config, Qwen3ForCausalLM
    if name == "tiny":
        return modeling.load_model("tiny", attn_implementation=attn, seed=seed)
    config = Qwen3Config(**QWEN3[name], **QWEN3_COMMON)
    config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(config)


def matmul_params(config) -> int:
    """Parameters each token multiplies by: every linear layer of the blocks plus lm_head."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    return config.num_hidden_layers * per_layer + config.vocab_size * h


def train_flops(config, lengths: list[int]) -> float:
    """Forward + backward FLOPs of training on sequences of these lengths (see the module docstring)."""
    n = matmul_params(config)
    attn = config.num_hidden_layers * config.num_attention_heads * config.head_dim
    return float(sum(6 * n * L + 6 * attn * L * (L + 1) for L in lengths))


# ----------------------------------------------------------------------------- phases

class Phases:
    """Seconds, trainer peak memory and device memory in use, per phase and step."""

    def __init__(self, device):
        self.device, self.rows = device, []

    @contextlib.contextmanager
    def __call__(self, name: str, step: int):
        cuda = self.device.type == "cuda"
        _barrier()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        _barrier()
        row = {"phase": name, "step": step, "s": time.perf_counter() - t0}
        if cuda:
            free, total = torch.cuda.mem_get_info(self.device)
            row.update(trainer_peak_gib=torch.cuda.max_memory_allocated(self.device) / 2**30,
                       device_used_gib=(total - free) / 2**30)
        self.rows.append(row)

    def measured(self, name: str) -> list[dict]:
        return [r for r in self.rows if r["phase"] == name and r["step"] > 0]

    def seconds(self, name: str) -> float:
        return sum(r["s"] for r in self.measured(name))


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def all_sum(x: float, device) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return float(t.item())


# ----------------------------------------------------------------------------- rollout backends

@torch.no_grad()
def hf_generate(engine, prompt_ids: list[list[int]], *, n: int, max_new_tokens: int, eos: int, pad: int) -> list[dict]:
    """HF sampling at temperature 1 (no top-k/top-p) from equal-length prompts; train.py's sample dicts."""
    from transformers import GenerationConfig
    device = next(engine.parameters()).device
    rows = [p for p in prompt_ids for _ in range(n)]
    ids = torch.tensor(rows, device=device)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    out = engine.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    samples = []
    for p, row in zip(rows, out[:, ids.shape[1]:].tolist()):
        stop = row.index(eos) if eos in row else None
        samples.append({"prompt_ids": p, "completion_ids": row if stop is None else row[: stop + 1],
                        "truncated": stop is None, "rollout_logp": None, "text": ""})
    return samples


def standalone_rollout(engine, prompts, cfg: Config, eos: int) -> tuple[float, float]:
    """The same SGLang engine alone on the GPU: all memory resumed, no trainer. (tokens, seconds)."""
    import rollout_sglang as rs
    engine.resume_memory_occupation(tags=list(rs.MEMORY_TAGS))
    kw = dict(n=cfg.group_size, max_new_tokens=cfg.max_new_tokens, temperature=1.0, stop_ids=[eos])
    rs.generate(engine, prompts[:2], **{**kw, "max_new_tokens": 8})   # warm-up
    _barrier()
    t0 = time.perf_counter()
    samples = rs.generate(engine, prompts, **kw)
    _barrier()
    seconds = time.perf_counter() - t0
    engine.release_memory_occupation(tags=list(rs.MEMORY_TAGS))
    return sum(len(s["completion_ids"]) for s in samples), seconds


# ----------------------------------------------------------------------------- main

def main(cfg: Config) -> dict:
    import rollout_sglang as rs
    import train

    # --- distributed: torchrun's variables, or a one-process group so FSDP2's bf16 policy applies alike
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    print0 = print if rank == 0 else (lambda *a, **k: None)

    # --- model: Liger patches the HF Qwen3 classes, so it goes first
    if cfg.liger:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen3
        except ImportError as e:
            raise SystemExit(f"--liger needs liger-kernel (requirements-gpu.txt), or pass --no-liger ({e})")
        apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    attn = cfg.attn if cfg.attn != "auto" else train.attention_implementation(device)
    policy = build_model(cfg.model, attn, cfg.seed)
    config = policy.config
    n_params = sum(p.numel() for p in policy.parameters())
    eos, pad = config.eos_token_id, config.pad_token_id
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    # ordinary tokens only: ids 0-2 are the tiny model's specials, 151643 and up Qwen3's
    hi = min(config.vocab_size, QWEN3_COMMON["pad_token_id"])
    prompts = torch.randint(3, hi, (cfg.prompts, cfg.prompt_len), generator=g).tolist()

    # --- rollout engine: SGLang is created (and measured alone) before the trainer takes the GPU
    standalone = None
    if cfg.rollout == "sglang":
        engine = rs.make_engine(policy, local_rank=local_rank, mem_fraction=cfg.mem_fraction, seed=cfg.seed + rank)
        tokens, seconds = standalone_rollout(engine, prompts, cfg, eos)
        standalone = all_sum(tokens, device) / seconds
    else:
        engine = copy.deepcopy(policy).to(device).eval()
        if device.type == "cuda":
            engine.to(torch.bfloat16)
    policy.to(device).train()
    if cfg.grad_ckpt:
        train.enable_activation_checkpointing(policy)
    policy = train.shard(policy, device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    tcfg = train.Config(domains=("math",), group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                        micro_batch=cfg.micro_batch, liger=cfg.liger, temperature=1.0)

    # --- steps
    phase = Phases(device)
    mem = torch.cuda.mem_get_info if device.type == "cuda" else None
    sent_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32   # the engine's dtype
    gen_tokens = train_tokens = flops = 0.0
    released = []
    for step in range(cfg.steps + 1):   # step 0 is the warm-up
        if cfg.rollout == "sglang":
            with phase("sync", step):
                stats = rs.sync_weights(policy, engine, bucket_bytes=cfg.bucket_mb << 20, dtype=sent_dtype,
                                        mem_get_info=mem)
            with phase("generate", step):
                samples = rs.generate(engine, prompts, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                                      temperature=1.0, stop_ids=[eos])
            with phase("release", step):
                released.append(rs.release(engine, expected_bytes=stats["engine_bytes"], mem_get_info=mem))
        else:
            with phase("sync", step):
                train.sync_weights(policy, engine)
            with phase("generate", step):
                samples = hf_generate(engine, prompts, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                                      eos=eos, pad=pad)
        with phase("train", step):
            adv = torch.randn(len(samples), generator=g)   # the cost does not depend on the values
            denom = train.loss_denominator(samples, tcfg, device)
            n_micro = train.all_max(math.ceil(len(samples) / cfg.micro_batch), device)
            train.train_on(policy, samples, adv, tcfg, pad, device, denom, n_micro)
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step > 0:
            lengths = [len(s["prompt_ids"]) + len(s["completion_ids"]) for s in samples]
            gen_tokens += all_sum(sum(len(s["completion_ids"]) for s in samples), device)
            train_tokens += all_sum(sum(lengths), device)
            flops += all_sum(train_flops(config, lengths), device)
        print0(f"step {step}{' (warm-up)' if step == 0 else ''}: " +
               ", ".join(f"{r['phase']} {r['s']:.2f} s" for r in phase.rows if r["step"] == step))

    # --- figures
    rollout_tps = gen_tokens / phase.seconds("generate")
    sync_s = phase.seconds("sync") / cfg.steps
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "gpus": world,
        "config": asdict(cfg), "attn": attn, "params_b": n_params / 1e9,
        "sglang": rs.SGLANG_VERSION if cfg.rollout == "sglang" else None,
        "rollout_tok_s": rollout_tps, "standalone_rollout_tok_s": standalone,
        "rollout_vs_standalone": rollout_tps / standalone if standalone else None,
        "train_tok_s": train_tokens / phase.seconds("train"),
        "mfu": flops / (phase.seconds("train") * world * cfg.peak_tflops * 1e12),
        "sync_s": sync_s, "sync_s_per_b_params": sync_s / (n_params / 1e9),
        "release_freed_gib": [r["freed_bytes"] / 2**30 for r in released[1:] if r["freed_bytes"] is not None],
        "phases": {name: {"s": sum(r["s"] for r in rows) / len(rows),
                          **{k: max(r[k] for r in rows) for k in ("trainer_peak_gib", "device_used_gib") if k in rows[0]}}
                   for name in ("sync", "generate", "release", "train") if (rows := phase.measured(name))},
    }
    print0(report(result))
    if rank == 0 and cfg.out:
        with open(cfg.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(cfg.out + ".tmp", cfg.out)
    if cfg.rollout == "sglang":
        engine.shutdown()
    dist.destroy_process_group()
    return result


def report(r: dict) -> str:
    c = r["config"]
    lines = [f"{r['device']} x{r['gpus']}, {c['model']} ({r['params_b']:.2f} B params), rollout {c['rollout']}"
             f"{' ' + r['sglang'] if r['sglang'] else ''}, attn {r['attn']}, liger {c['liger']}, "
             f"{c['prompts']} prompts x {c['group_size']} per GPU, {c['prompt_len']} + {c['max_new_tokens']} tokens"]
    ratio = f"  standalone {r['standalone_rollout_tok_s']:,.0f} tok/s, ratio {r['rollout_vs_standalone']:.2f} (goal >= 0.90)" \
        if r["standalone_rollout_tok_s"] else ""
    lines.append(f"rollout   {r['rollout_tok_s']:,.0f} tok/s{ratio}")
    lines.append(f"train     {r['train_tok_s']:,.0f} tok/s, MFU {100 * r['mfu']:.1f}% of {c['peak_tflops']:.0f} TFLOPs (goal >= 40%)")
    lines.append(f"sync      {r['sync_s']:.3f} s, {r['sync_s_per_b_params']:.3f} s per B params (goal <= 0.5)")
    if r["release_freed_gib"]:
        lines.append(f"release   freed {min(r['release_freed_gib']):.2f}-{max(r['release_freed_gib']):.2f} GiB per step")
    lines.append(f"{'phase':<10}{'mean s':>9}{'trainer peak GiB':>19}{'device used GiB':>18}")
    for name, p in r["phases"].items():
        lines.append(f"{name:<10}{p['s']:>9.3f}{p.get('trainer_peak_gib', float('nan')):>19.2f}"
                     f"{p.get('device_used_gib', float('nan')):>18.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    cfg = tyro.cli(Config, console_outputs=int(os.environ.get("RANK", 0)) == 0)
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py measures GPU throughput and needs CUDA, which this machine does not have "
                         "(torch " + torch.__version__ + "). Run it on a GPU node; see its docstring.")
    main(cfg)
