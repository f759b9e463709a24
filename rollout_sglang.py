"""SGLang rollouts colocated with the FSDP2 trainer: every rank owns one SGLang engine on its own GPU.

Written against sglang==0.5.23 (requirements-gpu.txt). Install and run on a GPU node:
    pip install -r requirements-gpu.txt      # see that file for the order (sglang brings its own torch)
    torchrun --nproc_per_node 8 train.py --rollout sglang --preset paper --model PATH --data blend.jsonl
    python bench/gpu.py --rollout sglang --model qwen3-0.6b   # rollout/train throughput, MFU, sync cost
The CPU tests fake the engine at its boundary and need no sglang:
    python -m pytest -q tests/test_rollout_sglang.py

One training step, in this order (`rollout_step`):
    1. resume the engine's weight memory                     engine.resume_memory_occupation(["weights"])
    2. push the trainer's weights, one bucket at a time       update_weights_sglang (the fragile glue)
    3. flush the prefix cache (its KV was computed with the old weights)
    4. resume the KV cache and CUDA graph memory
    5. generate group_size completions per prompt, with SGLang's per-token log-probs
    6. release all of the engine's memory, check that it was really given back, then train
The engine is created once by `make_engine`, before the trainer puts anything on the GPU (SGLang sizes
its KV cache from the free memory it sees), and released at once.

Why one engine per rank (tp=1) and not one tp=8 engine per node: FSDP2's all-gather already leaves the
full tensor on every rank, so each rank pushes its own copy to the engine on its own GPU through CUDA
IPC, with no extra copy between GPUs; each rank then generates for its own slice of the prompts, which
is the slice it trains on (train.py's `batch[rank::world]`), so nothing is scattered back. Multi-node
works the same way, one engine per GPU. The cost: every GPU holds a full bf16 copy of the weights
during rollout, so a model must fit on one GPU next to its KV cache (up to about 8B on 80 GB).
"""

import contextlib
import copy
import os
import tempfile
import time
import warnings
from typing import Callable, Iterable, NamedTuple

import torch

SGLANG_VERSION = "0.5.23"   # the version every SGLang call below was written against
MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")   # sglang.srt.constants.GPU_MEMORY_ALL_TYPES in 0.5.23


# ----------------------------------------------------------------------------- weight buckets

class Slot(NamedTuple):
    """Where one tensor lies in a flat byte bucket: bytes [start, end), to be viewed as dtype, shape."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    end: int


def hf_name(name: str) -> str:
    """The HF checkpoint name SGLang's loader expects: drop the wrapper prefixes that activation
    checkpointing (`_checkpoint_wrapped_module.`) and torch.compile (`_orig_mod.`) add to names."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def plan_buckets(params: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[list[str]]:
    """Group parameters into buckets of at most bucket_bytes, greedily and in parameter order.

    params: (name, full shape, dtype as sent) per parameter. A tensor is never split: one larger than
    bucket_bytes gets a bucket of its own. Every rank computes the same plan from the same list, so
    the all-gathers inside the buckets line up across ranks."""
    assert bucket_bytes > 0
    plan, current, used = [], [], 0
    for name, shape, dtype in params:
        size = torch.Size(shape).numel() * dtype.itemsize
        if current and used + size > bucket_bytes:
            plan.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        plan.append(current)
    return plan


def weight_list(model: torch.nn.Module, dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, full shape, dtype as sent) for every parameter, in module order.

    named_parameters() yields a tied parameter once, under its first name: for Qwen3 with tied
    embeddings that is model.embed_tokens.weight and lm_head.weight is not sent. That is what SGLang
    wants: its tied lm_head *is* embed_tokens, and a separate lm_head.weight would find no parameter.
    A DTensor's .shape is the full (unsharded) shape, so nothing is gathered to make the plan."""
    return [(name, tuple(p.shape), dtype) for name, p in model.named_parameters()]


@torch.no_grad()
def gather_bucket(params: dict[str, torch.Tensor], names: list[str], dtype: torch.dtype) -> tuple[torch.Tensor, list[Slot]]:
    """The full tensors of one bucket, cast to dtype and packed into one flat uint8 tensor.

    An FSDP2 parameter is a DTensor: full_tensor() all-gathers it (a collective: every rank calls this
    with the same names in the same order). The local shard is cast to dtype first, so a bf16 engine's
    weights move as bf16, half the bytes of the fp32 master weights. Each full tensor is copied into the
    bucket and dropped before the next is gathered, so the extra memory is one bucket plus one full tensor."""
    sizes = [torch.Size(params[n].shape).numel() * dtype.itemsize for n in names]
    device = params[names[0]].device
    flat = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
    slots, start = [], 0
    for name, size in zip(names, sizes):
        p = params[name].detach()
        full = p.to(dtype).full_tensor() if hasattr(p, "full_tensor") else p
        # Offsets are sums of sizes in dtype's bytes, so every slot is aligned for the view.
        flat[start: start + size].view(dtype).copy_(full.reshape(-1))
        slots.append(Slot(hf_name(name), tuple(full.shape), dtype, start, start + size))
        start += size
        del full
    return flat, slots


def iter_buckets(model: torch.nn.Module, bucket_bytes: int, dtype: torch.dtype) -> Iterable[tuple[torch.Tensor, list[Slot]]]:
    """The model's weights as a stream of (flat bucket, slots), gathered one bucket at a time."""
    params = dict(model.named_parameters())
    for names in plan_buckets(weight_list(model, dtype), bucket_bytes):
        yield gather_bucket(params, names, dtype)


# ----------------------------------------------------------------------------- the SGLang boundary

def update_weights_sglang(engine, buckets: Iterable[tuple[torch.Tensor, list[Slot]]], tp_size: int = 1) -> int:
    """Load a stream of weight buckets into a running SGLang engine; returns the bytes sent.

    The fragile glue, written for sglang==0.5.23 and nothing else (check each line on an upgrade):
    - update_weights_from_tensor must run between begin_weight_update() and end_weight_update();
      outside such a session 0.5.23 answers success=False.
    - load_format="flattened_bucket" takes one serialized payload per TP rank, each a dict
      {"flattened_tensor": uint8 tensor, "metadata": [FlattenedTensorMetadata]}; the engine's safe
      unpickler accepts only sglang's own FlattenedTensorMetadata class, so it is built here.
      start_idx/end_idx/numel count bytes of the flat uint8 tensor.
    - CUDA tensors travel as CUDA IPC handles. monkey_patch_torch_reductions() makes them name the
      device by UUID, as sglang's own sender (srt/weight_sync/utils.py) does.
    - The call is synchronous: when it returns, the scheduler has copied the bucket into its weights,
      so the bucket can be freed. flush_cache=False here; the caller flushes once after the last bucket."""
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorMetadata

    monkey_patch_torch_reductions()
    ok, msg = engine.begin_weight_update()
    if not ok:
        raise RuntimeError(f"sglang begin_weight_update failed: {msg}")
    sent = 0
    for flat, slots in buckets:
        metadata = [FlattenedTensorMetadata(name=s.name, shape=torch.Size(s.shape), dtype=s.dtype,
                                            start_idx=s.start, end_idx=s.end, numel=s.end - s.start)
                    for s in slots]
        payloads = [MultiprocessingSerializer.serialize({"flattened_tensor": flat, "metadata": metadata},
                                                        output_str=True) for _ in range(tp_size)]
        ok, msg = engine.update_weights_from_tensor(named_tensors=payloads, load_format="flattened_bucket",
                                                    flush_cache=False)
        if not ok:
            raise RuntimeError(f"sglang update_weights_from_tensor failed on {slots[0].name}..: {msg}")
        sent += flat.numel()
        del flat, payloads   # the engine has its copy; drop ours before the next bucket is gathered
    ok, msg = engine.end_weight_update()
    if not ok:
        raise RuntimeError(f"sglang end_weight_update failed: {msg}")
    return sent


def engine_kwargs(model_path: str, *, local_rank: int, mem_fraction: float, seed: int,
                  dtype: str = "bfloat16", port_base: int = 30000, nccl_port_base: int = 29700) -> dict:
    """Arguments of sglang.Engine (ServerArgs fields in 0.5.23) for this rank's colocated engine."""
    return dict(
        model_path=model_path,
        load_format="dummy",          # no weights read from disk: the first sync pushes the trainer's
        skip_tokenizer_init=True,     # we send token ids and decode with our own tokenizer
        sampling_defaults="openai",   # the default "model" would apply generation_config.json (Qwen3: top_k 20)
        dtype=dtype,
        tp_size=1,
        base_gpu_id=local_rank,       # torchrun leaves every GPU visible; this engine uses the rank's own
        mem_fraction_static=mem_fraction,
        enable_memory_saver=True,     # makes release/resume_memory_occupation give memory back
        random_seed=seed,
        # Fixed, distinct ports per local rank: 8 engines picking "a free port" at once can collide.
        port=port_base + 10 * local_rank,
        nccl_port=nccl_port_base + local_rank,
        log_level="error",
    )


@contextlib.contextmanager
def child_env():
    """Environment for spawning the engine's processes under torchrun. torchrun sets
    TORCHELASTIC_USE_AGENT_STORE=True, which makes every tcp:// rendezvous a store *client*; the
    engine's scheduler would then wait forever for a store server that nobody starts. Torch's own
    async-checkpoint subprocess sets it to False for the same reason."""
    old = os.environ.get("TORCHELASTIC_USE_AGENT_STORE")
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCHELASTIC_USE_AGENT_STORE"]
        else:
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = old


def architecture(model: torch.nn.Module) -> str:
    """The HF class name SGLang picks its model by; fully_shard renames the class to FSDP<name>."""
    for cls in type(model).__mro__:
        if not cls.__name__.startswith("FSDP"):
            return cls.__name__
    raise ValueError(f"no model class in {type(model).__mro__}")


def write_engine_config(model: torch.nn.Module, out_dir: str) -> str:
    """config.json only (no weights, no generation_config.json) with `architectures` filled in: a
    model built in code has none, and SGLang needs it."""
    config = copy.deepcopy(model.config)
    config.architectures = [architecture(model)]
    config.save_pretrained(out_dir)
    return out_dir


def make_engine(model: torch.nn.Module, *, local_rank: int, mem_fraction: float = 0.5, seed: int = 0, **kw):
    """This rank's SGLang engine, created with dummy weights and released at once, so the trainer can
    take the GPU until the first rollout. Call before the trainer puts its model on the GPU."""
    import sglang

    path = write_engine_config(model, tempfile.mkdtemp(prefix=f"m2rl-engine-{local_rank}-"))
    with child_env():
        engine = sglang.Engine(**engine_kwargs(path, local_rank=local_rank, mem_fraction=mem_fraction,
                                               seed=seed, **kw))
    engine.release_memory_occupation(tags=list(MEMORY_TAGS))
    return engine


# ----------------------------------------------------------------------------- one rollout step

def _free_bytes(mem_get_info) -> int | None:
    return int(mem_get_info()[0]) if mem_get_info is not None else None


def _return_cached(device: torch.device) -> None:
    """Give the trainer's cached blocks back to the device, so the engine can map its memory there."""
    if device.type == "cuda":
        torch.cuda.ipc_collect()   # blocks shared by CUDA IPC are freed only once the receiver let go
        torch.cuda.empty_cache()


def sync_weights(model: torch.nn.Module, engine, *, bucket_bytes: int = 512 << 20,
                 dtype: torch.dtype = torch.bfloat16, mem_get_info: Callable | None = None) -> dict:
    """Phases 1-4: resume weight memory, push the weights bucket by bucket, flush the prefix cache,
    resume the KV cache. Returns seconds, bytes sent, and the device memory the engine took back
    (engine_bytes, None without mem_get_info), which `release` then expects to get back."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    _return_cached(device)
    free0 = _free_bytes(mem_get_info)
    engine.resume_memory_occupation(tags=["weights"])
    sent = update_weights_sglang(engine, iter_buckets(model, bucket_bytes, dtype))
    _return_cached(device)
    flushed = engine.flush_cache()
    if not getattr(flushed, "success", True):
        raise RuntimeError(f"sglang flush_cache failed: {getattr(flushed, 'message', flushed)}")
    engine.resume_memory_occupation(tags=["kv_cache", "cuda_graph"])
    free1 = _free_bytes(mem_get_info)
    return {"sync_s": time.perf_counter() - t0, "sync_bytes": sent,
            "engine_bytes": free0 - free1 if free0 is not None else None}


def to_sample(prompt_ids: list[int], out: dict, tokenizer=None) -> dict:
    """One SGLang output (skip_tokenizer_init: output_ids and meta_info) as a train.py sample.

    SGLang keeps the stop token it matched at the end of the output (finished_len = matched position
    + 1), with its log-prob, so completion_ids ends with eos when it stopped, as with HF generate.
    Its log-probs are log softmax(logits / temperature), the distribution it sampled from (before
    top-p), which is what the trainer computes; leave SGLANG_RETURN_ORIGINAL_LOGPROB unset."""
    meta = out["meta_info"]
    reason = meta["finish_reason"]["type"] if meta.get("finish_reason") else None
    if reason not in ("stop", "length"):
        raise RuntimeError(f"sglang request ended with finish_reason {meta.get('finish_reason')!r}")
    logp = [float(lp) for lp, _, _ in meta["output_token_logprobs"]]
    ids = [int(t) for _, t, _ in meta["output_token_logprobs"]]
    if "output_ids" in out and list(out["output_ids"]) != ids:
        raise RuntimeError("sglang output_ids and output_token_logprobs disagree")
    text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""
    return {"prompt_ids": list(prompt_ids), "completion_ids": ids, "text": text,
            "truncated": reason == "length", "rollout_logp": logp}


def generate(engine, prompt_ids: list[list[int]], *, n: int, max_new_tokens: int, temperature: float,
             stop_ids: list[int], top_p: float = 1.0, tokenizer=None) -> list[dict]:
    """Phase 5: n completions per prompt, prompt-major, as train.py samples (see `to_sample`).
    Every sampling knob is set explicitly, so no model or engine default leaks in."""
    rows = [ids for ids in prompt_ids for _ in range(n)]
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": -1,
              "min_p": 0.0, "repetition_penalty": 1.0, "stop_token_ids": sorted(set(stop_ids))}
    outs = engine.generate(input_ids=rows, sampling_params=params, return_logprob=True)
    if len(outs) != len(rows):
        raise RuntimeError(f"sglang returned {len(outs)} outputs for {len(rows)} requests")
    return [to_sample(ids, out, tokenizer) for ids, out in zip(rows, outs)]


def release(engine, *, expected_bytes: int | None = None, mem_get_info: Callable | None = None,
            min_fraction: float = 0.9) -> dict:
    """Phase 6: release all of the engine's memory and measure what the device got back.
    Releasing can silently free less than the engine holds (allocations made outside the memory
    saver's regions); the trainer would then run short of memory. Warns when less than min_fraction
    of expected_bytes (what resuming took) came back."""
    t0 = time.perf_counter()
    free0 = _free_bytes(mem_get_info)
    engine.release_memory_occupation(tags=list(MEMORY_TAGS))
    freed = _free_bytes(mem_get_info) - free0 if free0 is not None else None
    if freed is not None and expected_bytes and freed < min_fraction * expected_bytes:
        warnings.warn(f"sglang release_memory_occupation freed {freed / 2**30:.2f} GiB of the "
                      f"{expected_bytes / 2**30:.2f} GiB the engine took at resume; the trainer has that much "
                      "less memory", RuntimeWarning, stacklevel=2)
    return {"release_s": time.perf_counter() - t0, "freed_bytes": freed}


def rollout_step(model: torch.nn.Module, engine, prompt_ids: list[list[int]], *, n: int, max_new_tokens: int,
                 temperature: float, stop_ids: list[int], top_p: float = 1.0, tokenizer=None,
                 bucket_bytes: int = 512 << 20, dtype: torch.dtype = torch.bfloat16,
                 mem_get_info: Callable | None = None) -> tuple[list[dict], dict]:
    """One step's rollout: sync_weights, generate, release (phases 1-6), in that order; the engine
    holds no memory when this returns. Returns the samples and timing/memory stats.
    mem_get_info: torch.cuda.mem_get_info on a GPU (the default there); None skips the memory check."""
    if mem_get_info is None and next(model.parameters()).device.type == "cuda":
        mem_get_info = torch.cuda.mem_get_info
    stats = sync_weights(model, engine, bucket_bytes=bucket_bytes, dtype=dtype, mem_get_info=mem_get_info)
    t0 = time.perf_counter()
    try:
        samples = generate(engine, prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                           stop_ids=stop_ids, top_p=top_p, tokenizer=tokenizer)
    finally:   # an error in generate must not leave the engine holding the trainer's memory
        stats["generate_s"] = time.perf_counter() - t0
        stats.update(release(engine, expected_bytes=stats["engine_bytes"], mem_get_info=mem_get_info))
    stats["generated_tokens"] = sum(len(s["completion_ids"]) for s in samples)
    return samples, stats
