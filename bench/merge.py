"""Benchmark merge.py, and mergekit on the same merges when it is installed: time, read throughput, peak memory, and
whether the two outputs agree.

    python bench/merge.py                                    # 5 models of ~400 MB (fp32), a few minutes on 2 cores
    python bench/merge.py --layers 4 --methods ties,dare     # quicker
    python -m venv /tmp/mkvenv --system-site-packages && /tmp/mkvenv/bin/pip install mergekit   # optional

mergekit is installed only in its own venv (--system-site-packages reuses the project's CPU torch, so pip adds no
torch); the bench runs its mergekit-yaml when --mergekit points at one, and says so when it does not.

It writes a random Qwen3-shaped base and 4 experts (base + Gaussian deltas; two experts saved as 2 shards with an
index, to exercise sharded input) to a temp dir, then runs each merge in a fresh subprocess and prints:
  s            wall seconds of the whole command (python start, reading, merging, writing, sha256 of the inputs)
  GB/s         input bytes (all 5 models) / s, and as a percentage of the page cache read rate the bench measures
               first (every input read once more from memory, one thread); whole-model TIES reads the inputs 4 times (two threshold passes,
               the sign-majority pass, the merge), per-tensor TIES with --sign-tie majority twice
  maxrss MB    peak resident set of the process (getrusage ru_maxrss): includes file pages it has mapped
  anon MB      peak anonymous memory (RssAnon in /proc/PID/status, sampled every 5 ms): the memory it allocated
The inputs are read once beforehand, so every run starts with them in the page cache. For methods with the same
formula the outputs are compared tensor by tensor (max |difference| and the fraction of bitwise-equal entries).
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

import torch
import tyro
from safetensors import safe_open
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Config:
    hidden: int = 768
    """Hidden size of the Qwen3-shaped test models."""
    layers: int = 12
    """Decoder layers (12 with the other defaults: 100M parameters, 403 MB in fp32)."""
    intermediate: int = 2048
    """MLP width."""
    vocab: int = 32000
    """Vocabulary size (embeddings tied, stored once)."""
    experts: int = 4
    """Experts merged into the base (5 models in all)."""
    delta_std: float = 0.01
    """Standard deviation of each expert's Gaussian task vector."""
    methods: Annotated[list[str], tyro.constructors.PrimitiveConstructorSpec(
        nargs="*", metavar="M,M,...", instance_from_str=lambda t: [m for s in t for m in s.split(",") if m],
        is_instance=lambda x: isinstance(x, list), str_from_instance=lambda x: [",".join(x)])] = field(
        default_factory=lambda: ["task_arithmetic", "ties_tensor", "ties", "dare", "sce", "breadcrumbs",
                                 "model_stock", "average", "task_arithmetic_mmap"])
    """Runs, comma separated, from RUNS below."""
    mergekit: str = "/tmp/mkvenv/bin/mergekit-yaml"
    """mergekit-yaml executable; skipped (and said so) when missing."""
    workdir: str = ""
    """Where to write the models; a temp dir (deleted at the end) when empty."""


# name -> (merge.py flags, mergekit method, mergekit per-model parameters, mergekit global parameters, same formula?)
RUNS = {
    "average": (["--method", "average"], "linear", {"weight": 1.0}, {}, True),
    "task_arithmetic": (["--method", "task_arithmetic"], "task_arithmetic", {"weight": 1.0}, {}, True),
    "task_arithmetic_mmap": (["--method", "task_arithmetic", "--reader", "mmap"], None, {}, {}, True),
    # mergekit's TIES: per-tensor trim, zero-sum sign ties to +
    "ties_tensor": (["--method", "ties", "--trim-scope", "tensor", "--sign-tie", "plus"], "ties",
                    {"weight": 1.0, "density": 0.2}, {}, True),
    "ties": (["--method", "ties"], None, {}, {}, True),  # whole-model trim, MergeLM's ties: no mergekit equivalent
    "dare_ties_trim": (["--method", "dare_ties_trim"], None, {}, {}, True),  # the paper's TIES+DARE (MergeLM)
    # Not the same formula: mergekit's DARE matches L1 norms and draws from the global torch RNG.
    "dare": (["--method", "dare"], "dare_linear", {"weight": 1.0, "density": 0.8}, {}, False),
    "sce": (["--method", "sce"], "sce", {}, {"select_topk": 1.0}, True),
    "breadcrumbs": (["--method", "breadcrumbs"], "breadcrumbs", {"weight": 1.0, "density": 0.9, "gamma": 0.01}, {},
                    True),
    "model_stock": (["--method", "model_stock"], "model_stock", {}, {}, True),
}


def make_models(cfg: Config, root: str) -> tuple[str, list[str], int]:
    """A random base and experts = base + N(0, delta_std^2) deltas; returns paths and the total input bytes."""
    from transformers import Qwen3Config

    config = Qwen3Config(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.hidden // 64,
                         num_key_value_heads=max(1, cfg.hidden // 256), head_dim=64, tie_word_embeddings=True,
                         dtype="float32", architectures=["Qwen3ForCausalLM"])
    h, kv, inter = cfg.hidden, config.num_key_value_heads * 64, cfg.intermediate
    shapes = {"model.embed_tokens.weight": (cfg.vocab, h), "model.norm.weight": (h,)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "self_attn.q_norm.weight": (64,), p + "self_attn.k_norm.weight": (64,),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
    g = torch.Generator().manual_seed(0)
    base = {k: (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s, generator=g)) for k, s in shapes.items()}
    paths = []
    for j in range(cfg.experts + 1):
        path = os.path.join(root, "base" if j == 0 else f"expert{j}")
        config.save_pretrained(path)
        sd = base if j == 0 else {k: v + cfg.delta_std * torch.randn(v.shape, generator=g) for k, v in base.items()}
        if j in (1, 2):  # sharded input: two files and an index
            names = list(sd)
            halves = [names[: len(names) // 2], names[len(names) // 2:]]
            files = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
            for file, part in zip(files, halves):
                save_file({k: sd[k] for k in part}, os.path.join(path, file), metadata={"format": "pt"})
            with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": {k: file for file, part in zip(files, halves) for k in part}},
                          f)
        else:
            save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        paths.append(path)
        del sd
    total = sum(os.path.getsize(os.path.join(p, f)) for p in paths for f in os.listdir(p) if f.endswith(".safetensors"))
    return paths[0], paths[1:], total


def measure(cmd: list[str]) -> dict:
    """Run cmd; wall seconds, ru_maxrss (MB) from wait4, and peak RssAnon (MB) sampled from /proc."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_anon = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {"s": seconds, "maxrss_mb": usage.ru_maxrss / 1024, "anon_mb": peak_anon[0] / 1024}


def compare(dir_a: str, dir_b: str) -> tuple[float, float]:
    """Max |a - b| over all tensors and the fraction of bitwise-equal entries."""
    def index(d):
        out = {}
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                with safe_open(os.path.join(d, f), "pt") as h:
                    out.update({k: os.path.join(d, f) for k in h.keys()})
        return out

    ia, ib = index(dir_a), index(dir_b)
    assert set(ia) == set(ib), set(ia) ^ set(ib)
    worst, equal, total = 0.0, 0, 0
    for k in ia:
        with safe_open(ia[k], "pt") as fa, safe_open(ib[k], "pt") as fb:
            a, b = fa.get_tensor(k).float(), fb.get_tensor(k).float()
        worst = max(worst, float((a - b).abs().max()))
        equal += int((a == b).sum())
        total += a.numel()
    return worst, equal / total


def mergekit_yaml(method: str, base: str, experts: list[str], per_model: dict, params: dict) -> str:
    import yaml

    spec = {"merge_method": method, "dtype": "float32",
            "models": [{"model": e, **({"parameters": per_model} if per_model else {})} for e in experts]}
    if method != "linear":
        spec["base_model"] = base
    if params:
        spec["parameters"] = params
    return yaml.safe_dump(spec)


def read_all(dirs: list[str]) -> None:
    """Read every file of dirs through, 64 MB at a time, into one reused buffer."""
    buf = bytearray(1 << 26)
    for d in dirs:
        for f in sorted(os.listdir(d)):
            with open(os.path.join(d, f), "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main(cfg: Config) -> None:
    root = cfg.workdir or tempfile.mkdtemp(prefix="merge-bench-")
    os.makedirs(root, exist_ok=True)
    have_mergekit = os.path.isfile(cfg.mergekit)
    try:
        t0 = time.perf_counter()
        base, experts, total = make_models(cfg, root)
        n_params = sum(math.prod(h.get_slice(k).get_shape()) for h in [safe_open(os.path.join(base, "model.safetensors"),
                                                                                  "pt")] for k in h.keys())
        print(f"{len(experts) + 1} models of {n_params / 1e6:.0f}M parameters (fp32, {total / (len(experts) + 1) / 1e6:.0f}"
              f" MB each, {total / 1e9:.2f} GB in all) written in {time.perf_counter() - t0:.0f} s; "
              f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        if have_mergekit:
            version = subprocess.run([os.path.join(os.path.dirname(cfg.mergekit), "python"), "-c",
                                      "import importlib.metadata as m, torch; print(m.version('mergekit'), "
                                      "torch.__version__)"], capture_output=True, text=True).stdout.split()
            print(f"mergekit {version[0]} (its venv's torch {version[1]}), run as: mergekit-yaml CONFIG OUT "
                  f"--no-copy-tokenizer --no-write-model-card")
        else:
            print(f"mergekit not found at {cfg.mergekit}: only merge.py is measured. Install it apart from the project "
                  f"with: python -m venv /tmp/mkvenv --system-site-packages && /tmp/mkvenv/bin/pip install mergekit")
        read_all([base, *experts])   # warm the page cache so every run reads from memory
        cache_gbs = total / 1e9 / min(timed(read_all, [base, *experts]) for _ in range(2))
        print(f"page cache read rate: {cache_gbs:.2f} GB/s (the 5 models read again from memory, 64 MB reads, "
              "one thread; the ceiling for a merge that reads its inputs once)")

        header = (f"{'run':<22}{'tool':<10}{'s':>7}{'GB/s':>7}{'cache %':>8}{'maxrss MB':>11}{'anon MB':>9}"
                  f"{'x faster':>10}{'anon ratio':>12}  output vs mergekit")
        print(header + "\n" + "-" * len(header))
        for run in cfg.methods:
            flags, mk_method, per_model, params, same = RUNS[run]
            ours_out = os.path.join(root, f"out-{run}")
            ours = measure([sys.executable, os.path.join(REPO, "merge.py"), *flags, "--base", base,
                            "--models", ",".join(experts), "--out", ours_out])
            print(f"{run:<22}{'merge.py':<10}{ours['s']:>7.1f}{total / 1e9 / ours['s']:>7.2f}"
                  f"{100 * total / 1e9 / ours['s'] / cache_gbs:>8.1f}{ours['maxrss_mb']:>11.0f}{ours['anon_mb']:>9.0f}", flush=True)
            if have_mergekit and mk_method:
                mk_out = os.path.join(root, f"mk-{run}")
                yml = os.path.join(root, f"mk-{run}.yaml")
                with open(yml, "w") as f:
                    f.write(mergekit_yaml(mk_method, base, experts, per_model, params))
                mk = measure([cfg.mergekit, yml, mk_out, "--no-copy-tokenizer", "--no-write-model-card"])
                if same:
                    worst, eq = compare(ours_out, mk_out)
                    verdict = f"max |diff| {worst:.2e}, bitwise equal {eq:.2%}"
                else:
                    verdict = "different formula (not compared)"
                print(f"{'':<22}{'mergekit':<10}{mk['s']:>7.1f}{total / 1e9 / mk['s']:>7.2f}"
                      f"{100 * total / 1e9 / mk['s'] / cache_gbs:>8.1f}{mk['maxrss_mb']:>11.0f}"
                      f"{mk['anon_mb']:>9.0f}{mk['s'] / ours['s']:>10.2f}{mk['anon_mb'] / max(ours['anon_mb'], 1):>12.2f}"
                      f"  {mk_method}: {verdict}", flush=True)
                shutil.rmtree(mk_out, ignore_errors=True)
            shutil.rmtree(ours_out, ignore_errors=True)
        print("x faster = mergekit seconds / merge.py seconds; anon ratio = mergekit peak anon MB / merge.py's; "
              "cache % = GB/s / the page cache read rate above.")
    finally:
        if not cfg.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(tyro.cli(Config))
