"""Merge domain experts fine-tuned from one base checkpoint into one model, streaming tensor by tensor on CPU.

    python merge.py --method dare        # the single-domain runs under out/ against their common base: out/merge-dare
    python merge.py --method dare --base out/sft --models out/math,out/code,out/science,out/if --out out/merged-dare
    python merge.py --method ties --base out/sft --models out/math,out/code,out/science,out/if --out out/merged-ties
    python merge.py --config merge.yaml                  # the same fields as YAML/JSON keys; flags override the file
    python merge.py --help                               # every knob, with its default

No GPU and no torchrun: merging is a read-add-write pass over the checkpoints. Run it on one process anywhere.
Memory does not grow with the model: average, task_arithmetic, dare and breadcrumbs hold the base tensor, one
expert's delta and the running sum (about 4x the largest tensor); the other methods hold all N deltas of one tensor
(about N + 4 times it). bench/merge.py measures it.

Notation: the base weights theta_0 (the common starting checkpoint), N experts theta_i, task vectors
delta_i = theta_i - theta_0, per-model weights a_i (--weights, default 1) and a scale lam (--lam, default 1).
All math is fp32, one tensor at a time. Each method's exact formula is in its function's docstring:
  average          theta = theta_0 + sum_i a_i delta_i / sum_i a_i   (= the weighted mean of the experts)
  task_arithmetic  theta = theta_0 + lam * sum_i a_i delta_i                           (paper: lam = 1)
  ties             trim each delta_i to its top 20% by |value|, elect a sign, disjoint mean, times lam
  dare             drop each entry with probability p = 0.2, rescale by 1/(1-p), then task arithmetic
  dare_ties        the DARE drop, then the TIES sign election and disjoint mean (mergekit's dare_ties: no trim)
  dare_ties_trim   the DARE drop, then all of TIES, top-20% trim included: the paper's "TIES+DARE" (MergeLM)
  sce              per tensor: weights from each delta's energy, erase entries against the majority sign
  breadcrumbs      per tensor: drop the largest 1% and the smallest 9% of |delta_i|, then task arithmetic
  della            per row: drop with probability falling with magnitude rank (MagPrune), rescale, TIES combine
  model_stock      per tensor: theta_0 + t * mean_i delta_i with t from the angle between the deltas
  tsv              per matrix: keep each delta's top 1/N singular vectors, orthogonalise them, sum (TSV-Merge)

Where published implementations disagree, a flag chooses and its default is the paper's choice:
  --trim-scope model|tensor  TIES top-k over the whole model (TIES paper, M2RL) or per tensor (mergekit)
  --rescale inverse|l1       DARE/DELLA survivors times 1/keep-probability (papers) or L1-norm matching (mergekit)
  --elect weighted|unweighted  sign election on a_i*delta_i (mergekit) or delta_i (TIES paper); equal when all a_i = 1
  --disjoint mean|sum        TIES/DARE-TIES/DELLA: mean of agreeing entries (papers) or their sum (mergekit dare_ties)
  --sign-tie majority|plus   TIES-style election where the votes sum to exactly 0: the sign elected at most positions
                             of the whole model (MergeLM get_param_signs, TIES reference code) or + (mergekit)
Ties at a magnitude threshold are kept, as in the TIES reference code, so with many equal |delta| (bf16 checkpoints)
slightly more than top-k entries can survive; merge_report.json gives the fraction kept.

The paper's merge table (M2RL, arXiv 2602.12566) with its settings, the defaults here (PAPER_TABLE below):
Average = average, TA = task_arithmetic (lam 1), TA+DARE = dare (p 0.2), TIES = ties (top 20% over the whole model),
TIES+DARE = dare_ties_trim (p 0.2, then top 20%), SCE = sce (no selection). TIES and TIES+DARE follow MergeLM
(yule-BUAA/MergeLM, model_merging_methods/merging_methods.py: ties_merging, mask_merging), whose trim keeps
|delta| >= the int(0.8 n)-th smallest of a model's n entries and whose zero-sum ties take the model-wide majority sign.
How this file differs from MergeLM, on purpose:
- All math is fp32. MergeLM works in the checkpoints' dtype and, for TIES+DARE, writes each DARE-dropped expert back
  into a model of that dtype before TIES, so with bf16 experts the rescaled deltas are rounded once more there.
- DARE masks come from a generator seeded per (seed, model, tensor), so a merge is reproducible and does not depend on
  tensor order; MergeLM draws torch.bernoulli from the global RNG. Same distribution, different draws.
- The sign_tie="majority" rule costs one more read of every model (and the TIES trim two), because the output is
  written tensor by tensor and the majority is only known after seeing the whole model.

Differences from mergekit 0.1.5 that matter for RL updates, which are tiny: mergekit's SCE falls back to uniform
weights when the summed energies are below 1e-6, its DARE rescale with --rescale l1 skips tensors whose L1 norm is
below 1e-7, and its Model Stock clamps the product of norms to 1e-6. Here only exact zeros are special-cased.

Input: each directory holds config.json and model.safetensors or model.safetensors.index.json plus its shards.
All models must agree on architecture, tensor names, shapes, dtype kind and tied embeddings (a tied lm_head is stored
once, as embed_tokens, and merges as that tensor); the first mismatch stops the run before anything is written.
Output (--out): model.safetensors, or model-0000k-of-0000n.safetensors with model.safetensors.index.json when larger
than --max-shard-gb; config.json, generation_config.json and the tokenizer files copied from the base; and
merge_report.json (resolved config, input sha256, per-tensor stats, what the output dtype rounded away). It is
written to a hidden temp directory next to --out and renamed at the end, so a crash never leaves a complete-looking
output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import tyro

from cli import UserError, run

# --------------------------------------------------------------------------------------------------------------------
# Config


def _split_commas(tokens: list[str]) -> list[str]:
    # tyro alone parses `--models a,b` as ["a,b"] without complaint; accept both `a,b` and `a b`.
    return [part.strip() for token in tokens for part in token.split(",") if part.strip()]


PathList = Annotated[
    list[str],
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar="PATH,PATH,...",
        instance_from_str=_split_commas,
        is_instance=lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x),
        str_from_instance=lambda x: [",".join(x)],
    ),
]
FloatList = Annotated[
    list[float],
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar="X,X,...",
        instance_from_str=lambda tokens: [float(s) for s in _split_commas(tokens)],
        is_instance=lambda x: isinstance(x, list) and all(isinstance(i, (int, float)) for i in x),
        str_from_instance=lambda x: [",".join(str(i) for i in x)],
    ),
]
Method = Literal[
    "average", "task_arithmetic", "ties", "dare", "dare_ties", "dare_ties_trim", "sce", "breadcrumbs", "della",
    "model_stock", "tsv"
]
METHODS = typing.get_args(Method)
# The rows of the paper's merge table and the method that reproduces each, at this file's defaults.
PAPER_TABLE = {"Average": "average", "TA": "task_arithmetic", "TA+DARE": "dare", "TIES": "ties",
               "TIES+DARE": "dare_ties_trim", "SCE": "sce"}


@dataclass
class Config:
    """Merge fine-tuned experts of one base model (see the module docstring for the formulas)."""

    # Inputs and output
    config: str = ""
    """YAML or JSON file whose keys are any of these fields (models may also be a list of {path, weight});
    flags given on the command line override it. Relative paths are relative to the working directory."""
    base: str = ""
    """Directory of the common starting checkpoint: task vectors are taken against it, and its config, tokenizer
    and generation config are copied to the output. Empty: the step-0 checkpoint of the runs found in --runs."""
    models: PathList = field(default_factory=list)
    """Expert directories, comma separated: --models out/math,out/code,out/science,out/if. Empty: every
    single-domain train.py run in --runs (one per domain, all from the same starting model)."""
    runs: str = "out"
    """Where to find the experts and their base when --models or --base is not given."""
    out: str = ""
    """Output directory; it must not exist unless --overwrite. Empty: <runs>/merge-<method>."""
    overwrite: bool = False
    """Replace --out if it exists (only after the new merge is complete)."""

    # Method
    method: Method = "task_arithmetic"
    """Merge method."""
    weights: FloatList = field(default_factory=list)
    """Per-model weights a_i, comma separated, one per --models entry; empty means all 1. Not used by sce,
    model_stock and tsv, whose weights come from the tensors themselves."""
    lam: float = 1.0
    """Scale lambda of the merged task vector (every method but average and model_stock). The paper merges with
    lambda = 1."""
    seed: int = 0
    """Seed of the DARE and DELLA drop masks; each tensor of each model gets its own generator seeded from
    (seed, model index, tensor name), so the output does not depend on tensor order."""

    # TIES, DARE, DELLA options
    top_k: float = 0.2
    """ties, dare_ties_trim: fraction of each task vector kept, largest |delta| first (paper: 0.2)."""
    trim_scope: Literal["model", "tensor"] = "model"
    """ties, dare_ties_trim: rank |delta| over the whole model (TIES paper and M2RL; exact, by a streaming two-pass
    search; MergeLM's rank: keep |delta| >= the m-th smallest, m = int(n (1 - top_k))) or within each tensor
    (mergekit: keep |delta| >= the int(top_k n)-th largest)."""
    elect: Literal["weighted", "unweighted"] = "weighted"
    """TIES-style sign election on a_i * delta_i (mergekit) or on delta_i (TIES reference code, which has no
    weights). The same when all weights are 1."""
    disjoint: Literal["mean", "sum"] = "mean"
    """ties, dare_ties, dare_ties_trim, della: combine the entries that agree with the elected sign by their
    weighted mean (TIES, DARE and DELLA papers) or their weighted sum (mergekit's dare_ties)."""
    sign_tie: Literal["majority", "plus"] = "majority"
    """ties, dare_ties, dare_ties_trim, della: the elected sign where the votes sum to exactly 0. "majority": the
    sign elected at most positions of the whole model, or none (the position keeps theta_0) if + and - are equally
    common (MergeLM get_param_signs and the TIES reference code, which M2RL used; one more read of every model);
    "plus": + (mergekit). It decides only those positions, but with bf16 experts they can be a few percent."""
    p: float = 0.2
    """DARE drop probability (dare, dare_ties, dare_ties_trim), in [0, 1) (paper: 0.2)."""
    rescale: Literal["inverse", "l1"] = "inverse"
    """DARE and DELLA: multiply survivors by 1/keep-probability (both papers) or rescale each tensor so its L1 norm
    is unchanged (mergekit)."""

    # SCE, Breadcrumbs, DELLA knobs
    sce_select: float = 1.0
    """SCE: fraction of positions kept by variance across models before merging; 1 turns selection off, as the
    paper's SCE merges did."""
    crumbs_density: float = 0.9
    """Breadcrumbs: fraction of each tensor's task vector kept."""
    crumbs_gamma: float = 0.01
    """Breadcrumbs: fraction of largest-|delta| entries dropped as outliers (the rest of the drop is the smallest)."""
    della_density: float = 0.7
    """DELLA: mean keep probability of an entry."""
    della_epsilon: float = 0.1
    """DELLA: keep probabilities run from density - epsilon (smallest |delta| in a row) to density + epsilon."""

    # Output
    dtype: Literal["base", "float32", "bfloat16", "float16"] = "base"
    """Output dtype of floating tensors; "base" keeps each tensor's dtype in the base checkpoint."""
    max_shard_gb: float = 5.0
    """Largest output shard in GB (1e9 bytes); a bigger model is split with an index file."""
    warn_update_loss: float = 0.1
    """Warn on stderr when the output dtype loses more than this fraction (relative L2) of the merged update."""
    hash_inputs: bool = True
    """Record the sha256 of every input safetensors file in merge_report.json (hashed in a background thread)."""
    reader: Literal["pread", "mmap"] = "pread"
    """How tensors are read: positioned reads into private memory (pages return to the cache at once), or
    memory-mapped safe_open (mapped pages count toward this process's RSS until the run ends)."""


def load_config_file(path: str) -> dict:
    """Read a YAML/JSON merge config into Config keyword arguments, naming the file and key on any error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    import yaml
    with open(path) as f:
        data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of Config fields, got {type(data).__name__}")
    defaults = Config()
    known = {f.name for f in dataclasses.fields(Config)}
    out: dict = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ValueError(f"{path}: unknown key {raw_key!r}; known keys: {', '.join(sorted(known))}")
        default = getattr(defaults, key)
        if key == "models" and isinstance(value, list):
            # mergekit users write `models: [{path: out/math, weight: 0.5}, ...]`; plain strings work too.
            paths, weights = [], []
            for j, item in enumerate(value):
                if isinstance(item, str):
                    paths.append(item)
                    weights.append(None)
                elif isinstance(item, dict) and isinstance(item.get("path", item.get("model")), str):
                    paths.append(item.get("path", item.get("model")))
                    weights.append(item.get("weight"))
                else:
                    raise ValueError(f"{path}: models[{j}] must be a path or a mapping with 'path' (and 'weight')")
            if any(w is not None for w in weights):
                if "weights" in data:
                    raise ValueError(f"{path}: give weights either per model or as 'weights', not both")
                out["weights"] = [1.0 if w is None else float(w) for w in weights]
            value = paths
        elif key in ("models", "weights") and isinstance(value, str):
            value = _split_commas([value])
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, list):
            ok = isinstance(value, list)
            if ok and key == "weights":
                ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                value = [float(v) for v in value] if ok else value
            elif ok:
                ok = all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(f"{path}: key {raw_key!r} should be like {default!r}, got {value!r}")
        out[key] = value
    return out


def cli(args: list[str] | None = None) -> Config:
    """Parse flags, with --config FILE supplying the defaults that the other flags override."""
    args = list(sys.argv[1:] if args is None else args)
    default = Config()
    for j, a in enumerate(args):
        if a == "--config" and j + 1 < len(args):
            path = args[j + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            continue
        default = dataclasses.replace(default, **load_config_file(path), config=path)
        break
    return tyro.cli(Config, args=args, default=default)


def find_experts(runs: str) -> tuple[str, list[str]]:
    """The single-domain train.py runs in `runs` (train_config.json with one domain and no teachers), one per
    domain, and their common base: the step-0 checkpoint they all start from (checked byte for byte)."""
    found = {}
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, name, "train_config.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            run_cfg = json.load(f)
        if len(run_cfg.get("domains", [])) == 1 and not run_cfg.get("teachers") and \
                os.path.exists(os.path.join(runs, name, "run.json")):
            found.setdefault(run_cfg["domains"][0], []).append(os.path.join(runs, name))
    if not found:
        raise UserError(f"no finished single-domain runs in {runs}/ to merge; train the experts first, e.g. "
                        "python train.py --domains math (and code, science, if), or give --base and --models")
    twice = {d: p for d, p in found.items() if len(p) > 1}
    if twice:
        raise UserError(f"several runs of one domain in {runs}/ ({'; '.join(', '.join(p) for p in twice.values())}); "
                        "say which with --models")
    models = [p[0] for p in found.values()]
    bases = [os.path.join(m, "checkpoints", "step_000000") for m in models]
    missing = [b for b in bases if not os.path.exists(os.path.join(b, "model.safetensors"))]
    if missing:
        raise UserError(f"no step-0 checkpoint in {', '.join(missing)}; give the base with --base")
    digests = {sha256_file(os.path.join(b, "model.safetensors")) for b in bases}
    if len(digests) > 1:
        raise UserError(f"the runs in {runs}/ start from different models ({', '.join(models)}); give --base and --models")
    return bases[0], models


def check_config(cfg: Config) -> list[float]:
    """Reject bad settings with a message naming the flag; return the per-model weights."""
    for name, hint in typing.get_type_hints(Config).items():   # a YAML file can hold any string
        if typing.get_origin(hint) is Literal and getattr(cfg, name) not in typing.get_args(hint):
            raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(cfg, name)!r}; choose one of "
                             f"{', '.join(typing.get_args(hint))}")
    if cfg.weights and len(cfg.weights) != len(cfg.models):
        raise ValueError(f"--weights has {len(cfg.weights)} values for {len(cfg.models)} --models")
    if cfg.weights and cfg.method in ("sce", "model_stock", "tsv"):
        raise ValueError(f"--method {cfg.method} computes its own weights; drop --weights")
    if cfg.lam != 1.0 and cfg.method in ("average", "model_stock"):
        raise ValueError(f"--method {cfg.method} has no lambda; drop --lam")
    if not 0.0 <= cfg.p < 1.0:
        raise ValueError(f"--p (DARE drop probability) must be in [0, 1), got {cfg.p}")
    if not 0.0 < cfg.top_k <= 1.0:
        raise ValueError(f"--top-k must be in (0, 1], got {cfg.top_k}")
    if not 0.0 < cfg.sce_select <= 1.0:
        raise ValueError(f"--sce-select must be in (0, 1], got {cfg.sce_select}")
    if not (0.0 < cfg.crumbs_density <= 1.0 and 0.0 <= cfg.crumbs_gamma < 1.0):
        raise ValueError(f"--crumbs-density must be in (0, 1] and --crumbs-gamma in [0, 1), got "
                         f"{cfg.crumbs_density} and {cfg.crumbs_gamma}")
    if not (0.0 < cfg.della_density - cfg.della_epsilon and cfg.della_density + cfg.della_epsilon <= 1.0
            and cfg.della_epsilon >= 0.0):
        raise ValueError(f"DELLA keep probabilities density +- epsilon must lie in (0, 1], got "
                         f"{cfg.della_density} +- {cfg.della_epsilon}")
    if cfg.method == "model_stock" and len(cfg.models) < 2:
        raise ValueError("--method model_stock needs at least two --models (it measures the angle between them)")
    if cfg.max_shard_gb <= 0:
        raise ValueError(f"--max-shard-gb must be positive, got {cfg.max_shard_gb}")
    out = os.path.abspath(cfg.out)
    for p in [cfg.base, *cfg.models]:
        if os.path.abspath(p) == out:
            raise ValueError(f"--out {cfg.out} is also an input; choose another directory")
    return list(cfg.weights) if cfg.weights else [1.0] * len(cfg.models)


if __name__ == "__main__":   # parse first: --help and a bad flag answer before torch loads
    try:
        CFG = cli()
    except (ValueError, FileNotFoundError) as e:   # a bad --config file, named with its key
        sys.exit(f"merge.py: error: {e}")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
# Reading checkpoints: our own header parse, then one positioned read per tensor

# safetensors dtype names (https://github.com/huggingface/safetensors, format section).
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file (without __metadata__) and the byte offset where data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000 or n > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class Checkpoint:
    """One model directory: its config.json and where each tensor lies in its safetensors file(s)."""

    def __init__(self, path: str, role: str, reader: str = "pread"):
        self.path, self.role, self.reader = path, role, reader
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{role}: directory {path} does not exist")
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{role}: {config_path} is missing")
        with open(config_path) as f:
            self.config = json.load(f)
        index_path = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            weight_map, files = None, ["model.safetensors"]
        else:
            hint = " (it has pytorch_model.bin: re-save with safetensors)" if os.path.exists(
                os.path.join(path, "pytorch_model.bin")) else ""
            raise FileNotFoundError(f"{role}: no model.safetensors or model.safetensors.index.json in {path}{hint}")
        # name -> (file, torch dtype, shape, absolute start, absolute end)
        self.entries: dict[str, tuple[str, torch.dtype, tuple[int, ...], int, int]] = {}
        self.files = [os.path.join(path, f) for f in files]
        for file in self.files:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{role}: {index_path} names {os.path.basename(file)}, which is missing")
            header, data_start = read_header(file)
            size = os.path.getsize(file)
            for name, info in header.items():
                if info["dtype"] not in ST_DTYPES:
                    raise ValueError(f"{role}: tensor {name} in {file} has dtype {info['dtype']}, not supported")
                begin, end = (data_start + o for o in info["data_offsets"])
                dtype, shape = ST_DTYPES[info["dtype"]], tuple(info["shape"])
                if end > size or end - begin != math.prod(shape) * dtype.itemsize:
                    raise ValueError(f"{role}: tensor {name} in {file} has bad data offsets (file truncated?)")
                self.entries[name] = (file, dtype, shape, begin, end)
        if weight_map is not None:
            for name, file in weight_map.items():
                if self.entries.get(name, ("",))[0] != os.path.join(path, file):
                    raise ValueError(f"{role}: {index_path} puts {name} in {file}, which does not hold it")
        # Read in file order, then offset order: sequential reads of the base.
        self.names = sorted(self.entries, key=lambda n: (self.files.index(self.entries[n][0]), self.entries[n][3]))
        self._fds: dict[str, object] = {}

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor `name` in its stored dtype, or converted into `out` (a contiguous tensor of the same shape)."""
        file, dtype, shape, begin, end = self.entries[name]
        if self.reader == "mmap":
            from safetensors import safe_open

            if file not in self._fds:
                self._fds[file] = safe_open(file, framework="pt")
            t = self._fds[file].get_tensor(name)
            return t if out is None else out.copy_(t)
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        direct = out is not None and out.dtype == dtype
        t = out if direct else torch.empty(shape, dtype=dtype)
        buf = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
        done = 0
        while done < end - begin:  # one read returns at most about 2 GB on Linux
            n = os.preadv(self._fds[file], [buf[done:]], begin + done)
            if n <= 0:
                raise EOFError(f"{self.role}: {file} ended inside tensor {name}")
            done += n
        if out is not None and not direct:
            out.copy_(t)
            return out
        return t

    def close(self) -> None:
        for fd in self._fds.values():
            if isinstance(fd, int):
                os.close(fd)
        self._fds.clear()


def check_compatible(base: Checkpoint, experts: list[Checkpoint]) -> None:
    """Raise ValueError naming the first difference between the base and an expert that would make a merge wrong."""
    for e in experts:
        for key in ("architectures", "model_type"):
            if e.config.get(key) != base.config.get(key):
                raise ValueError(f"{e.role} has {key} {e.config.get(key)!r} but the base ({base.path}) has "
                                 f"{base.config.get(key)!r}")
        tb, te = base.config.get("tie_word_embeddings"), e.config.get("tie_word_embeddings")
        missing = [n for n in base.names if n not in e.entries]
        extra = [n for n in e.names if n not in base.entries]
        if (tb is not None and te is not None and tb != te) or any("lm_head" in n for n in missing + extra):
            raise ValueError(f"tied embeddings differ: {e.role} has tie_word_embeddings={te} and "
                             f"{'an' if any('lm_head' in n for n in e.names) else 'no'} lm_head tensor, but the base "
                             f"({base.path}) has {tb} and {'an' if any('lm_head' in n for n in base.names) else 'no'}"
                             f" lm_head tensor (a tied lm_head is stored once, as the input embedding)")
        if missing:
            raise ValueError(f"tensor {missing[0]} of the base ({base.path}) is missing from {e.role}")
        if extra:
            raise ValueError(f"tensor {extra[0]} of {e.role} is not in the base ({base.path})")
        for name in base.names:
            (_, db, sb, _, _), (_, de, se, _, _) = base.entries[name], e.entries[name]
            if sb != se:
                raise ValueError(f"tensor {name} has shape {list(se)} in {e.role} but {list(sb)} in the base "
                                 f"({base.path})")
            if db.is_floating_point != de.is_floating_point:
                raise ValueError(f"tensor {name} is {de} in {e.role} but {db} in the base ({base.path})")


# --------------------------------------------------------------------------------------------------------------------
# Per-tensor merge methods. D is a (N, *shape) fp32 tensor of task vectors delta_i, modified in place; a (N,) are the
# per-model weights. Each returns the merged task vector (added to theta_0 by the caller) and a dict of stats.


def tensor_seed(seed: int, model_index: int, name: str, salt: str) -> int:
    """Seed of one tensor's random mask: the first 8 bytes of sha256(f"{salt}:{seed}:{model_index}:{name}"),
    as a little-endian integer with the top bit cleared."""
    digest = hashlib.sha256(f"{salt}:{seed}:{model_index}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def uniform_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    """torch.rand(x.shape) in [0, 1) from a CPU generator seeded with `seed`."""
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def kth_largest(x: torch.Tensor, k: int) -> float:
    """The k-th largest value of x (1 = the maximum)."""
    flat = x.reshape(-1)
    return float(torch.kthvalue(flat, flat.numel() - k + 1).values)


def match_l1(masked: torch.Tensor, before: float) -> torch.Tensor:
    """Scale `masked` in place to L1 norm `before`, its norm before masking (unchanged when either norm is zero)."""
    after = float(masked.abs().sum())
    return masked.mul_(before / after) if before > 0 and after > 0 else masked


def dare_drop(delta: torch.Tensor, p: float, seed: int, rescale: str) -> torch.Tensor:
    """DARE (Yu et al. 2023, arXiv 2311.03099): m = [u >= p] with u = uniform_like(delta, seed), so each entry is
    dropped with probability p; returns delta * m / (1 - p) for rescale="inverse" (paper) or delta * m rescaled to
    delta's L1 norm for "l1" (mergekit)."""
    if p == 0.0:
        return delta
    keep = uniform_like(delta, seed).ge_(p)  # 1.0 where kept, 0.0 where dropped
    if rescale == "inverse":
        return delta.mul_(keep).div_(1.0 - p)
    before = float(delta.abs().sum())
    return match_l1(delta.mul_(keep), before)


def breadcrumbs_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795), per tensor: with n entries sorted by |delta|
    ascending, keep ranks [n_bot, n_bot + n_keep) where n_keep = int(density n), n_top = int(gamma n) and
    n_bot = max(0, n - n_keep - n_top); i.e. drop the gamma largest (outliers) and the smallest rest. As bounds:
    keep lo <= |delta| <= hi, lo and hi being the values at those ranks (ties at a bound are kept)."""
    n = delta.numel()
    n_keep = int(density * n)
    if n_keep >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if n_keep == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    n_bot = max(0, n - n_keep - int(gamma * n))
    a = delta.abs()
    lo = kth_largest(a, n - n_bot)  # the (n_bot+1)-th smallest
    hi = kth_largest(a, n - n_bot - n_keep + 1)  # the (n_bot+n_keep)-th smallest
    return (a >= lo) & (a <= hi)


def della_prune(delta: torch.Tensor, density: float, epsilon: float, seed: int, rescale: str) -> torch.Tensor:
    """DELLA MagPrune (Deep et al. 2024, arXiv 2406.11617). Within each row (the last dim; a 1-D tensor is one row),
    rank entries by |delta| ascending, r = rank / (n - 1) in [0, 1] (stable sort; 0.5 when n = 1), keep probability
    q = density - epsilon + 2 epsilon r, keep m = [u < q] with u = uniform_like(delta, seed). Returns
    delta * m / q for rescale="inverse" (paper) or delta * m at delta's L1 norm for "l1" (mergekit)."""
    if delta.numel() == 0:
        return delta
    rows = delta.reshape(-1, delta.shape[-1]) if delta.dim() > 0 else delta.reshape(1, 1)
    u = uniform_like(delta, seed).reshape(rows.shape)
    before = float(delta.abs().sum())
    n = rows.shape[1]
    ramp = torch.arange(n, dtype=torch.float32) / (n - 1) if n > 1 else torch.full((1,), 0.5)
    step = max(1, (1 << 22) // max(n, 1))  # rows per block: bounds the int64 sort buffers to ~4M entries
    for r0 in range(0, rows.shape[0], step):
        block = rows[r0:r0 + step]
        order = block.abs().argsort(dim=1, stable=True)
        q = torch.empty_like(block).scatter_(1, order, ramp.expand_as(block).contiguous())
        q.mul_(2 * epsilon).add_(density - epsilon)
        keep = u[r0:r0 + step] < q
        if rescale == "inverse":
            block.mul_(keep).div_(q)
        else:
            block.mul_(keep)
    return delta if rescale == "inverse" else match_l1(delta, before)


class SignCounter:
    """Fraction of positions where some delta_i is positive and another negative, fed one delta_i at a time:
    two bool tensors of the shape, not an (N, *shape) temporary."""

    def __init__(self):
        self.pos = self.neg = None

    def add(self, d: torch.Tensor) -> None:
        if self.pos is None:
            self.pos, self.neg = d > 0, d < 0
        else:
            self.pos |= d > 0
            self.neg |= d < 0

    def both(self) -> torch.Tensor:
        """Where some delta_i was positive and another negative (consumes the counter)."""
        return self.pos.logical_and_(self.neg)

    def fraction(self) -> float:
        if self.pos is None or self.pos.numel() == 0:
            return 0.0
        return int(torch.count_nonzero(self.both())) / self.pos.numel()


LINEAR = ("average", "task_arithmetic", "dare", "breadcrumbs")


def linear_merge(cfg: Config, name: str, deltas: typing.Iterable[torch.Tensor], a: torch.Tensor
                 ) -> tuple[torch.Tensor, dict]:
    """The merged task vector of the methods that add (possibly sparsified) task vectors: average, task_arithmetic,
    dare and breadcrumbs. `deltas` yields delta_0, ..., delta_{N-1} one at a time (it may reuse one buffer, which
    is modified in place), so memory holds one delta, the running sum and two sign masks, never all N deltas.
    The sum runs in model order, a_0 delta_0 + a_1 delta_1 + ..., the same rounding as summing a stacked tensor."""
    m, unit = cfg.method, bool((a == 1).all())
    acc, kept, signs = None, [], SignCounter()
    for i, d in enumerate(deltas):
        if m == "dare":
            dare_drop(d, cfg.p, tensor_seed(cfg.seed, i, name, "dare"), cfg.rescale)
        elif m == "breadcrumbs":
            d.mul_(breadcrumbs_mask(d, cfg.crumbs_density, cfg.crumbs_gamma))
        kept.append(int(torch.count_nonzero(d)) / max(1, d.numel()))
        signs.add(d)
        if not unit:
            d = d.mul_(a[i])
        acc = d.clone() if acc is None else acc.add_(d)
    stats = {"kept": kept, "sign_conflict": signs.fraction()}
    if m == "average":
        return acc.div_(float(a.sum())), stats
    return acc.mul_(cfg.lam), stats


def vote_total(D: torch.Tensor, a: torch.Tensor, elect: str) -> torch.Tensor:
    """sum_i v_i, the votes of the TIES sign election: v_i = a_i delta_i (elect="weighted") or delta_i
    ("unweighted"). For "weighted" with weights not all 1, D is scaled to the v_i in place."""
    if elect == "weighted" and not bool((a == 1).all()):
        D.mul_(a.reshape((-1,) + (1,) * (D.dim() - 1)))
    return D.sum(0)


def elect_combine(D: torch.Tensor, a: torch.Tensor, elect: str, disjoint: str, tie: float = 1.0
                  ) -> tuple[torch.Tensor, list, float, float]:
    """TIES sign election and disjoint merge (Yadav et al. 2023, arXiv 2306.01708) on sparsified task vectors D.
    Votes v_i as in vote_total; elected sign s = sign(sum_i v_i), and s = tie where that sum is exactly 0
    (tie = +1 as in mergekit; the model-wide majority sign, +1, -1 or 0, as in MergeLM, see majority_sign);
    m_i = [v_i s > 0] (zeros never agree, nor does anything where s = 0). Result sum_i m_i a_i delta_i /
    sum_i m_i a_i for disjoint="mean" (a zero divisor counts as 1), or sum_i m_i a_i delta_i for "sum". Returns it,
    the fraction of each delta_i kept, the fraction of positions where the v_i have both signs, and the fraction
    where they have both signs and sum to exactly 0 (the positions the tie rule decides)."""
    w = a.reshape((-1,) + (1,) * (D.dim() - 1))
    unit = bool((a == 1).all())
    total = vote_total(D, a, elect)   # D now holds v_i (in place: one (N, *shape) buffer per tensor)
    elected = torch.sign(total)
    elected.masked_fill_(total == 0, tie)
    signs = SignCounter()
    for i in range(D.shape[0]):
        signs.add(D[i])
    both = signs.both()
    n = max(1, total.numel())
    conflict = int(torch.count_nonzero(both)) / n
    zero_sum = int(torch.count_nonzero(both.logical_and_(total == 0))) / n
    del total, both, signs
    agree = torch.empty(D.shape, dtype=torch.bool)
    scratch = torch.empty(D.shape[1:])
    for i in range(D.shape[0]):  # agree_i = [v_i * s > 0]: the same sign as elected, and nonzero
        torch.gt(torch.mul(D[i], elected, out=scratch), 0, out=agree[i])
    if elect != "weighted" and not unit:
        D.mul_(w)
    merged = D.mul_(agree).sum(0)
    kept = [int(torch.count_nonzero(agree[i])) / max(1, agree[i].numel()) for i in range(D.shape[0])]
    if disjoint == "mean":
        if unit and D.shape[0] < 256:  # counting through a uint8 view: far faster than a bool reduction on CPU
            divisor = agree.view(torch.uint8).sum(0, dtype=torch.uint8).to(torch.float32)
        else:   # sum_i agree_i a_i, one model at a time (agree_i a_i is exact, so the order of adding is as stacked)
            divisor = torch.zeros(D.shape[1:])
            for i in range(D.shape[0]):
                divisor.add_(torch.mul(agree[i], a[i], out=scratch))
        divisor[divisor == 0] = 1.0
        merged.div_(divisor)
    return merged, kept, conflict, zero_sum


def sce_combine(D: torch.Tensor, select: float) -> tuple[torch.Tensor, dict]:
    """SCE (FuseChat, Wan et al. 2024, arXiv 2408.07990), per tensor. Select: if select < 1, keep the positions
    whose variance across models (population variance) is among the top int(select * #nonzero-variance) (ties at
    the threshold kept) and zero the rest in every delta_i. Calculate: e_i = mean(delta_i^2),
    w_i = e_i / sum_j e_j (uniform if all are zero). Erase: s = +1 where sum_i delta_i >= 0 else -1,
    m_i = [sign(delta_i) == s]. Result sum_i w_i m_i delta_i / sum_i w_i m_i (zero divisor counts as 1)."""
    stats: dict = {}
    if select < 1.0:
        var = D.var(0, unbiased=False)
        k = int(select * int(torch.count_nonzero(var)))
        keep = var >= kth_largest(var, k) if k > 0 else torch.zeros_like(var, dtype=torch.bool)
        keep &= var > 0
        D.mul_(keep)
        stats["selected"] = float(keep.float().mean())
    energy = D.reshape(D.shape[0], -1).square().mean(1)   # batched: the same rounding as mergekit's SCE
    w = energy / energy.sum() if float(energy.sum()) > 0 else torch.full_like(energy, 1.0 / D.shape[0])
    merged, kept, conflict, _ = elect_combine(D, w, "unweighted", "mean")   # ties go to +, as in mergekit
    stats.update(weights=[float(x) for x in w], kept=kept, sign_conflict=conflict)
    return merged, stats


def model_stock_combine(D: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Model Stock (Jang et al. 2024, arXiv 2403.19522), per tensor: cos = mean over pairs i < j of
    <delta_i, delta_j> / (|delta_i| |delta_j|) (a pair with a zero vector counts 0), t = N cos / (1 + (N-1) cos)
    (t = 0 where |1 + (N-1) cos| < 1e-6), result t * mean_i delta_i, i.e. theta = (1-t) theta_0 + t mean_i theta_i."""
    N = D.shape[0]
    flat = D.reshape(N, -1)
    norms = flat.norm(dim=1)
    cosines = []
    for i in range(N):
        for j in range(i + 1, N):
            denom = float(norms[i] * norms[j])
            cosines.append(min(1.0, max(-1.0, float(flat[i] @ flat[j]) / denom)) if denom > 0 else 0.0)
    cos = sum(cosines) / len(cosines)
    den = 1 + (N - 1) * cos
    t = N * cos / den if abs(den) >= 1e-6 else 0.0
    return D.mean(0).mul_(t), {"cos": cos, "t": t}


def tsv_combine(D: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """TSV-Merge (Gargiulo et al. 2025, arXiv 2412.00081), per 2-D tensor of shape (m, n), r = min(m, n),
    k = r // N: delta_i = U_i S_i V_i^T (thin SVD); U = [U_1[:, :k], ..., U_N[:, :k]], S = [S_1[:k], ...],
    V = [V_1[:, :k], ...]; orthogonalise U -> P Q^T where U = P Sigma Q^T (thin SVD), likewise V; result
    U_perp diag(S) V_perp^T. Tensors that are not 2-D get the mean of the delta_i, as in the reference code."""
    if D.dim() != 3:
        return D.mean(0), {}
    N, m, n = D.shape
    k = min(m, n) // N
    if k == 0:
        return torch.zeros_like(D[0]), {"rank_per_model": 0}
    U, S, Vh = torch.empty(m, N * k), torch.empty(N * k), torch.empty(N * k, n)
    for i in range(N):
        u, s, vh = torch.linalg.svd(D[i], full_matrices=False)
        U[:, i * k:(i + 1) * k], S[i * k:(i + 1) * k], Vh[i * k:(i + 1) * k] = u[:, :k], s[:k], vh[:k]
    P, _, Qh = torch.linalg.svd(U, full_matrices=False)
    P2, _, Q2h = torch.linalg.svd(Vh, full_matrices=False)
    return ((P @ Qh) * S) @ (P2 @ Q2h), {"rank_per_model": k}


SPARSE_ELECT = ("ties", "dare_ties", "dare_ties_trim", "della")   # sparsify each delta_i, then elect_combine


def sparsify(cfg: Config, name: str, i: int, d: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """The per-model step of the SPARSE_ELECT methods on delta_i of tensor `name`, in place: the DARE drop
    (dare_ties, dare_ties_trim), then the TIES trim (ties, dare_ties_trim) to |d| >= threshold (the whole-model
    cut-off of model i) or, when threshold is None, to |d| >= the int(top_k n)-th largest |d| of the tensor; or
    DELLA's MagPrune (della)."""
    m = cfg.method
    if m in ("dare_ties", "dare_ties_trim"):
        dare_drop(d, cfg.p, tensor_seed(cfg.seed, i, name, "dare"), cfg.rescale)
    if m in ("ties", "dare_ties_trim") and cfg.top_k < 1.0 and d.numel():
        tau = threshold if threshold is not None else kth_largest(d.abs(), max(1, int(cfg.top_k * d.numel())))
        d.masked_fill_(d.abs() < tau, 0.0)
    elif m == "della":
        della_prune(d, cfg.della_density, cfg.della_epsilon, tensor_seed(cfg.seed, i, name, "della"), cfg.rescale)
    return d


def merge_tensor(cfg: Config, name: str, D: torch.Tensor, a: torch.Tensor,
                 thresholds: list[float] | None, tie: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The merged task vector of one tensor (to add to theta_0) from its task vectors D (N, *shape), and stats.
    thresholds: per-model whole-model TIES cut-offs, or None to rank within this tensor. tie: the elected sign where
    the votes sum to 0 (see elect_combine)."""
    N = D.shape[0]
    m = cfg.method
    if m in LINEAR:
        return linear_merge(cfg, name, (D[i] for i in range(N)), a)
    if m in SPARSE_ELECT:
        for i in range(N):
            sparsify(cfg, name, i, D[i], thresholds[i] if thresholds is not None else None)
        merged, kept, conflict, zero_sum = elect_combine(D, a, cfg.elect, cfg.disjoint, tie)
        return merged.mul_(cfg.lam), {"kept": kept, "sign_conflict": conflict, "sign_tie": zero_sum}
    if m == "sce":
        merged, stats = sce_combine(D, cfg.sce_select)
        return merged.mul_(cfg.lam), stats
    if m == "model_stock":
        return model_stock_combine(D)
    if m == "tsv":
        merged, stats = tsv_combine(D)
        return merged.mul_(cfg.lam), stats
    raise ValueError(f"unknown method {m!r}")


# --------------------------------------------------------------------------------------------------------------------
# Whole-model TIES threshold: the exact k-th largest |delta_i| over all tensors, found by a two-pass radix select.
# A non-negative fp32 value orders like its bit pattern read as int32, so pass 1 counts the top 16 bits (65536 bins)
# to find the bin holding the k-th largest, and pass 2 counts the low 15 bits of the entries in that bin. Memory: two
# histograms per model, never a whole model.

HIGH_SHIFT, LOW_BITS = 15, (1 << 15) - 1


def abs_bits(x: torch.Tensor) -> torch.Tensor:
    """|x| of an fp32 tensor as int32 bit patterns (monotone in |x|), computed in place."""
    return x.abs_().reshape(-1).view(torch.int32)


def count_high(bits: torch.Tensor, hist: torch.Tensor) -> None:
    """Pass 1: add the histogram of the top 16 bits of `bits` to hist (65536 bins). Overwrites bits."""
    hist += torch.bincount(bits.bitwise_right_shift_(HIGH_SHIFT), minlength=1 << 16)


def count_low(bits: torch.Tensor, high_bin: int, hist: torch.Tensor) -> None:
    """Pass 2: add the histogram of the low 15 bits of the entries whose top bits are high_bin (32768 bins)."""
    lo = high_bin << HIGH_SHIFT
    inside = bits[(bits >= lo) & (bits <= lo + LOW_BITS)]
    hist += torch.bincount(inside.bitwise_and_(LOW_BITS), minlength=1 << HIGH_SHIFT)


def bits_to_float(high_bin: int, low_bin: int) -> float:
    return torch.tensor([(high_bin << HIGH_SHIFT) | low_bin], dtype=torch.int32).view(torch.float32).item()


def pick_bin(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value (bins in increasing value order) and its rank within the bin."""
    above = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(above, k))
    return len(counts) - 1 - j, k - (int(above[j - 1]) if j > 0 else 0)


def kth_largest_abs(chunks: typing.Callable[[], typing.Iterable[torch.Tensor]], k: int) -> float:
    """The k-th largest |x| over all fp32 tensors that chunks() yields, in two streaming passes (chunks() is
    called twice). This is the selection rule whole_model_thresholds applies to each model."""
    high = torch.zeros(1 << 16, dtype=torch.int64)
    for x in chunks():
        count_high(abs_bits(x.clone()), high)
    b, rank = pick_bin(high, k)
    low = torch.zeros(1 << HIGH_SHIFT, dtype=torch.int64)
    for x in chunks():
        count_low(abs_bits(x.clone()), b, low)
    return bits_to_float(b, pick_bin(low, rank)[0])


def whole_model_thresholds(cfg: Config, base: Checkpoint, experts: list[Checkpoint], names: list[str]) -> list[float]:
    """Per expert i, the TIES cut-off over all floating tensors with MergeLM's rank: the m-th smallest |delta_i|,
    m = int(n (1 - top_k)) for n entries (MergeLM's param_value_mask_rate is 1 - top_k), so that keeping
    |delta_i| >= it keeps at least n - m + 1 entries; 0.0 (keep everything) when m = 0. For dare_ties_trim, delta_i
    is DARE-dropped first, with the same seeded masks as the merge."""
    N = len(experts)
    n_total = sum(math.prod(base.entries[n][2]) for n in names)
    m = int(n_total * (1 - cfg.top_k))
    if m == 0:
        return [0.0] * N
    ks = [n_total - m + 1] * N   # the m-th smallest is the (n - m + 1)-th largest
    high = torch.zeros(N, 1 << 16, dtype=torch.int64)
    low = torch.zeros(N, 1 << HIGH_SHIFT, dtype=torch.int64)
    bins: list[int] = []
    for pass_ in (1, 2):
        if pass_ == 2:
            picks = [pick_bin(high[i], ks[i]) for i in range(N)]
            bins, ranks = [p[0] for p in picks], [p[1] for p in picks]
        for name in tqdm(names, desc=f"ties threshold pass {pass_}/2", unit="tensor", leave=False):
            b = base.read(name, torch.empty(base.entries[name][2]))
            d = torch.empty_like(b)
            for i, e in enumerate(experts):
                e.read(name, d).sub_(b)
                if cfg.method == "dare_ties_trim":
                    dare_drop(d, cfg.p, tensor_seed(cfg.seed, i, name, "dare"), cfg.rescale)
                bits = abs_bits(d)
                if pass_ == 1:
                    count_high(bits, high[i])
                else:
                    count_low(bits, bins[i], low[i])
    return [bits_to_float(bins[i], pick_bin(low[i], ranks[i])[0]) for i in range(N)]


def majority_sign(cfg: Config, base: Checkpoint, experts: list[Checkpoint], names: list[str], a: torch.Tensor,
                  thresholds: list[float] | None) -> tuple[float, int, int]:
    """MergeLM's sign for zero-sum ties (get_param_signs): over every position of every floating tensor, the elected
    sign sign(sum_i v_i) of the sparsified deltas, computed as merge_tensor computes it. Returns sign(#+ - #-)
    (+1, -1, or 0 when they are equal) and the two counts. One more read of every model."""
    pos = neg = 0
    for name in tqdm(names, desc="sign majority", unit="tensor", leave=False):
        shape = base.entries[name][2]
        b = base.read(name, torch.empty(shape))
        D = torch.empty((len(experts), *shape))
        for i, e in enumerate(experts):
            sparsify(cfg, name, i, e.read(name, D[i]).sub_(b), thresholds[i] if thresholds is not None else None)
        total = vote_total(D, a, cfg.elect)
        pos += int(torch.count_nonzero(total > 0))
        neg += int(torch.count_nonzero(total < 0))
        del D, total
    return float((pos > neg) - (pos < neg)), pos, neg


# --------------------------------------------------------------------------------------------------------------------
# Writing: the safetensors layout is planned from the shapes, so each shard's header is written first and every
# merged tensor is appended as soon as it is computed (one output tensor in memory, never a whole shard).


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Split (name, nbytes) in order into consecutive shards of at most max_bytes (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def safetensors_header(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    """8-byte length + JSON header (padded with spaces to 8 bytes) for tensors stored back to back in this order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


WEIGHT_FILES = ("model.safetensors.index.json", "merge_report.json", "pytorch_model.bin.index.json")


def is_side_file(name: str) -> bool:
    """What a loadable HF model needs besides its weights: config, generation config, tokenizer files, chat
    template. Anything else in the base folder (a train.py run's run.json or metrics.jsonl) is not copied."""
    return (name in ("config.json", "generation_config.json", "chat_template.jinja", "chat_template.json")
            or name.startswith(("tokenizer", "special_tokens_map", "added_tokens", "vocab.", "merges.txt"))
            or name.endswith((".model", ".tiktoken")))


def copy_side_files(src: str, dst: str, dtype_name: str | None) -> None:
    """Copy the base directory's side files (see is_side_file), setting config.json's dtype when the output
    dtype was chosen."""
    for entry in os.listdir(src):
        path = os.path.join(src, entry)
        if os.path.isfile(path) and is_side_file(entry) and entry not in WEIGHT_FILES:
            shutil.copy2(path, os.path.join(dst, entry))
    if dtype_name is not None:
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]
        for k in keys:
            config[k] = dtype_name
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Main


def main(cfg: Config) -> dict:
    """Run the merge described by cfg; return the report that is also written to <out>/merge_report.json."""
    t_start = time.time()
    if not cfg.base or not cfg.models:
        base, models = find_experts(cfg.runs)
        cfg = dataclasses.replace(cfg, base=cfg.base or base, models=cfg.models or models)
        print(f"merging the {len(cfg.models)} single-domain runs in {cfg.runs}/ ({', '.join(cfg.models)}) against "
              f"their common base {cfg.base}")
    cfg = dataclasses.replace(cfg, out=cfg.out or os.path.join(cfg.runs, f"merge-{cfg.method}"))
    try:   # these only check the request (flags, folders, checkpoint headers): their errors are the user's
        weights = check_config(cfg)
        out_dir = os.path.abspath(cfg.out)
        if os.path.exists(out_dir) and not cfg.overwrite:
            raise UserError(f"--out {cfg.out} exists; pass --overwrite to replace it")
        base = Checkpoint(cfg.base, f"the base ({cfg.base})", cfg.reader)
        experts = [Checkpoint(p, f"model {i} ({p})", cfg.reader) for i, p in enumerate(cfg.models)]
        check_compatible(base, experts)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(asdict(cfg)), flush=True)

    hasher = ThreadPoolExecutor(max_workers=1)  # sha256 releases the GIL: hashing overlaps the merge
    hashes = {f: hasher.submit(sha256_file, f) for c in [base, *experts] for f in c.files} if cfg.hash_inputs else {}
    names = base.names
    floats = [n for n in names if base.entries[n][1].is_floating_point]
    chosen = None if cfg.dtype == "base" else getattr(torch, cfg.dtype)
    out_dtype = {n: chosen if chosen is not None and n in floats else base.entries[n][1] for n in names}
    shapes = {n: base.entries[n][2] for n in names}
    sizes = [(n, math.prod(shapes[n]) * out_dtype[n].itemsize) for n in names]
    shards = plan_shards(sizes, int(cfg.max_shard_gb * 1e9))
    files = (["model.safetensors"] if len(shards) == 1
             else [f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors" for j in range(len(shards))])

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        thresholds = None
        if cfg.method in ("ties", "dare_ties_trim") and cfg.trim_scope == "model" and cfg.top_k < 1.0:
            thresholds = whole_model_thresholds(cfg, base, experts, floats)
        a = torch.tensor(weights, dtype=torch.float32)
        tie, votes = 1.0, None
        if cfg.method in SPARSE_ELECT and cfg.sign_tie == "majority":
            tie, n_pos, n_neg = majority_sign(cfg, base, experts, floats, a, thresholds)
            votes = {"tie_sign": tie, "positions_elected_plus": n_pos, "positions_elected_minus": n_neg}
        stats: dict[str, dict] = {}
        err_sq = upd_sq = 0.0
        bar = tqdm(total=len(names), desc=f"merge {cfg.method}", unit="tensor")
        for file, shard in zip(files, shards):
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(safetensors_header([(n, out_dtype[n], shapes[n]) for n in shard]))
                for name in shard:
                    if name in floats:
                        b = base.read(name, torch.empty(shapes[name]))
                        if cfg.method in LINEAR:   # one expert's delta in memory at a time
                            buf = torch.empty(shapes[name])
                            update, st = linear_merge(cfg, name, (e.read(name, buf).sub_(b) for e in experts), a)
                            del buf
                        else:   # the other methods need every delta_i of the tensor at once
                            D = torch.empty((len(experts), *shapes[name]))
                            for i, e in enumerate(experts):
                                e.read(name, D[i]).sub_(b)
                            update, st = merge_tensor(cfg, name, D, a, thresholds, tie)
                            del D
                        merged = update.add_(b)
                        del update
                        result = merged.to(out_dtype[name])  # merged itself when the dtype is already fp32
                        # How much of the merged update (merged - base, in fp32) the output dtype rounded away.
                        e2 = 0.0 if result is merged else float(torch.dist(result.float(), merged)) ** 2
                        u2 = float(torch.dist(merged, b)) ** 2
                        err_sq, upd_sq = err_sq + e2, upd_sq + u2
                        st.update(numel=b.numel(), update_norm=math.sqrt(u2),
                                  dtype_rel_err=math.sqrt(e2 / u2) if u2 > 0 else (0.0 if e2 == 0 else None))
                        del merged, b
                    else:  # integer buffers: the base's value
                        result, st = base.read(name), {"copied_from_base": True}
                    stats[name] = st
                    f.write(result.reshape(-1).view(torch.uint8).numpy().data if result.numel() else b"")
                    del result
                    bar.update(1)
        bar.close()

        if len(files) > 1:
            index = {"metadata": {"total_size": sum(s for _, s in sizes)},
                     "weight_map": {n: file for file, shard in zip(files, shards) for n in shard}}
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)
        copy_side_files(cfg.base, tmp, None if chosen is None else cfg.dtype)

        numel = {n: stats[n]["numel"] for n in floats}
        total = sum(numel.values()) or 1
        kept = [sum(stats[n]["kept"][i] * numel[n] for n in floats if "kept" in stats[n]) / total
                for i in range(len(experts))] if all("kept" in stats[n] for n in floats) else None
        update_loss = math.sqrt(err_sq / upd_sq) if upd_sq > 0 else 0.0
        report = {
            "config": asdict(cfg),
            "method": cfg.method,
            "seed": cfg.seed,
            "weights": weights,
            "ties_thresholds": thresholds,
            "sign_majority": votes,
            "inputs": {c.path: {os.path.basename(f): (hashes[f].result() if f in hashes else None)
                                for f in c.files} for c in [base, *experts]},
            "output": {"files": files, "dtype": cfg.dtype, "total_bytes": sum(s for _, s in sizes)},
            "summary": {
                "kept": kept,
                "sign_conflict": sum(stats[n].get("sign_conflict", 0.0) * numel[n] for n in floats) / total,
                # positions whose votes summed to exactly 0 with both signs present: where --sign-tie decided
                "sign_tie": (sum(stats[n]["sign_tie"] * numel[n] for n in floats) / total
                             if cfg.method in SPARSE_ELECT else None),
                "update_norm": math.sqrt(upd_sq),
                "update_rel_err_from_dtype": update_loss,
            },
            "tensors": stats,
            "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
            "wall_s": time.time() - t_start,   # the cost table of analyze.py report reads it
        }
        with open(os.path.join(tmp, "merge_report.json"), "w") as f:
            json.dump(report, f, indent=1)
        if os.path.exists(out_dir):  # --overwrite: swap only now that the new merge is complete
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hasher.shutdown(cancel_futures=True)
        base.close()
        for e in experts:
            e.close()

    if update_loss > cfg.warn_update_loss:
        print(f"warning: the {cfg.dtype} output lost {update_loss:.1%} of the merged update (relative L2 error of "
              f"merged - base); RL updates are small and low-precision rounding can erase them: try --dtype float32",
              file=sys.stderr)
    print(f"wrote {cfg.out}: {len(names)} tensors in {len(files)} file(s); update norm {math.sqrt(upd_sq):.4g}, "
          f"lost to output dtype {update_loss:.2%}" + (f", kept per model {[round(k, 4) for k in kept]}" if kept
                                                       else ""))
    return report


if __name__ == "__main__":
    run(main, CFG, "merge.py")
