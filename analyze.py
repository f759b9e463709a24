"""Evaluation and the paper's analyses (M2RL, arXiv 2602.12566): accuracy per model and benchmark,
weight-update geometry, the cross-domain KL matrix and the consistency of gains. `report` gathers them into
one report.md with bootstrap intervals (report.py) and plots (plots.py).

Subcommands, in the order a study runs them (eval, weights, kl and consistency write to --out, default
out/analysis):

    # avg@k / pass@k of each model on the embedded eval split of every domain, HumanEval and benchmark files
    python analyze.py eval --models base=tiny math=out/math code=out/code mixed=out/mixed ties=out/ties \
        --benchmarks embedded humaneval aime24=data/aime24.jsonl --k 4
    # IFBench (the paper's IF benchmark) from a local copy of IFBench_test.jsonl, with the paper's graders
    python analyze.py eval --models mixed=out/mixed --benchmarks ifbench=IFBench_test.jsonl --domains if --grader paper
    # which weights RL moved, how the experts' updates overlap and align (streamed tensor by tensor)
    python analyze.py weights --base Qwen/Qwen3-4B-Base --models math=out/math code=out/code mixed=out/mixed
    # every expert samples every domain's prompts; on each, KL(expert || every model) (paper Figure 4)
    python analyze.py kl --experts math=out/math code=out/code --multitask out/mixed --merged ties=out/ties
    # are the mixed / merged model's per-problem gains the union of the experts' gains? (paper Figure 5)
    python analyze.py consistency --base base --experts math code --models mixed ties
    # self-verification (paper Table 7): each model judges its own responses, outcome and process mode
    python analyze.py verify --models base=tiny math=out/math mixed=out/mixed --n-problems 16 --k 2
    # report.md with every table and plot, in out/analysis; runs the analyses above that are missing
    python analyze.py report --runs out
    # the same experiment run with several seeds: one report, intervals on the seed-averaged rewards
    python analyze.py report --runs out/exp/seed_0/runs out/exp/seed_1/runs \
        --analyses out/exp/seed_0/report out/exp/seed_1/report --out out/exp/report

Lists take spaces or commas (`--models a=x b=y` or `--models a=x,b=y`). A model is name=path, or a bare path
or preset whose last folder is its name. A path that looks local (it starts with '.', '/' or '~', names an
existing path, or its first folder exists here, like out/math) must be a model folder (config.json,
safetensors weights, a tokenizer) and is never looked up on the HF hub; "org/name" otherwise is a hub id,
read from the HF cache. --device auto takes cuda when present (bf16 weights there, fp32 on CPU). `weights` on
a 4B model reads one tensor slice per model at a time; use --device cuda to make its random projections
fast, or --proj-seeds (an empty list) to skip them.

Where these analyses differ from the paper, or could not be checked against it:
- kl: every (domain A, expert B) cell of the paper's Figure 4, as the project's issue 13 describes it: every
  expert samples every domain's prompts, and KL(expert_B || model) is taken on those trajectories, with a
  ΔPerf row. The paper's own text could not be read here to check three details, chosen as follows: the KL
  is the exact full-vocabulary token-level KL averaged over the sampling expert's completion tokens
  (temperature 1); ΔPerf is the model's avg@k on domain A minus that of A's expert; the figure puts domains
  in columns and experts in rows.
- consistency: per benchmark (the paper's unit), plus a domain's pooled problems where they are not one
  benchmark's; all-zero gains give cosine 0, not undefined.
- verify: the paper publishes neither its judge prompts nor its verdict parsing; data/judge.py's are a
  reconstruction. The judge decodes greedily (the paper does not say how it samples); an unparseable verdict
  counts as wrong in accuracy and in both class rates, and balanced accuracy is reported beside accuracy, since
  accuracy alone moves with the share of correct responses. An expert is judged on its own domain, any other
  model on every domain.

A mistake in what was asked for (a missing folder, a model folder without weights, an unknown domain) prints
one line and exits with status 1; a traceback means a bug. torch, transformers (model.py) and matplotlib
(plots.py) are imported only by the functions that use them, so --help and such errors take well under 2 s.
"""

import csv
import io
import json
import math
import os
import re
import sys
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro
from safetensors import safe_open
from tqdm import tqdm

import data
import verifiers
from data import judge
from cli import Names, UserError, looks_local  # noqa: F401  (tests and report.py use analyze.UserError)
# stats.py holds the helpers plots.py and report.py share with this module; re-exported for code that reads them
# here (analyze.write_json, analyze.fmt)
from stats import clean_json, fmt, md_table, read_json, read_jsonl, sig, write_atomic, write_json  # noqa: F401


# ----------------------------------------------------------------------------------------------------------
# Shared helpers: named model specs and their checks (JSON, formatting and tables: stats.py)
# ----------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_named(specs: list[str], what: str = "model") -> dict[str, str]:
    """["math=out/math", "out/code", "tiny"] -> {"math": "out/math", "code": "out/code", "tiny": "tiny"}."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec.rstrip("/")).name or spec
        if not name or not path:
            raise UserError(f"bad {what} spec {spec!r}: expected name=path or a path")
        if name in named:
            raise UserError(f"{what} name {name!r} given twice ({named[name]!r} and {path!r}); use name=path")
        named[name] = path
    return named


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model(name: str, spec: str, what: str = "model", tokenizer: bool = True) -> str:
    """The spec to load: a local one expanded (~) and checked to be a model folder, so that a wrong path fails
    here in one line rather than deep in transformers (an empty folder there ends in a hint to install
    sentencepiece). A preset ("tiny") or hub id is returned as it is, for model.py to load."""
    if not looks_local(spec):
        return spec
    p = Path(spec).expanduser()
    if not p.exists():
        raise UserError(f"{what} {name!r}: no such folder {spec}")
    if not p.is_dir():
        raise UserError(f"{what} {name!r}: {spec} is a file; give the model's folder")
    missing = [] if (p / "config.json").exists() else ["config.json"]
    if not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        missing.append("weights (*.safetensors)")
    if tokenizer and not any((p / f).exists() for f in TOKENIZER_FILES):
        missing.append("tokenizer files")
    if missing:
        raise UserError(f"{what} {name!r}: {spec} is not a model folder, it has no {' and no '.join(missing)} "
                        "(a training run's folder holds its model once the run has finished)")
    return str(p)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_policy(path: str, device: str):
    """A model from model.py on `device`: bf16 on GPU, fp32 on CPU (bf16 on CPU is slow and imprecise)."""
    import torch
    import model
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return model.load_model(path, dtype=dtype).to(device).eval()


def load_named(name: str, spec: str, device: str, tokenizer: bool = True):
    """(tokenizer or None, model) of a spec that check_model passed. A preset or hub id that cannot be loaded
    (not in the HF cache, no network, no such repository) is a UserError."""
    import model
    try:
        return model.load_tokenizer(spec) if tokenizer else None, load_policy(spec, device)
    except (OSError, UserError) as e:   # transformers: OSError for a missing hub model; model.py: UserError
        raise UserError(f"model {name!r}: cannot load {spec!r}: {first_line(e)}") from None


# ----------------------------------------------------------------------------------------------------------
# eval: avg@k and pass@k per model x benchmark, per-problem rewards kept for `consistency` and `report`
# ----------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021,
    arXiv 2107.03374): the chance that k samples drawn without replacement from the n include a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize_eval(records: list[dict]) -> tuple[dict, dict]:
    """Per-problem records -> (table, by_domain).

    table[model][benchmark] = {"avg@k", "pass@1", "pass@k", "k", "n"}: avg@k is the mean reward over the
    k samples and the problems; a sample counts as correct for pass@k when its reward is 1 (a partial
    instruction-following score is not a pass). by_domain[model][domain] is avg@k over every problem of
    that domain across benchmarks (what `kl` puts beside its matrix)."""
    groups, domains = defaultdict(list), defaultdict(list)
    for r in records:
        groups[(r["model"], r["benchmark"])].append(r["rewards"])
        domains[(r["model"], r["domain"])].append(float(np.mean(r["rewards"])))
    table = defaultdict(dict)
    for (name, bench), rewards in groups.items():
        k = min(len(x) for x in rewards)
        correct = [(len(x), sum(v >= 1.0 for v in x)) for x in rewards]
        table[name][bench] = {
            "avg@k": float(np.mean([np.mean(x) for x in rewards])),
            "pass@1": float(np.mean([pass_at_k(n, c, 1) for n, c in correct])),
            "pass@k": float(np.mean([pass_at_k(n, c, k) for n, c in correct])),
            "k": k,
            "n": len(rewards),
        }
    by_domain = defaultdict(dict)
    for (name, domain), accs in domains.items():
        by_domain[name][domain] = float(np.mean(accs))
    return dict(table), dict(by_domain)


def eval_tables(table: dict, models: list[str]) -> tuple[str, str]:
    """Markdown and CSV tables, models x benchmarks, like the paper's main table (plus a mean column)."""
    benches = list(dict.fromkeys(b for name in models for b in table.get(name, {})))  # in the order evaluated
    k = max((v["k"] for name in models for v in table.get(name, {}).values()), default=0)
    md = f"avg@{k} (mean reward over {k} samples per problem):\n\n"
    rows, pass_rows, csv_rows = [], [], []
    for name in models:
        cells = [table.get(name, {}).get(b) for b in benches]
        avg = [c["avg@k"] if c else None for c in cells]
        pas = [c["pass@k"] if c else None for c in cells]
        mean = float(np.mean(avg)) if avg and None not in avg else None
        rows.append([name, *avg, mean])
        pass_rows.append([name, *pas])
        csv_rows.append([name] + [fmt(v, 4) for pair in zip(avg, pas) for v in pair] + [fmt(mean, 4)])
    md += md_table(["model", *benches, "mean"], rows)
    md += f"\npass@{k} (unbiased estimator, a sample passes when its reward is 1):\n\n"
    md += md_table(["model", *benches], pass_rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model"] + [f"{b} {m}@{k}" for b in benches for m in ("avg", "pass")] + [f"mean avg@{k}"])
    writer.writerows(csv_rows)
    return md, buf.getvalue()


def load_benchmarks(specs: list[str], domains: list[str], n_problems: int | None, seed: int,
                    since: str | None = None, until: str | None = None) -> dict:
    """{benchmark name: rows}. "embedded" gives one benchmark per domain, "embedded/<domain>"; "humaneval" the
    164 HumanEval problems in task order (when code is among `domains`); anything else is any data spec that
    train.py's --data takes (a file, a folder, dir@split, a Hub id, stream:...), as name=spec or spec (named
    after its last part). since/until keep the rows dated in that window (LiveCodeBench's contest_date).
    n_problems keeps the first n of each."""
    benches = {}
    for spec in specs:
        if spec == "embedded":
            for d in domains:
                benches[f"embedded/{d}"] = data.embedded(d, "eval", n=n_problems, seed=seed)
            continue
        if spec == "humaneval":
            if "code" in domains:
                benches["humaneval"] = data.humaneval_rows()[:n_problems]   # [:None] keeps all
            continue
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec.removeprefix("stream:").rstrip("/")).name.split(".")[0]
        local = data.loaders.parse_spec(path)[0]
        if looks_local(local) and not Path(local).exists():   # a Hub id, stream: or dir@split goes to data.load
            raise UserError(f"benchmark {name!r}: no file {path} (known sets: embedded, humaneval)")
        try:
            rows = data.date_window(data.load(path, list(domains), "eval", seed=seed), since, until)
        except (ValueError, FileNotFoundError) as e:   # the loaders' errors name the file, line and field
            raise UserError(f"benchmark {name!r}: {e}") from None
        if not rows:
            raise UserError(f"benchmark {name!r}: {path} has no rows of domains {domains}")
        benches[name] = rows[:n_problems]
    return benches


def evaluate_rows(policy, tokenizer, rows: list[dict], *, k: int, max_new_tokens: int, temperature: float,
                  top_p: float, batch_size: int, seed: int, think: bool, workers: int, bar=None,
                  grader: str = "paper") -> list[dict]:
    """k samples per row, each graded by its domain's verifier -> one {"id", "domain", "rewards", "lengths",
    "truncated", "errors"} per row, and the row's "kind" when it has one (the small world's item kinds)."""
    import model
    out = []
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        # fast_generate for the small world on the CPU, HF generate otherwise (model.generate_for)
        samples = model.generate_for(policy)(policy, tokenizer, [r["prompt"] for r in batch], n=k,
                                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                             seed=seed + b)
        graded = verifiers.verify_batch([s["text"] for s in samples], [r for r in batch for _ in range(k)],
                                        think=think, workers=workers, grader=grader)
        for i, row in enumerate(batch):
            mine = range(i * k, (i + 1) * k)  # generate returns prompt-major order
            out.append({
                "id": row["id"],
                "domain": row["domain"],
                "rewards": [graded[j]["reward"] for j in mine],
                "lengths": [len(samples[j]["completion_ids"]) for j in mine],
                "truncated": sum(samples[j]["truncated"] for j in mine),
                "errors": sum(graded[j].get("error") is not None for j in mine),
                **({"kind": row["kind"]} if "kind" in row else {}),   # the small world's item kind, for report
            })
        if bar is not None:
            bar.update(len(batch))
    return out


def check_domains(domains: list[str]) -> None:
    unknown = sorted(set(domains) - set(verifiers.VERIFIERS))
    if unknown:
        raise UserError(f"unknown domains {unknown}; known: {sorted(verifiers.VERIFIERS)}")


@dataclass
class EvalConfig:
    """Accuracy (avg@k, pass@k) of models on eval sets; per-problem rewards are kept for `consistency` and
    `report`."""

    models: Names = field(default_factory=lambda: ["tiny"])
    """Models: name=path, or a path / preset ("tiny") named after its last folder."""
    benchmarks: Names = field(default_factory=lambda: ["embedded"])
    """Eval sets: "embedded" (the eval split of every domain), "humaneval" (the 164 HumanEval problems, when
    code is among --domains) and/or any data spec train.py --data takes (a file in the row schema or a
    benchmark's own format, a folder, dir@split, a Hub id, stream:...; data/README.md), as name=spec or spec."""
    domains: Names = field(default_factory=lambda: list(data.DOMAINS))
    """Domains to keep (embedded sets made, file rows filtered)."""
    n_problems: int | None = 32
    """Problems per benchmark (the first n); None for all."""
    since: str | None = None
    """Keep only dated rows from this day on (YYYY-MM-DD; LiveCodeBench's contest_date, e.g. 2024-08-01 for v5).
    Rows without a date (other benchmarks) are all kept."""
    until: str | None = None
    """Keep only dated rows before this day (YYYY-MM-DD; e.g. 2025-02-01 ends LiveCodeBench v5)."""
    problem_seed: int = 0
    """Which embedded problems make the n. Apart from --seed so that the models of every training seed meet
    the same problems, whose rewards `report` then averages over seeds."""
    k: int = 4
    """Samples per problem."""
    temperature: float = 0.6
    """Sampling temperature (0.6 and top-p 0.95: Qwen3's recommended thinking-mode sampling)."""
    top_p: float = 0.95
    max_new_tokens: int = 4
    """Longest sampled completion, in tokens. Give the budget the models were trained with (train.py
    --max-new-tokens): past it their samples mean little. `report` passes its runs' own value."""
    batch_size: int = 16
    """Prompts per generate call (each sampled k times)."""
    think: bool = True
    """Grade only the text after </think> (a <think> left open scores 0); see verifiers/."""
    grader: Literal["lenient", "paper"] = "paper"
    """"paper": the paper's graders (boxed math, "Answer: X", 20 code tests, 0 without </think>), as train.py's
    default; "lenient": also unboxed answers and no reasoning block (see verifiers/)."""
    workers: int = 4
    """Parallel verifier processes (code runs programs)."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """cuda, cpu, or auto: cuda when present."""
    out: str = "out/analysis"
    """Writes eval.json, eval.md, eval.csv, eval_per_problem.jsonl, eval_bars.png/.json here."""

    def __post_init__(self):
        check_domains(self.domains)
        if self.k < 1 or self.batch_size < 1:
            raise UserError(f"--k and --batch-size must be at least 1, got {self.k} and {self.batch_size}")


def run_eval(cfg: EvalConfig) -> dict:
    import plots
    models = {n: check_model(n, p) for n, p in parse_named(cfg.models).items()}   # every path before any work
    benches = load_benchmarks(cfg.benchmarks, cfg.domains, cfg.n_problems, cfg.problem_seed, cfg.since, cfg.until)
    if not benches:
        raise UserError(f"--benchmarks {' '.join(cfg.benchmarks)} give no problems of --domains "
                        f"{' '.join(cfg.domains)}")
    device = resolve_device(cfg.device)
    records = []
    bar = tqdm(total=len(models) * sum(map(len, benches.values())), desc="eval", unit="problem")
    for name, path in models.items():
        tokenizer, policy = load_named(name, path, device)
        for bench, rows in benches.items():
            bar.set_postfix_str(f"{name} on {bench}")
            results = evaluate_rows(policy, tokenizer, rows, k=cfg.k, max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                    seed=cfg.seed, think=cfg.think, workers=cfg.workers, bar=bar, grader=cfg.grader)
            records += [{"model": name, "benchmark": bench, **r} for r in results]
        del policy
    bar.close()
    table, by_domain = summarize_eval(records)
    result = {"config": asdict(cfg), "models": models, "table": table, "by_domain": by_domain}
    out = Path(cfg.out)
    write_atomic(out / "eval_per_problem.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(out / "eval.json", result)
    md, csv_text = eval_tables(table, list(models))
    write_atomic(out / "eval.md", md)
    write_atomic(out / "eval.csv", csv_text)
    benches_seen = list(dict.fromkeys(b for name in models for b in table.get(name, {})))
    k = max(v["k"] for cells in table.values() for v in cells.values())
    panels = {b: [table.get(name, {}).get(b, {}).get("avg@k") for name in models] for b in benches_seen}
    plots.plot_accuracy(list(models), panels, out / "eval_bars.png", metric=f"avg@{k}")
    print(md)
    return result


# ----------------------------------------------------------------------------------------------------------
# weights: which parameters RL changed, and how the changes of different models overlap and align
# ----------------------------------------------------------------------------------------------------------

THRESHOLDS = ("exact", "rel")  # w1 != w0, and the paper's |w1 - w0| > rel_tol * max(|w1|, |w0|)
PROJ_METHOD = ("count sketch: position p of tensor t goes to bucket h(p) with sign s(p), drawn from a "
               "generator seeded by (seed, t, chunk offset); projected vector y[b] = sum_{h(p)=b} s(p) x[p]")
MODULE_TYPES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
                "embed_tokens": "embed", "lm_head": "lm_head"}  # in the order tables and plots show them
GROUPS = {"attention": ("q", "k", "v", "o"), "ffn": ("gate", "up", "down")}  # the paper's Figure 3 groups


def module_type(name: str) -> str:
    """"model.layers.3.self_attn.q_proj.weight" -> "q"; layer norms, q_norm/k_norm and the final norm -> "norm"."""
    for part in name.split("."):
        if part in MODULE_TYPES:
            return MODULE_TYPES[part]
    return "norm" if "norm" in name else "other"


def layer_index(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def open_checkpoint(path: str) -> dict:
    """{tensor name: safe_open handle of the file holding it} for an HF folder (one file or shards) or one
    .safetensors file. Nothing is read yet: the handles memory-map their files."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        files = [p]
    elif (p / "model.safetensors.index.json").exists():
        weight_map = read_json(p / "model.safetensors.index.json").get("weight_map", {})
        files = sorted({p / f for f in weight_map.values()})
    else:
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        raise UserError(f"{path}: no .safetensors weights (a folder written by save_pretrained, "
                                f"or one .safetensors file)")
    handles = {}
    for f in files:
        h = safe_open(str(f), framework="pt")
        for name in h.keys():
            handles[name] = h
    return handles


def check_compatible(base: str, base_h: dict, models: dict[str, str], model_hs: list[dict]) -> dict:
    """{tensor name: shape}; raises ValueError when a model lacks a base tensor, has an extra one, or a
    shape differs: such models do not share the base and cannot be compared position by position."""
    shapes = {n: tuple(h.get_slice(n).get_shape()) for n, h in base_h.items()}
    for (name, path), hs in zip(models.items(), model_hs):
        missing, extra = sorted(set(shapes) - set(hs)), sorted(set(hs) - set(shapes))
        if missing or extra:
            raise UserError(f"model {name!r} ({path}) does not share the tensors of base {base}: "
                             f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                             f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        for n, shape in shapes.items():
            got = tuple(hs[n].get_slice(n).get_shape())
            if got != shape:
                raise UserError(f"model {name!r} ({path}): tensor {n} has shape {list(got)}, "
                                 f"base {base} has {list(shape)}")
    return shapes


def tensor_chunks(handles: list[dict], name: str, shape: tuple, chunk_elems: int):
    """Yield (offset, [flat slice of the tensor from each checkpoint]) over row blocks of at most about
    chunk_elems elements: memory stays bounded however large the tensor (a 4B model's embedding is 389M)."""
    if len(shape) == 0:
        yield 0, [h[name].get_tensor(name).reshape(-1) for h in handles]
        return
    per_row = math.prod(shape[1:])
    step = max(1, chunk_elems // max(1, per_row))
    for r0 in range(0, shape[0], step):
        yield r0 * per_row, [h[name].get_slice(name)[r0 : r0 + step].reshape(-1) for h in handles]


def sketch(seed: int, tensor: str, offset: int, n: int, dim: int, device: str):
    """Bucket and sign of n consecutive positions (from `offset`) of `tensor` under projection seed `seed`.

    Together over all chunks of all tensors this is one fixed dim x D matrix P with a single +-1 per column:
    its rows have disjoint supports, so they are exactly orthogonal (row norms^2 = bucket sizes ~ D/dim), and
    <Px, Py> is an unbiased estimate of <x, y> (E[s_p s_q [h(p)=h(q)]] = [p=q]), with variance about
    (|x|^2 |y|^2 + <x,y>^2) / dim like a dense Gaussian projection. Unlike a dense matrix it costs O(D) and
    needs no dim x D storage, which is what makes it usable on a 4B model. Same seed + same chunk_elems =>
    the same matrix (the generator is keyed by chunk offset)."""
    import torch
    g = torch.Generator(device=device)
    g.manual_seed(zlib.crc32(f"{seed}:{tensor}:{offset}".encode()))
    bucket = torch.randint(0, dim, (n,), generator=g, device=device)
    sign = torch.randint(0, 2, (n,), generator=g, device=device).to(torch.float64) * 2 - 1
    return bucket, sign


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def cosine_from(dot: float, sq_a: float, sq_b: float) -> float:
    return dot / math.sqrt(sq_a * sq_b) if sq_a > 0 and sq_b > 0 else float("nan")


def compare_weights(base: str, models: dict[str, str], *, rel_tol: float = 1e-3, proj_dim: int = 256,
                    proj_seeds: tuple[int, ...] = (0, 1, 2, 3, 4), chunk_elems: int = 1 << 22,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Update statistics of each model against `base`, and of every pair of models, streamed tensor slice by
    tensor slice (memory: a few fp64 copies of one slice per model). Returns the weights.json dict.

    Per model and scope (module type, "attention", "ffn", "all"; each pooled over its tensors):
    sparsity = fraction of positions NOT changed, at both thresholds; per layer too.
    Per pair (A, B), threshold and scope, over changed-position sets A and B:
      jaccard |A&B|/|A|B|, a_in_b |A&B|/|A|, b_in_a |A&B|/|B|, each with the "_rand" value independent
        uniform masks of the same per-tensor densities would give (E|A&B| = n dA dB, E|A|B| = n(dA+dB-dA dB),
        summed over tensors before dividing);
      sign_agree: fraction of A&B where the two updates have the same sign;
      cos: cosine of the two update vectors restricted to A&B (fp64 sums, exact); cos_full: on all positions;
      cos_proj (rel threshold only): the same cosine after the `sketch` projection to proj_dim, one value
        per seed in cos_proj_seeds, with mean and std."""
    import torch
    names = list(models)
    base_h, hs = open_checkpoint(base), [open_checkpoint(p) for p in models.values()]
    shapes = check_compatible(base, base_h, models, hs)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    S = defaultdict(float)  # pooled sums keyed by (statistic, *who, module type)
    L = defaultdict(float)  # per-layer counts keyed by (model index or "n", threshold, layer)
    P = {}  # (i, j, type) -> (seeds, 2, dim) projected overlap updates of A and B
    for tname in tqdm(sorted(shapes), desc="weights", unit="tensor", disable=not progress):
        typ, layer, numel = module_type(tname), layer_index(tname), math.prod(shapes[tname])
        cnt = defaultdict(float)  # this tensor's changed counts: densities for the random-mask expectation
        for offset, chunk in tensor_chunks([base_h] + hs, tname, shapes[tname], chunk_elems):
            w0, *ws = [c.to(device=device, dtype=torch.float64) for c in chunk]  # fp64 holds bf16/fp32 exactly
            ds = [w - w0 for w in ws]
            masks = {"exact": [w != w0 for w in ws],
                     "rel": [d.abs() > rel_tol * torch.maximum(w.abs(), w0.abs()) for d, w in zip(ds, ws)]}
            signs = [torch.sign(d) for d in ds]
            for i, d in enumerate(ds):
                S[("sq", i, typ)] += float((d * d).sum())
                for thr in THRESHOLDS:
                    cnt[(i, thr)] += int(masks[thr][i].sum())
            sk = [sketch(s, tname, offset, w0.numel(), proj_dim, device) for s in proj_seeds] if pairs else []
            for i, j in pairs:
                S[("dot", i, j, typ)] += float((ds[i] * ds[j]).sum())
                for thr in THRESHOLDS:
                    both = masks[thr][i] & masks[thr][j]
                    cnt[(i, j, thr)] += int(both.sum())
                    S[("same", i, j, thr, typ)] += int((both & (signs[i] == signs[j])).sum())
                    da, db = ds[i] * both, ds[j] * both
                    S[("odot", i, j, thr, typ)] += float((da * db).sum())
                    S[("osq_a", i, j, thr, typ)] += float((da * da).sum())
                    S[("osq_b", i, j, thr, typ)] += float((db * db).sum())
                    if thr == "rel" and sk:
                        acc = P.setdefault((i, j, typ), torch.zeros(len(sk), 2, proj_dim, dtype=torch.float64,
                                                                    device=device))
                        for s, (bucket, sign) in enumerate(sk):
                            acc[s, 0] += torch.bincount(bucket, weights=da * sign, minlength=proj_dim)
                            acc[s, 1] += torch.bincount(bucket, weights=db * sign, minlength=proj_dim)
        # fold this tensor's counts into the pooled sums; densities are per tensor
        S[("n", typ)] += numel
        if layer is not None:
            L[("n", layer)] += numel
        for i in range(len(names)):
            for thr in THRESHOLDS:
                S[("changed", i, thr, typ)] += cnt[(i, thr)]
                if layer is not None:
                    L[(i, thr, layer)] += cnt[(i, thr)]
        for i, j in pairs:
            for thr in THRESHOLDS:
                a, b = cnt[(i, thr)], cnt[(j, thr)]
                S[("inter", i, j, thr, typ)] += cnt[(i, j, thr)]
                S[("inter_rand", i, j, thr, typ)] += a * b / numel
                S[("union_rand", i, j, thr, typ)] += a + b - a * b / numel

    present = {module_type(n) for n in shapes}
    types = [t for t in (*MODULE_TYPES.values(), "norm", "other") if t in present]
    scopes = {t: [t] for t in types}
    scopes |= {g: [t for t in members if t in types] for g, members in GROUPS.items() if set(members) & set(types)}
    scopes["all"] = types

    def tot(*key):  # a pooled sum over the module types of scope key[-1]
        return sum(S[(*key[:-1], t)] for t in scopes[key[-1]])

    n_params = {sc: tot("n", sc) for sc in scopes}
    sparsity = {name: {thr: {sc: 1 - ratio(tot("changed", i, thr, sc), n_params[sc]) for sc in scopes}
                       for thr in THRESHOLDS} for i, name in enumerate(names)}
    layer_ids = sorted({k[1] for k in L if k[0] == "n"})
    layers = {"index": layer_ids}
    for i, name in enumerate(names):
        layers[name] = {thr: [1 - ratio(L[(i, thr, l)], L[("n", l)]) for l in layer_ids] for thr in THRESHOLDS}
    pair_stats = []
    for i, j in pairs:
        entry = {"a": names[i], "b": names[j]}
        for thr in THRESHOLDS:
            entry[thr] = {}
            for sc in scopes:
                a, b, inter = tot("changed", i, thr, sc), tot("changed", j, thr, sc), tot("inter", i, j, thr, sc)
                ir, ur = tot("inter_rand", i, j, thr, sc), tot("union_rand", i, j, thr, sc)
                st = {
                    "jaccard": ratio(inter, a + b - inter), "jaccard_rand": ratio(ir, ur),
                    "a_in_b": ratio(inter, a), "a_in_b_rand": ratio(ir, a),
                    "b_in_a": ratio(inter, b), "b_in_a_rand": ratio(ir, b),
                    "overlap": inter, "changed_a": a, "changed_b": b,
                    "sign_agree": ratio(tot("same", i, j, thr, sc), inter),
                    "cos": cosine_from(tot("odot", i, j, thr, sc), tot("osq_a", i, j, thr, sc),
                                       tot("osq_b", i, j, thr, sc)),
                    "cos_full": cosine_from(tot("dot", i, j, sc), tot("sq", i, sc), tot("sq", j, sc)),
                }
                if thr == "rel" and proj_seeds:
                    vec = sum((P[(i, j, t)] for t in scopes[sc] if (i, j, t) in P),
                              torch.zeros(len(proj_seeds), 2, proj_dim, dtype=torch.float64, device=device))
                    per_seed = [cosine_from(float(v[0] @ v[1]), float(v[0] @ v[0]), float(v[1] @ v[1])) for v in vec]
                    st["cos_proj_seeds"] = per_seed
                    st["cos_proj"] = float(np.mean(per_seed))
                    st["cos_proj_std"] = float(np.std(per_seed))
                entry[thr][sc] = st
        pair_stats.append(entry)
    return {"base": base, "models": models, "rel_tol": rel_tol, "chunk_elems": chunk_elems,
            "projection": {"dim": proj_dim, "seeds": list(proj_seeds), "method": PROJ_METHOD},
            "scopes": list(scopes), "n_params": n_params, "sparsity": sparsity, "layers": layers,
            "pairs": pair_stats}



@dataclass
class WeightsConfig:
    """Update sparsity, overlap, sign agreement and cosine of fine-tuned models against their base."""

    models: Names
    """Fine-tuned models (experts, multi-task, merged) as name=path: HF folders of safetensors."""
    base: str = "tiny"
    """The base model folder they were all fine-tuned from (a preset name is saved to <out>/base-<name> first)."""
    rel_tol: float = 1e-3
    """Relative threshold: changed when |w1 - w0| > rel_tol * max(|w1|, |w0|) (the paper's 1e-3)."""
    proj_dim: int = 256
    """Random projection size (the paper's 256)."""
    proj_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """One projection per seed; their spread is reported. Empty to skip the projection."""
    chunk_elems: int = 1 << 22
    """Elements read per tensor slice and model (memory ~ 8 bytes x 4 x this x models)."""
    device: str = "auto"
    """cuda, cpu, or auto: cuda when present."""
    out: str = "out/analysis"
    """Writes weights.json and weights_*.png/.json here."""


def materialize(name: str, spec: str, out: Path) -> str:
    """A folder of safetensors for `spec`: a local folder (checked), the HF cache folder of a hub id (never
    downloaded), or the model.py preset ("tiny") saved once under `out`."""
    if looks_local(spec):
        return check_model(name, spec, tokenizer=False)
    if spec.count("/") == 1:
        from huggingface_hub import snapshot_download  # a hub id: its files in the local HF cache, no download
        try:
            return snapshot_download(spec, local_files_only=True)
        except (OSError, ValueError) as e:   # not in the cache (LocalEntryNotFoundError), or a malformed id
            raise UserError(f"model {name!r}: {spec} is not in the local HF cache ({first_line(e)})") from None
    dest = out / f"base-{Path(spec).name}"
    if not dest.exists():
        import model
        tokenizer, net = load_named(name, spec, "cpu")
        model.save_pretrained(net, tokenizer, str(dest))
    return str(dest)


def run_weights(cfg: WeightsConfig) -> dict:
    import plots
    out = Path(cfg.out)
    models = {n: materialize(n, p, out) for n, p in parse_named(cfg.models).items()}
    res = compare_weights(materialize("base", cfg.base, out), models, rel_tol=cfg.rel_tol, proj_dim=cfg.proj_dim,
                          proj_seeds=tuple(cfg.proj_seeds), chunk_elems=cfg.chunk_elems,
                          device=resolve_device(cfg.device))
    write_json(out / "weights.json", res)
    plots.plot_weights(res, out)
    print(weights_markdown(res))
    return res


def weights_markdown(res: dict) -> str:
    names, scopes = list(res["models"]), res["scopes"]
    md = (f"Update sparsity (fraction of parameters unchanged) per module type; relative threshold "
          f"|w1 - w0| > {res['rel_tol']:g} max(|w1|, |w0|), exact threshold in brackets:\n\n")
    rows = [[name] + [f"{fmt(res['sparsity'][name]['rel'][s])} ({fmt(res['sparsity'][name]['exact'][s])})"
                      for s in scopes] for name in names]
    md += md_table(["model", *scopes], rows)
    unchanged = [n for n in names if res["sparsity"][n]["exact"]["all"] == 1.0]
    if unchanged:   # say why their rows below read n/a
        md += (f"\n{', '.join(unchanged)}: no parameter differs from the base (training never moved the "
               f"weights), so overlap, sign agreement and cosine with {'it' if len(unchanged) == 1 else 'them'} "
               f"are undefined (n/a).\n")
    if res["pairs"]:
        md += ("\nPairs of models, relative threshold, per scope: Jaccard of changed positions (random masks "
               "of the same densities), |A&B|/|A| (random), |A&B|/|B| (random), sign agreement on A&B, cosine "
               "of updates on A&B exact / projected mean +- std over seeds:\n\n")
        rows = []
        for p in res["pairs"]:
            for s in [s for s in ("attention", "ffn", "all") if s in scopes]:
                st = p["rel"][s]
                rows.append([f"{p['a']} / {p['b']}", s, f"{fmt(st['jaccard'])} ({fmt(st['jaccard_rand'])})",
                             f"{fmt(st['a_in_b'])} ({fmt(st['a_in_b_rand'])})",
                             f"{fmt(st['b_in_a'])} ({fmt(st['b_in_a_rand'])})", fmt(st["sign_agree"]),
                             fmt(st["cos"]),
                             f"{fmt(st.get('cos_proj'))} +- {fmt(st.get('cos_proj_std'))}"])
        md += md_table(["pair A / B", "scope", "Jaccard", "A&B/A", "A&B/B", "sign agree", "cos exact",
                        "cos proj"], rows)
    return md



# ----------------------------------------------------------------------------------------------------------
# kl: how far apart the policies are, on every expert's trajectories of every domain (paper Figure 4)
# ----------------------------------------------------------------------------------------------------------


def pack(trajs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (prompt + completion) ids, attention mask, and the mask of logit positions that predict a
    completion token: logits at position t predict token t+1, so completion token c (0-based) of a prompt of
    length p is predicted at p + c - 1."""
    import torch
    width = max(len(p) + len(c) for p, c in trajs)
    ids = torch.full((len(trajs), width), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros(len(trajs), width, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(trajs), width, dtype=torch.bool)  # (B, T)
    for b, (p, c) in enumerate(trajs):
        ids[b, : len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attn[b, : len(p) + len(c)] = 1
        mask[b, len(p) - 1 : len(p) + len(c) - 1] = True
    return ids, attn, mask


def teacher_forced_kl(p_model, q_model, trajs: list[tuple[list[int], list[int]]], *, pad_id: int,
                      batch_size: int = 4, time_chunk: int = 512, p_cache: dict | None = None) -> dict:
    """Exact full-vocabulary KL(p || q) and KL(q || p) at every completion position of `trajs` (prompt ids,
    completion ids), both models fed the same tokens; token-level mean over all completion tokens.
    Temperature 1: the KL is between the models' raw next-token distributions. The fp32 log-softmax is taken
    time_chunk positions at a time so a 150k vocabulary does not multiply memory by the sequence length.
    p_cache: a dict the caller keeps across calls with the same p_model and trajs; p's log-probabilities are
    then computed once and reused (it holds completion tokens x vocabulary fp32 numbers)."""
    import torch
    import torch.nn.functional as F
    sum_pq = sum_qp = 0.0
    n_tokens = 0
    device = next(p_model.parameters()).device
    with torch.no_grad():
        for b in range(0, len(trajs), batch_size):
            ids, attn, mask = (t.to(device) for t in pack(trajs[b : b + batch_size], pad_id))
            logits_q = q_model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
            logits_p = None
            for t0 in range(0, ids.shape[1], time_chunk):
                m = mask[:, t0 : t0 + time_chunk]  # (B, t)
                if not m.any():
                    continue
                logp = None if p_cache is None else p_cache.get((b, t0))
                if logp is None:
                    if logits_p is None:
                        logits_p = p_model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
                    logp = F.log_softmax(logits_p[:, t0 : t0 + time_chunk][m].float(), dim=-1)  # (N, V)
                    if p_cache is not None:
                        p_cache[(b, t0)] = logp
                if logp.shape[-1] != logits_q.shape[-1]:
                    raise UserError(f"the models have different vocabularies ({logp.shape[-1]} vs "
                                    f"{logits_q.shape[-1]} logits): KL needs a shared tokenizer")
                logq = F.log_softmax(logits_q[:, t0 : t0 + time_chunk][m].float(), dim=-1)  # (N, V)
                sum_pq += float((logp.exp() * (logp - logq)).sum())
                sum_qp += float((logq.exp() * (logq - logp)).sum())
                n_tokens += int(m.sum())
    return {"kl_pq": ratio(sum_pq, n_tokens), "kl_qp": ratio(sum_qp, n_tokens), "n_tokens": n_tokens}


def match_eval_name(evaluation: dict, name: str, path: str) -> str | None:
    """The name a model has in eval.json: the one evaluated from the same path, else the same name."""
    for ev_name, ev_path in evaluation.get("models", {}).items():
        if os.path.realpath(ev_path) == os.path.realpath(path):
            return ev_name
    return name if name in evaluation.get("by_domain", {}) else None


def kl_perf_change(evaluation: dict, domains: list[str], columns: dict[str, str]) -> list[list]:
    """[domain A][model M] = accuracy of M on A - accuracy of A's expert on A (avg@k from eval.json's
    by_domain): the ΔPerf row of Figure 4. None in a cell whose model or domain was not evaluated."""
    by = evaluation.get("by_domain", {})
    names = {name: match_eval_name(evaluation, name, path) for name, path in columns.items()}
    out = []
    for a in domains:
        ref = by.get(names[a], {}).get(a) if names[a] else None
        row = []
        for name in columns:
            acc = by.get(names[name], {}).get(a) if names[name] else None
            row.append(None if acc is None or ref is None else acc - ref)
        out.append(row)
    return out


@dataclass
class KLConfig:
    """Cross-domain KL (paper Figure 4): every expert samples trajectories on every domain's eval prompts; on
    each set, the token-level KL between that expert and every model (the experts, the multi-task model and
    the merged ones)."""

    experts: Names
    """Single-domain experts as domain=path (math=out/math code=out/code)."""
    multitask: str | None = None
    """The model trained on the mix of domains: a path (column "multitask") or name=path."""
    merged: Names = field(default_factory=list)
    """Merged models, and any other model to compare (MT-OPD), as name=path."""
    cross: bool = True
    """Sample every expert on every domain's prompts: every (domain, expert) cell of the paper's Figure 4.
    --no-cross samples each expert on its own domain only (the diagonal; 1/experts of the sampling)."""
    prompts: str = "embedded"
    """Eval prompts: "embedded" or a row-schema file (its rows of each expert's domain are used)."""
    n_problems: int = 16
    """Prompts per domain."""
    k: int = 2
    """Trajectories sampled per prompt and expert."""
    max_new_tokens: int = 4
    """As in eval: give the completion budget the models were trained with; `report` passes its runs' own."""
    temperature: float = 1.0
    """Sampling temperature of the trajectories (1: the expert's own policy)."""
    top_p: float = 1.0
    batch_size: int = 4
    """Sequences per teacher-forced forward pass."""
    cache_gb: float = 2.0
    """Memory for one expert's log-probabilities on its trajectories, kept across the models it is compared
    with (half the forward passes); when they need more, they are computed again for each model."""
    seed: int = 0
    """Seed of the embedded prompts and of the sampling."""
    eval: str | None = None
    """eval.json for the ΔPerf row; default <out>/eval.json when present."""
    device: str = "auto"
    """cuda, cpu, or auto: cuda when present."""
    out: str = "out/analysis"
    """Writes kl.json, kl_heatmap.png/.json (each expert's own domain) and kl_cross.png/.json (Figure 4) here."""

    def __post_init__(self):
        unknown = sorted(set(parse_named(self.experts, "expert")) - set(data.DOMAINS))
        if unknown:
            raise UserError(f"experts must be named by domain ({', '.join(data.DOMAINS)}), got {unknown}")


def kl_prompts(cfg: KLConfig, domain: str) -> list[dict]:
    if cfg.prompts == "embedded":
        rows = data.embedded(domain, "eval", n=cfg.n_problems, seed=cfg.seed)
    elif not Path(cfg.prompts).exists():
        raise UserError(f"--prompts: no file {cfg.prompts}")
    else:
        rows = data.load(cfg.prompts, [domain], "eval", seed=cfg.seed)[: cfg.n_problems]
    if not rows:
        raise UserError(f"no {domain} eval prompts in {cfg.prompts}")
    return rows


def run_kl(cfg: KLConfig) -> dict:
    """kl.json: kl_fwd[A][B][M] = KL(expert_B || M) and kl_rev[A][B][M] = KL(M || expert_B), token-level means
    on the trajectories expert B samples on domain A's prompts (None where not sampled: --no-cross);
    n_tokens[A][B] completion tokens of those trajectories; perf_change[A][M] the ΔPerf of Figure 4."""
    import model
    import plots
    experts = {d: check_model(d, p, "expert") for d, p in parse_named(cfg.experts, "expert").items()}
    others = parse_named([cfg.multitask]) if cfg.multitask and "=" in cfg.multitask else \
        {"multitask": cfg.multitask} if cfg.multitask else {}
    others |= parse_named(cfg.merged, "merged model")
    clash = sorted(set(others) & set(experts))
    if clash:
        raise UserError(f"model names {clash} are also expert names; name the other models differently")
    columns = experts | {n: check_model(n, p) for n, p in others.items()}
    domains, names = list(experts), list(columns)
    prompts = {d: kl_prompts(cfg, d) for d in domains}
    device = resolve_device(cfg.device)
    fwd = [[[None] * len(names) for _ in domains] for _ in domains]  # [A][B][M]
    rev = [[[None] * len(names) for _ in domains] for _ in domains]  # [A][B][M]
    n_tokens = [[None] * len(domains) for _ in domains]  # [A][B]
    pairs = [(a, b) for a in range(len(domains)) for b in range(len(domains)) if cfg.cross or a == b]
    bar = tqdm(total=len(pairs) * len(names), desc="kl", unit="cell")
    # each expert and each model is loaded once per expert: B's trajectories of every domain, then every model
    for b, expert in enumerate(domains):
        tokenizer, p_model = load_named(expert, experts[expert], device)
        trajs = {}
        for a in [a for a, b_ in pairs if b_ == b]:
            bar.set_postfix_str(f"expert {expert} samples {domains[a]}")
            samples = model.generate_for(p_model)(p_model, tokenizer, [row["prompt"] for row in prompts[domains[a]]],
                                                  n=cfg.k, max_new_tokens=cfg.max_new_tokens,
                                                  temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
            trajs[a] = [(s["prompt_ids"], s["completion_ids"]) for s in samples if s["completion_ids"]]
        # the expert's log-probabilities on its trajectories serve every model, when they fit in cfg.cache_gb
        vocab = p_model.get_output_embeddings().weight.shape[0]
        size = sum(len(c) for t in trajs.values() for _, c in t) * vocab * 4 / 2**30
        caches = {a: {} if size <= cfg.cache_gb else None for a in trajs}
        for c, name in enumerate(names):
            q_model = None if name == expert else load_named(name, columns[name], device, tokenizer=False)[1]
            for a, t in trajs.items():
                bar.set_postfix_str(f"{domains[a]} data: expert {expert} vs {name}")
                if q_model is None:   # the expert itself: KL 0, no forward pass needed
                    kl = {"kl_pq": 0.0, "kl_qp": 0.0, "n_tokens": sum(len(comp) for _, comp in t)}
                else:
                    kl = teacher_forced_kl(p_model, q_model, t, pad_id=tokenizer.pad_token_id,
                                           batch_size=cfg.batch_size, p_cache=caches[a])
                fwd[a][b][c], rev[a][b][c], n_tokens[a][b] = kl["kl_pq"], kl["kl_qp"], kl["n_tokens"]
                bar.update(1)
            del q_model
        del caches
        del p_model
    bar.close()
    res = {"config": asdict(cfg), "domains": domains, "models": names, "paths": columns, "cross": cfg.cross,
           "kl_fwd": fwd, "kl_rev": rev, "n_tokens": n_tokens, "perf_change": None}
    eval_path = Path(cfg.eval) if cfg.eval else Path(cfg.out) / "eval.json"
    if eval_path.exists():
        res["perf_change"] = kl_perf_change(read_json(eval_path), domains, columns)
        res["eval"] = str(eval_path)
    out = Path(cfg.out)
    write_json(out / "kl.json", res)
    plots.plot_kl(res, out / "kl_heatmap.png")
    if len(names) > len(domains):
        plots.plot_kl_cross(res, names[len(domains):], out / "kl_cross.png")
    print(kl_markdown(res))
    return res


def signed(x, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def kl_markdown(res: dict, delta: list[list[str]] | None = None) -> str:
    """Figure 4 for the first model that is not an expert (the multi-task one when given), a summary of the
    cross matrix for every model, then each expert's own domain in both directions and the ΔPerf table.
    delta: the ΔPerf cells [A][M] as text (report.py's, with paired intervals); default the perf_change numbers."""
    doms, names = res["domains"], res["models"]
    fwd, perf = res["kl_fwd"], res.get("perf_change")
    if delta is None and perf is not None:
        delta = [[signed(v) for v in row] for row in perf]
    md = ""
    others = names[len(doms):]
    if others:
        j = names.index(others[0])
        md += (f"Paper Figure 4 for {others[0]}: KL(expert B || {others[0]}) on the trajectories expert B samples "
               f"on domain A's prompts (token-level mean, full vocabulary); ΔPerf: {others[0]}'s avg@k on A minus "
               f"that of A's expert. A small cell off the diagonal (B ≠ A) says that on A's prompts "
               f"{others[0]} predicts like the expert of B: the policy neighbourhood the paper reads from it.\n\n")
        rows = [[f"expert {e}"] + [sig(fwd[a][b][j]) for a in range(len(doms))] for b, e in enumerate(doms)]
        if delta is not None:
            rows.append(["ΔPerf"] + [delta[a][j] for a in range(len(doms))])
        md += md_table(["", *[f"{d} data" for d in doms]], rows)
        if not res.get("cross", True):
            md += "\nOff the diagonal: not computed (kl ran with --no-cross).\n"

        def mean_of(cells):
            vals = [v for v in cells if v is not None and math.isfinite(v)]
            return sig(float(np.mean(vals))) if vals else "n/a"

        md += ("\nEvery model: KL(expert B || model) on B's own domain (diagonal cells) and on the other domains "
               "(off the diagonal), mean over experts:\n\n")
        md += md_table(["model", "own domain", "other domains"],
                       [[n, mean_of(fwd[a][a][j] for a in range(len(doms))),
                         mean_of(fwd[a][b][j] for a in range(len(doms)) for b in range(len(doms)) if a != b)]
                        for j, n in enumerate(names)])
    md += ("\nOn each expert's own trajectories (its own domain), KL(expert || column) / KL(column || expert), "
           "token-level means:\n\n")
    rows = [[f"{d} data ({res['n_tokens'][i][i] or 0} tokens)"] +
            [f"{sig(f)} / {sig(r)}" for f, r in zip(fwd[i][i], res["kl_rev"][i][i])] for i, d in enumerate(doms)]
    md += md_table(["trajectories", *names], rows)
    if delta is not None:
        md += "\nΔPerf: accuracy on the row's domain, column model minus the row's expert (avg@k):\n\n"
        md += md_table(["domain", *names], [[d, *delta[i]] for i, d in enumerate(doms)])
    return md


# ----------------------------------------------------------------------------------------------------------
# consistency: are the multi-task / merged model's per-problem gains the experts' gains? (paper Figure 5)
# ----------------------------------------------------------------------------------------------------------


def read_per_problem(path: str | Path) -> list[dict]:
    if not Path(path).exists():
        raise UserError(f"no per-problem results {path} (written by `analyze.py eval`)")
    records = read_jsonl(path, ("model", "benchmark", "id", "domain", "rewards"))
    for n, r in records:
        if not isinstance(r["rewards"], list) or not r["rewards"]:
            raise UserError(f"{path}: line {n}: field 'rewards' must be a non-empty list")
    return [r for _, r in records]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b), and 0 when either vector is all zero: no gain at all has nothing in common with any gain.
    That is what the paper's definition implies (where cos would read 0/0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def bootstrap_cosine(a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int, level: float = 0.95):
    """Percentile bootstrap interval of cosine(a, b), resampling problems with replacement (0 in a resample
    where a vector is all zero, as in `cosine`)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))  # (n_boot, n)
    A, B = a[idx], b[idx]
    norms = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    cos = np.where(norms > 0, (A * B).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)
    lo, hi = np.percentile(cos, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def consistency(records: list[dict], base: str, experts: list[str], models: list[str], *, n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Per problem, gain g = max(acc - base_acc, 0) with acc the mean reward of the samples; the union gain
    is the per-problem max over the experts' gains; for each model, cosine(g_model, g_union) with a bootstrap
    95% interval over all problems ("all"), per benchmark (the paper's unit), and per domain where a domain's
    problems are not one benchmark's (a domain spanning several benchmarks, or a benchmark holding several
    domains); a scope with the same problems as one before it is left out. A model equal to the union scores 1; a model
    whose gains fall only where no expert gains scores 0, and so does one with no gain at all. Only problems
    that every model has results for are used."""
    acc = defaultdict(dict)
    bench_of, domain_of = {}, {}
    for r in records:
        key = (r["benchmark"], r["id"])
        acc[r["model"]][key] = float(np.mean(r["rewards"]))
        bench_of[key], domain_of[key] = r["benchmark"], r["domain"]
    needed = [base, *experts, *models]
    missing = [m for m in needed if m not in acc]
    if missing:
        raise UserError(f"no per-problem results for models {missing}; the results have {sorted(acc)}")
    keys = sorted(set.intersection(*(set(acc[m]) for m in needed)))
    if not keys:
        raise UserError(f"models {needed} share no problem in the results")

    def gain(m):
        return np.array([max(acc[m][k] - acc[base][k], 0.0) for k in keys])

    union = np.max([gain(e) for e in experts], axis=0)
    scopes = {"all": np.ones(len(keys), bool)}
    kept = set(keys)
    benches = list(dict.fromkeys(r["benchmark"] for r in records if (r["benchmark"], r["id"]) in kept))
    seen = {domain_of[k] for k in keys}
    domains = [d for d in data.DOMAINS if d in seen] + sorted(seen - set(data.DOMAINS))
    candidates = [(b, [bench_of[k] == b for k in keys]) for b in benches]
    candidates += [(f"domain {d}", [domain_of[k] == d for k in keys]) for d in domains]
    for name, mask in candidates:   # a scope whose problems another scope already has adds nothing
        if not any(np.array_equal(mask, m) for m in scopes.values()):
            scopes[name] = np.array(mask)
    res = {"base": base, "experts": experts, "models": models, "n_boot": n_boot, "seed": seed,
           "n_problems": {s: int(m.sum()) for s, m in scopes.items()}, "cos": {}}
    for name in models:
        g = gain(name)
        res["cos"][name] = {}
        for s, m in scopes.items():
            lo, hi = bootstrap_cosine(g[m], union[m], n_boot=n_boot, seed=seed)
            res["cos"][name][s] = {"cos": cosine(g[m], union[m]), "lo": lo, "hi": hi,
                                   "gain": float(g[m].mean()), "union_gain": float(union[m].mean())}
    return res


@dataclass
class ConsistencyConfig:
    """Cosine between each model's per-problem gains over the base and the union of the experts' gains."""

    experts: Names
    """Names (as in the per-problem results) of the single-domain experts."""
    models: Names
    """Names of the models to compare with the union: the multi-task model and the merged ones."""
    base: str = "base"
    """Name of the base model in the per-problem results."""
    results: str | None = None
    """Per-problem results of `eval`; default <out>/eval_per_problem.jsonl."""
    n_boot: int = 1000
    """Bootstrap resamples of the problems."""
    seed: int = 0
    out: str = "out/analysis"
    """Writes consistency.json and consistency_bars.png/.json here."""


def run_consistency(cfg: ConsistencyConfig) -> dict:
    import plots
    path = cfg.results or str(Path(cfg.out) / "eval_per_problem.jsonl")
    res = consistency(read_per_problem(path), cfg.base, cfg.experts, cfg.models, n_boot=cfg.n_boot,
                      seed=cfg.seed)
    res["results"] = path
    write_json(Path(cfg.out) / "consistency.json", res)
    plots.plot_consistency(res, Path(cfg.out) / "consistency_bars.png")
    print(consistency_markdown(res))
    return res


def consistency_markdown(res: dict) -> str:
    scopes = [s for s in res["n_problems"] if s != "all"] + ["all"]
    md = (f"cosine(per-problem gain over {res['base']}, union of the experts' gains "
          f"[{', '.join(res['experts'])}]) with a 95% bootstrap interval over problems; 0 where the model or "
          f"every expert gains nothing:\n\n")
    rows = [[name] + [f"{fmt(res['cos'][name][s]['cos'])} [{fmt(res['cos'][name][s]['lo'])}, "
                      f"{fmt(res['cos'][name][s]['hi'])}]" for s in scopes] for name in res["models"]]
    return md + md_table(["model", *[f"{s} (n={res['n_problems'][s]})" for s in scopes]], rows)


# ----------------------------------------------------------------------------------------------------------
# verify: self-verification, each model judging its own trajectories (paper Section 3.6, Table 7, Figures 6-7)
# ----------------------------------------------------------------------------------------------------------


def judge_counts(labels: list[bool], verdicts: list[bool | None]) -> np.ndarray:
    """(4,) counts: positives (the rule verifier's label is correct), positives judged correct, negatives,
    negatives judged wrong. An unparseable verdict (None) is right for neither class."""
    pos = sum(bool(y) for y in labels)
    return np.array([pos, sum(y and v is True for y, v in zip(labels, verdicts)),
                     len(labels) - pos, sum((not y) and v is False for y, v in zip(labels, verdicts))], dtype=float)


def judge_rates(c: np.ndarray) -> dict:
    """Accuracy, the class rates and balanced accuracy from judge_counts (or (..., 4) stacks of them).
    tpr: the share of correct responses judged correct; tnr: the share of wrong responses judged wrong;
    balanced accuracy (tpr + tnr) / 2, which is 0.5 for a judge that ignores the response (always yes, always
    no, or a coin), whatever the base rate; NaN where a class has no response."""
    c = np.asarray(c, dtype=float)
    pos, tp, neg, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, tnr = tp / pos, tn / neg
        acc = (tp + tn) / (pos + neg)
    return {"acc": acc, "tpr": tpr, "tnr": tnr, "bal_acc": (tpr + tnr) / 2}


def judge_stats(groups: list[int], labels: list[bool], verdicts: list[bool | None], *, n_boot: int,
                seed: int) -> dict:
    """Judge accuracy (an unparseable verdict counts as wrong), balanced accuracy and the class rates, with
    95% percentile bootstrap intervals that resample problems (groups: each response's problem index, since
    the samples of one problem are not independent); the share of unparseable verdicts and of "yes"."""
    keys = sorted(set(groups))
    per = np.stack([judge_counts([y for g, y in zip(groups, labels) if g == k],
                                 [v for g, v in zip(groups, verdicts) if g == k]) for k in keys])   # (P, 4)
    point = {k: float(v) for k, v in judge_rates(per.sum(0)).items()}
    reps = judge_rates(per[np.random.default_rng(seed).integers(0, len(keys), (n_boot, len(keys)))].sum(1))
    out = {"n": len(labels), "n_pos": int(per[:, 0].sum()), "n_neg": int(per[:, 2].sum()),
           "unparseable": sum(v is None for v in verdicts) / max(len(verdicts), 1),
           "said_yes": sum(v is True for v in verdicts) / max(len(verdicts), 1)}
    for key in ("acc", "bal_acc", "tpr", "tnr"):
        r = reps[key][np.isfinite(reps[key])]   # a resample without one class has no balanced accuracy
        finite_point = math.isfinite(point[key])
        lo, hi = (np.percentile(r, [2.5, 97.5]) if finite_point and len(r) else (np.nan, np.nan))
        out[key] = point[key] if finite_point else None
        out[f"{key}_lo"], out[f"{key}_hi"] = (float(lo), float(hi)) if finite_point and len(r) else (None, None)
    return out


def own_domains(name: str, domains: list[str]) -> list[str]:
    """The domains a model is judged on: an expert (named after its domain) its own, any other model all."""
    return [name] if name in data.DOMAINS else list(domains)


@dataclass
class VerifyConfig:
    """Self-verification (paper Section 3.6): each model samples responses to its own domain's eval prompts,
    then judges each one, seeing the final answer only (outcome mode) or the whole response (process mode);
    each verdict is scored against the rule verifier's label (paper grader). The judge prompts and the verdict
    parsing are data/judge.py's, a reconstruction (the paper publishes neither)."""

    models: Names = field(default_factory=lambda: ["base=tiny"])
    """Models as name=path. A model named after a domain (math, code, science, if: an expert) is judged on
    that domain, any other on every domain of --domains."""
    domains: Names = field(default_factory=lambda: list(data.DOMAINS))
    """Domains of the models that are not experts."""
    data: str = "embedded"
    """Eval prompts: 'embedded' (each domain's eval split) or a row-schema file of held-out rows."""
    n_problems: int = 16
    """Problems per domain (the first n)."""
    problem_seed: int = 0
    """Which embedded problems (the same as `eval --problem-seed`)."""
    k: int = 2
    """Responses sampled per problem, each judged in both modes."""
    temperature: float = 0.6
    """Sampling temperature of the responses (as `eval`); the judge decodes greedily (our choice: the paper
    does not say how it samples its verdicts)."""
    top_p: float = 0.95
    max_new_tokens: int = 64
    """Longest response, in tokens (give the models' training budget)."""
    judge_max_new_tokens: int | None = None
    """Longest verdict, reasoning included; None: max_new_tokens + 16 (the small world's judge solves the
    problem in its <think> block, then writes "Verdict: yes|no")."""
    cross: bool = False
    """Also let every model judge every other model's responses (a judge x generator matrix per domain)."""
    batch_size: int = 32
    """Prompts per generate call."""
    workers: int = 4
    """Parallel verifier processes (code runs programs)."""
    n_boot: int = 1000
    """Bootstrap resamples of the problems behind each 95% interval."""
    seed: int = 0
    """Sampling and bootstrap seed."""
    device: str = "auto"
    """cuda, cpu, or auto: cuda when present."""
    out: str = "out/analysis"
    """Writes verify.json, verify.md, verify_per_response.jsonl and verify_bars.png/.json here."""

    def __post_init__(self):
        check_domains(self.domains)
        if self.k < 1 or self.n_problems < 1 or self.batch_size < 1:
            raise UserError(f"--k, --n-problems and --batch-size must be at least 1")


def verify_prompts(cfg: VerifyConfig, domain: str) -> list[dict]:
    if cfg.data == "embedded":
        return data.embedded(domain, "eval", n=cfg.n_problems, seed=cfg.problem_seed)
    if not Path(cfg.data).exists():
        raise UserError(f"--data {cfg.data}: no such file")
    rows = data.load(cfg.data, [domain], "eval", seed=cfg.problem_seed)[: cfg.n_problems]
    if not rows:
        raise UserError(f"--data {cfg.data}: no rows of domain {domain}")
    return rows


def sample_responses(policy, tokenizer, rows: list[dict], cfg: VerifyConfig) -> list[dict]:
    """k responses per row, labelled by the paper grader: {"id", "domain", "problem", "sample", "text",
    "reward", "label"} (label: reward 1)."""
    import model
    out = []
    for b in range(0, len(rows), cfg.batch_size):
        batch = rows[b: b + cfg.batch_size]
        samples = model.generate(policy, tokenizer, [r["prompt"] for r in batch], n=cfg.k,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 seed=cfg.seed + b)
        graded = verifiers.verify_batch([s["text"] for s in samples], [r for r in batch for _ in range(cfg.k)],
                                        think=True, workers=cfg.workers, grader="paper")
        for i, (s, g) in enumerate(zip(samples, graded)):
            row = batch[i // cfg.k]
            out.append({"id": row["id"], "domain": row["domain"], "problem": b + i // cfg.k, "sample": i % cfg.k,
                        "question": judge.question_text(row), "text": s["text"], "reward": g["reward"],
                        "label": g["reward"] >= 1.0})
    return out


def judge_responses(policy, tokenizer, responses: list[dict], cfg: VerifyConfig) -> list[dict]:
    """Each response judged in each mode (greedy): {"mode", "verdict" (True, False, None), "judged"} added."""
    import model
    jobs = [(r, mode) for r in responses for mode in judge.MODES]
    budget = cfg.judge_max_new_tokens or cfg.max_new_tokens + 16
    out = []
    for b in range(0, len(jobs), cfg.batch_size):
        batch = jobs[b: b + cfg.batch_size]
        texts = model.generate(policy, tokenizer, [judge.judge_prompt(r["question"], r["text"], m) for r, m in batch],
                               n=1, max_new_tokens=budget, temperature=0.0)
        out += [{**r, "mode": m, "judged": t["text"], "verdict": judge.parse_verdict(t["text"])}
                for (r, m), t in zip(batch, texts)]
    return out


def summarize_verify(records: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    """One row per (judge, generator, domain): generation accuracy (the share of responses the rule verifier
    passes, with its interval over problems) and judge_stats per mode."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["judge"], r["generator"], r["domain"])].append(r)
    rows = []
    for (j, g, d), recs in cells.items():
        first = [r for r in recs if r["mode"] == judge.MODES[0]]
        gen = judge_stats([r["problem"] for r in first], [True] * len(first), [r["label"] for r in first],
                          n_boot=n_boot, seed=seed)   # "judging" every response correct: acc = generation accuracy
        row = {"judge": j, "generator": g, "domain": d, "n": len(first), "gen_acc": gen["acc"],
               "gen_acc_lo": gen["acc_lo"], "gen_acc_hi": gen["acc_hi"]}
        for mode in judge.MODES:
            mine = [r for r in recs if r["mode"] == mode]
            row[mode] = judge_stats([r["problem"] for r in mine], [r["label"] for r in mine],
                                    [r["verdict"] for r in mine], n_boot=n_boot, seed=seed)
        rows.append(row)
    return rows


def run_verify(cfg: VerifyConfig) -> dict:
    import plots
    models = {n: check_model(n, p) for n, p in parse_named(cfg.models).items()}
    doms = {n: own_domains(n, cfg.domains) for n in models}
    prompts = {d: verify_prompts(cfg, d) for d in dict.fromkeys(d for ds in doms.values() for d in ds)}
    device = resolve_device(cfg.device)
    responses, records = {}, []
    for name, path in tqdm(models.items(), desc="verify", unit="model"):
        tokenizer, policy = load_named(name, path, device)
        responses[name] = [r for d in doms[name] for r in sample_responses(policy, tokenizer, prompts[d], cfg)]
        records += [{"judge": name, "generator": name, **r}
                    for r in judge_responses(policy, tokenizer, responses[name], cfg)]
        del policy
    if cfg.cross:   # every model judges the others' responses too (each loaded once more)
        for name, path in tqdm(models.items(), desc="verify cross", unit="judge"):
            tokenizer, policy = load_named(name, path, device)
            for gen in [g for g in models if g != name]:
                records += [{"judge": name, "generator": gen, **r}
                            for r in judge_responses(policy, tokenizer, responses[gen], cfg)]
            del policy
    rows = summarize_verify(records, n_boot=cfg.n_boot, seed=cfg.seed)
    res = {"config": asdict(cfg), "models": models, "own_domains": doms, "modes": list(judge.MODES),
           "rows": rows}
    out = Path(cfg.out)
    write_atomic(out / "verify_per_response.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(out / "verify.json", res)
    md = verify_markdown(res)
    write_atomic(out / "verify.md", md)
    plots.plot_verify(res, out / "verify_bars.png")
    if cfg.cross:
        plots.plot_verify_cross(res, out / "verify_cross.png")
    print(md)
    return res


def ci(v: dict, key: str) -> str:
    """"0.625 [0.500, 0.750]" from a judge_stats dict, n/a where undefined."""
    if v.get(key) is None:
        return "n/a"
    return f"{fmt(v[key])} [{fmt(v[f'{key}_lo'])}, {fmt(v[f'{key}_hi'])}]"


def verify_markdown(res: dict) -> str:
    """Table 7: every model judging its own responses, per domain and mode; the mean over domains per model;
    the cross matrix when computed. Says where a judge cannot be told from chance."""
    own = [r for r in res["rows"] if r["judge"] == r["generator"]]
    md = ("Self-verification (paper Table 7): each model's responses to its own domain's eval prompts, judged by "
          "the same model seeing the final answer only (outcome) or the whole response (process); a verdict is "
          "right when it agrees with the rule verifier (paper grader). Judge accuracy counts an unparseable "
          "verdict as wrong. TPR: correct responses judged correct; TNR: wrong responses judged wrong; balanced "
          "accuracy (TPR + TNR) / 2 is 0.5 for a judge that ignores the response, whatever the share of correct "
          "responses. 95% bootstrap intervals over problems. The prompts and the parsing are a reconstruction "
          "(data/judge.py).\n\n")
    rows = []
    for r in own:
        for mode in res["modes"]:
            v = r[mode]
            rows.append([r["judge"], r["domain"], f"{r['n']} ({v['n_pos']}/{v['n_neg']})",
                         f"{fmt(r['gen_acc'])} [{fmt(r['gen_acc_lo'])}, {fmt(r['gen_acc_hi'])}]", mode,
                         ci(v, "acc"), ci(v, "bal_acc"), fmt(v["tpr"]), fmt(v["tnr"]), fmt(v["unparseable"]),
                         fmt(v["said_yes"])])
    md += md_table(["model", "domain", "responses (correct/wrong)", "generation acc", "mode", "judge acc",
                    "balanced acc", "TPR", "TNR", "unparseable", "said yes"], rows)
    chance = [f"{r['judge']} {r['domain']} {m}" for r in own for m in res["modes"]
              if r[m]["bal_acc_lo"] is None or r[m]["bal_acc_lo"] <= 0.5]
    if chance:
        md += (f"\nNo judging signal (balanced accuracy undefined, or its 95% interval not above 0.5; a judge "
               f"whose verdicts are all unparseable scores 0) in {len(chance)} of {len(own) * len(res['modes'])} "
               f"cells: {', '.join(chance)}.\n")

    def mean(vals):
        vals = [x for x in vals if x is not None]
        return float(np.mean(vals)) if vals else None

    md += "\nMean over each model's domains (the paper's average judge accuracy, outcome / process):\n\n"
    names = list(dict.fromkeys(r["judge"] for r in own))
    md += md_table(["model", "generation acc", *[f"{m} {s}" for m in res["modes"] for s in ("acc", "balanced acc")],
                    *[f"{m} unparseable" for m in res["modes"]]],
                   [[n, mean(r["gen_acc"] for r in own if r["judge"] == n),
                     *[mean(r[m][s] for r in own if r["judge"] == n) for m in res["modes"] for s in ("acc", "bal_acc")],
                     *[mean(r[m]["unparseable"] for r in own if r["judge"] == n) for m in res["modes"]]]
                    for n in names])
    cross = [r for r in res["rows"] if r["judge"] != r["generator"]]
    if cross:
        md += "\nCross-judging: balanced accuracy, outcome / process, of each judge (rows) on each generator's responses:\n\n"
        gens = list(dict.fromkeys(r["generator"] for r in res["rows"]))
        for d in dict.fromkeys(r["domain"] for r in res["rows"]):
            cell = {(r["judge"], r["generator"]): r for r in res["rows"] if r["domain"] == d}
            md += f"\n{d}:\n\n" + md_table(["judge", *gens], [
                [j] + [f"{fmt(cell[(j, g)]['outcome']['bal_acc'])} / {fmt(cell[(j, g)]['process']['bal_acc'])}"
                       if (j, g) in cell else "" for g in gens] for j in names])
    return md


# ----------------------------------------------------------------------------------------------------------
# report: one report.md from folders of runs and the analyses above (report.py)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ReportConfig:
    """report.md with every table and plot, from a folder of runs, or several: the same experiment run with
    different seeds. report.py's docstring says how runs are found and defines the statistics."""

    runs: Names = field(default_factory=lambda: ["out"])
    """Folders holding one subfolder per training run (run.json) and per merge (merge_report.json). Several
    folders: one per seed, with the runs named alike in each; the report pools them."""
    analyses: Names = field(default_factory=list)
    """Each --runs folder's analyses (eval.json, eval_per_problem.jsonl, weights.json, kl.json,
    consistency.json), in the order of --runs: read there, and computed there when missing (--compute).
    Default: --out with one runs folder, <runs>/analysis for each of several."""
    out: str | None = None
    """report.md, report.json, its plots and stats.json; default <runs>/analysis, and with several runs folders analysis/
    in the folder that holds them all."""
    base: str | None = None
    """Base model; default: a run's saved step-0 checkpoint, else config["model"] of the runs."""
    experts: Names = field(default_factory=list)
    """domain=path experts; default: the single-domain runs. One runs folder only."""
    multitask: str | None = None
    """Multi-task model; default: the multi-domain run. One runs folder only."""
    merged: Names = field(default_factory=list)
    """name=path merged models; default: the folders holding merge_report.json. One runs folder only."""
    compute: bool = True
    """Run eval / weights / kl / consistency when their JSON is missing: their default settings, but for the
    three below and the runs' completion budget."""
    eval_problems: int = 32
    """Problems per benchmark of the eval it computes."""
    eval_k: int = 4
    """Samples per problem of the eval it computes."""
    kl_problems: int = 16
    """Prompts per domain of the KL matrix it computes."""
    n_boot: int = 1000
    """Bootstrap resamples behind every 95% interval (seeds, then problems within each seed: report.py)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    device: str = "auto"
    """cuda, cpu, or auto: cuda when present (for the analyses it computes)."""


# ----------------------------------------------------------------------------------------------------------

SUBCOMMANDS = {"eval": EvalConfig, "weights": WeightsConfig, "kl": KLConfig, "consistency": ConsistencyConfig,
               "verify": VerifyConfig, "report": ReportConfig}


def main(args: list[str] | None = None, run_report=None) -> None:
    """Parse the command line (before torch or matplotlib is imported, so --help is quick), run the
    subcommand, and print a UserError as one line with exit status 1. run_report: report.run_report, passed in
    by the script below, since report.py imports this module and is not imported back (no import cycle)."""
    try:
        cfg = tyro.extras.subcommand_cli_from_dict(SUBCOMMANDS, args=args)
        print(json.dumps({type(cfg).__name__: asdict(cfg)}))
        {EvalConfig: run_eval, WeightsConfig: run_weights, KLConfig: run_kl, ConsistencyConfig: run_consistency,
         VerifyConfig: run_verify, ReportConfig: run_report}[type(cfg)](cfg)
    except UserError as e:
        sub = next((a for a in (sys.argv[1:] if args is None else args) if a in SUBCOMMANDS), "")
        sys.exit(f"analyze.py {sub}: error: {e}")


if __name__ == "__main__":
    # Run as the module "analyze", not "__main__": report.py and plots.py import analyze, and must share its
    # classes (UserError, the configs) with the code that runs. report.py sits above this module (it runs the
    # analyses), so only this script part, which runs as the module "__main__", imports it, and only for the
    # report subcommand (--help stays quick).
    import analyze

    def run_report(cfg: ReportConfig) -> None:
        import report
        report.run_report(cfg)

    analyze.main(run_report=run_report)
