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
                   standalone (before the trainer is sharded and has gradients or optimizer state, after the
                   policy's weights were pushed into it) and the ratio (goal >= 0.9).
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
import shutil
import socket
import subprocess
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
    preflight: bool = False
    """Instead of the benchmark, check in a few minutes what a first real run depends on (see `preflight`), one
    line each, on the shipped tiny model; exit 1 on the first failure, which names what to fix."""


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


def standalone_rollout(policy, engine, prompts, cfg: Config, eos: int) -> tuple[float, float]:
    """The same SGLang engine before the trainer is built (the policy on the GPU unsharded, no gradients or
    optimizer state), generating from the policy's weights, pushed as in training: the engine was created with
    dummy weights and released, and released memory comes back with undefined contents. (tokens, seconds)."""
    import rollout_sglang as rs
    rs.sync_weights(policy, engine, bucket_bytes=cfg.bucket_mb << 20, dtype=torch.bfloat16,
                    mem_get_info=torch.cuda.mem_get_info)
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
    # A first collective builds the NCCL communicator now, before make_engine: SGLang's engine changes NCCL's
    # environment variables in this process, and train.py's run-folder barrier comes before its engine too.
    _barrier()
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
        policy.to(device)
        tokens, seconds = standalone_rollout(policy, engine, prompts, cfg, eos)
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


# ----------------------------------------------------------------------------- preflight

# The engine's log-probs of its own completion against the trainer's, both bf16 with different kernels (SGLang's
# attention and sampler against HF sdpa/FA2 under FSDP2): per token, in nats. A wrong or missing weight push gives
# differences of whole nats; bf16 rounding gives hundredths.
LOGP_MEAN_TOL, LOGP_MAX_TOL = 0.05, 0.5
LOSS_RTOL = 0.01   # Liger's fused loss against the plain-torch one: the same bf16 logits, summed in other orders


def cuda_compat(driver_cuda: int, torch_cuda: str | None) -> tuple[bool, str]:
    """Whether the driver runs the CUDA torch was built for. driver_cuda: the newest CUDA the driver supports,
    as cudaDriverGetVersion gives it (13000 = 13.0); torch_cuda: torch.version.cuda ("13.0"). CUDA's minor
    version compatibility lets a driver run any toolkit of its own major version, so the majors decide (sglang
    0.5.23's torch 2.14.1 is a CUDA 13 build: a 13.x driver, NVIDIA 580 or newer)."""
    if torch_cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    major, minor = divmod(driver_cuda, 1000)
    have, need = f"{major}.{minor // 10}", int(torch_cuda.split(".")[0])
    ok = major >= need
    return ok, f"driver supports CUDA {have}, torch {torch.__version__} is built for CUDA {torch_cuda}" + \
        ("" if ok else f": needs a driver for CUDA {need}.x" + (" (NVIDIA 580 or newer)" if need == 13 else ""))


def logprob_agreement(engine: list[float], trainer: list[float], mean_tol: float = LOGP_MEAN_TOL,
                      max_tol: float = LOGP_MAX_TOL) -> tuple[bool, str]:
    """Per-token |engine - trainer| log-probs of the same tokens: the mean within mean_tol and the largest within
    max_tol (nats)."""
    if len(engine) != len(trainer) or not engine:
        return False, f"{len(engine)} engine log-probs against {len(trainer)} of the trainer"
    diff = [abs(a - b) for a, b in zip(engine, trainer)]
    mean, worst = sum(diff) / len(diff), max(diff)
    ok = math.isfinite(mean) and mean <= mean_tol and worst <= max_tol
    return ok, (f"{len(diff)} tokens, mean |engine - trainer| {mean:.4f} nats (tolerance {mean_tol}), "
                f"largest {worst:.4f} (tolerance {max_tol})")


def loss_agreement(liger: float, plain: float, rtol: float = LOSS_RTOL) -> tuple[bool, str]:
    ok = math.isfinite(liger) and math.isfinite(plain) and abs(liger - plain) <= rtol * max(abs(plain), 1e-6)
    return ok, f"loss Liger {liger:.6f}, plain torch {plain:.6f} (relative tolerance {rtol})"


def run_checks(checks: list[tuple], agree=lambda ok: ok, emit=print) -> list[dict]:
    """checks: (name, fn, fix, needs) in order. fn() returns (ok, detail); an exception is a failure whose
    detail is the exception. `agree(ok)` makes the verdict the same on every rank (a check passes only where it
    passed on all); a check is skipped when one it needs did not pass. Each result is emitted as one line."""
    results, passed = [], set()
    for name, fn, fix, needs in checks:
        missing = [n for n in needs if n not in passed]
        if missing:
            r = {"name": name, "status": "SKIP", "detail": f"needs {', '.join(missing)}", "fix": ""}
        else:
            try:
                ok, detail = fn()
            except Exception as e:   # noqa: BLE001  a check that breaks is a failed check, with its reason
                ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ok = agree(bool(ok))
            r = {"name": name, "status": "PASS" if ok else "FAIL", "detail": detail, "fix": "" if ok else fix}
            if ok:
                passed.add(name)
        results.append(r)
        emit(report_line(r))
    return results


def report_line(r: dict) -> str:
    """`PASS  nccl: ...`, `FAIL  sglang engine: ... -> fix: ...`, `SKIP  weights and log-probs: needs ...`."""
    return f"{r['status']}  {r['name']}: {r['detail']}" + (f" -> fix: {r['fix']}" if r["fix"] else "")


def summary(results: list[dict]) -> tuple[str, int]:
    """The last line and the exit status: 0 when every check passed, else 1, naming the first failure."""
    failed = [r for r in results if r["status"] == "FAIL"]
    n_pass = sum(r["status"] == "PASS" for r in results)
    if not failed:
        return f"preflight: all {n_pass} checks passed", 0
    return (f"preflight: {n_pass} of {len(results)} checks passed; first failure: {failed[0]['name']} -> fix: "
            f"{failed[0]['fix']}"), 1


def preflight(cfg: Config) -> int:
    """What a first real run depends on, on every rank, one line each (rank 0 prints; a check passes where it
    passed on all ranks): the driver against torch's CUDA; an NCCL all-reduce; one SGLang engine per rank on the
    shipped tiny model; the trainer's weights pushed into it and its log-probs of its own completion against the
    trainer's (LOGP_MEAN_TOL, LOGP_MAX_TOL); release of its memory, the memory freed printed; one FSDP2 step
    with Liger's loss and the plain-torch one equal (LOSS_RTOL); activation checkpointing recomputing each
    decoder layer in backward. Returns the exit status."""
    if not torch.cuda.is_available():
        print(f"FAIL  cuda: torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda}); "
              "run the preflight on a GPU node")
        return 1
    import model as modeling
    import rollout_sglang as rs
    import train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}")
    emit = print if rank == 0 else (lambda *a, **k: None)
    st = {}   # what the checks hand on to each other

    def agree(ok: bool) -> bool:
        if not dist.is_initialized():
            return ok
        t = torch.tensor([float(ok)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def check_cuda():
        torch.cuda.set_device(device)
        torch.ones(1, device=device).add_(1).item()   # the first CUDA call: where an old driver fails
        import ctypes
        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))   # the newest CUDA the driver runs
        ok, detail = cuda_compat(version.value, torch.version.cuda)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                              str(local_rank)], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
        driver = smi.stdout.strip() if smi is not None and smi.returncode == 0 else "unknown"
        return ok, f"{torch.cuda.get_device_name(device)}, NVIDIA driver {driver}, {detail}"

    def check_nccl():
        if "RANK" in os.environ:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
        t = torch.full((1,), float(rank + 1), device=device)
        t0 = time.perf_counter()
        dist.all_reduce(t)
        torch.cuda.synchronize(device)
        want = world * (world + 1) / 2
        return t.item() == want, (f"all-reduce over {world} ranks gave {t.item():g} (expected {want:g}) in "
                                  f"{1e3 * (time.perf_counter() - t0):.1f} ms, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")

    def check_engine():
        import sglang
        if sglang.__version__ != rs.SGLANG_VERSION:
            return False, f"sglang {sglang.__version__} is installed; rollout_sglang.py is written for {rs.SGLANG_VERSION}"
        st["engine"] = rs.make_engine(st["policy"], local_rank=local_rank, mem_fraction=0.2, seed=rank)
        return True, f"sglang {sglang.__version__}: one engine per rank started on the tiny model and released"

    def check_push():
        tok = st["tokenizer"]
        text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                       tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]   # as train.rollout makes SGLang's prompts
        stats = rs.sync_weights(st["policy"], st["engine"], dtype=torch.bfloat16, mem_get_info=torch.cuda.mem_get_info)
        st["engine_bytes"] = stats["engine_bytes"]
        (sample,) = rs.generate(st["engine"], [prompt], n=1, max_new_tokens=24, temperature=1.0, stop_ids=[])
        ids, attn, targets, mask = train.pack([sample], st["tokenizer"].pad_token_id, device)
        with torch.no_grad():
            lp = train.token_logprobs(*train.final_hidden(st["policy"], ids, attn), targets)
        trainer = lp[0][mask[0].bool()].tolist()
        ok, detail = logprob_agreement(sample["rollout_logp"], trainer)
        return ok, f"{stats['sync_bytes'] / 2**20:.1f} MiB pushed in {stats['sync_s']:.2f} s; {detail}"

    def check_release():
        r = rs.release(st["engine"], expected_bytes=st["engine_bytes"], mem_get_info=torch.cuda.mem_get_info)
        took, freed = st["engine_bytes"] or 0, r["freed_bytes"] or 0
        ok = took > 0 and freed >= 0.9 * took
        return ok, f"resume took {took / 2**30:.2f} GiB, release gave back {freed / 2**30:.2f} GiB in {r['release_s']:.2f} s"

    def check_step():
        g = torch.Generator().manual_seed(rank)
        samples = [{"prompt_ids": torch.randint(3, 1000, (12,), generator=g).tolist(),
                    "completion_ids": torch.randint(3, 1000, (20,), generator=g).tolist(), "truncated": False}
                   for _ in range(4)]
        ids, attn, targets, mask = train.pack(samples, 0, device)
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5], device=device)
        c = train.Config(domains=("math",), liger=True, kl_coef=0.05, max_new_tokens=20, loss_norm="sequence")
        hidden, weight = train.final_hidden(st["policy"], ids, attn)
        with torch.no_grad():
            base = train.token_logprobs(hidden, weight, targets)
        noise = torch.randn(base.shape, generator=g).to(device)
        old, ref = base + 0.1 * noise, base - 0.1 * noise       # ratios off 1, so the loss depends on the logits
        plain, _ = train.policy_loss_torch(hidden, weight, targets, mask, adv, old, c, ref_logp=ref)
        liger, _ = train.policy_loss_liger(hidden, weight, targets, mask, adv, old, c, ref_logp=ref)
        (liger * world / len(samples)).backward()
        norm = torch.nn.utils.clip_grad_norm_(st["policy"].parameters(), 1.0)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        st["optimizer"].step()
        st["optimizer"].zero_grad(set_to_none=True)
        ok, detail = loss_agreement(float(liger.detach()), float(plain.detach()))
        return ok and math.isfinite(norm), f"{detail}; gradient norm {norm:.4f}, AdamW step taken"

    def check_checkpointing():
        layers = st["policy"].model.layers
        calls = []
        hook = layers[0].register_forward_pre_hook(lambda m, a: calls.append(torch.is_grad_enabled()))
        try:
            ids = torch.randint(3, 1000, (2, 16), device=device)
            hidden, weight = train.final_hidden(st["policy"], ids, torch.ones_like(ids))
            forward = len(calls)
            (hidden.float().pow(2).mean() * 0).backward()
        finally:
            hook.remove()
        st["optimizer"].zero_grad(set_to_none=True)
        ok = st["policy"].is_gradient_checkpointing and forward == 1 and len(calls) == 2
        return ok, (f"{len(layers)} decoder layers checkpointed; layer 0 ran {forward} time(s) in forward and "
                    f"{len(calls) - forward} again in backward")

    def setup_trainer():
        # the engine first (SGLang sizes its memory from what is free), then the trainer, as train.py does it
        st["tokenizer"] = modeling.load_tokenizer("tiny")
        st["policy"] = modeling.load_model("tiny", attn_implementation=train.attention_implementation(device))
        return True, f"tiny model ({sum(p.numel() for p in st['policy'].parameters()) / 1e6:.2f} M parameters) loaded"

    def check_liger():
        import liger_kernel  # noqa: F401
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3   # the kernels train.py --liger uses
        apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
        from importlib.metadata import version
        return True, f"liger-kernel {version('liger-kernel')}: Qwen3 RMSNorm/SwiGLU/RoPE patched, fused GRPO loss importable"

    def shard_trainer():
        # a fresh copy of the same weights, built from the Liger-patched classes when the Liger check passed
        policy = modeling.load_model("tiny", attn_implementation=train.attention_implementation(device))
        policy.load_state_dict(st["policy"].state_dict())
        policy.to(device).train()
        train.enable_activation_checkpointing(policy)
        st["policy"] = train.shard(policy, device)
        st["optimizer"] = torch.optim.AdamW(st["policy"].parameters(), lr=1e-6)
        sharded = all(hasattr(p, "full_tensor") for p in st["policy"].parameters())
        return sharded, (f"{type(policy.model.norm).__name__}, attention {policy.config._attn_implementation}, "
                         f"FSDP2 over {world} ranks with bf16 compute, activation checkpointing on")

    fix_sglang = "pip install -r requirements-gpu.txt (sglang==0.5.23), or train with --rollout hf"
    checks = [
        ("driver and CUDA", check_cuda, "install an NVIDIA driver for torch's CUDA major version (CUDA 13: 580+)", ()),
        ("nccl", check_nccl, "check NCCL_* variables, the GPUs' peer access (nvidia-smi topo -m), --nproc_per_node", ("driver and CUDA",)),
        ("tiny model", setup_trainer, "python sft.py rebuilds data/tiny_sft", ("nccl",)),
        ("sglang engine", check_engine, fix_sglang, ("tiny model",)),
        ("liger", check_liger, "pip install liger-kernel==0.8.5 (requirements-gpu.txt), or train with --no-liger",
         ("tiny model",)),
        ("fsdp2", shard_trainer, "train.shard / enable_activation_checkpointing: see the error", ("tiny model",)),
        ("weights and log-probs", check_push, "rollout_sglang.update_weights_sglang: the weight push; see its docstring",
         ("sglang engine", "fsdp2")),
        ("release and resume", check_release, "torch-memory-saver==0.0.10 and enable_memory_saver (rollout_sglang.engine_kwargs)",
         ("weights and log-probs",)),
        ("fsdp2 step, liger = torch", check_step, "train.policy_loss_liger / policy_loss_torch: the losses disagree",
         ("fsdp2",)),
        ("activation checkpointing", check_checkpointing, "train.enable_activation_checkpointing", ("fsdp2",)),
    ]
    results = run_checks(checks, agree=lambda ok: agree(ok) if dist.is_initialized() else ok, emit=emit)
    line, status = summary(results)
    emit(line)
    if "engine" in st:
        st["engine"].shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    cfg = tyro.cli(Config, console_outputs=int(os.environ.get("RANK", 0)) == 0)
    if cfg.preflight:
        sys.exit(preflight(cfg))
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py measures GPU throughput and needs CUDA, which this machine does not have "
                         "(torch " + torch.__version__ + "). Run it on a GPU node; see its docstring.")
    main(cfg)
