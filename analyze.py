"""Evaluation and the paper's analyses (M2RL, arXiv 2602.12566): accuracy tables, weight-update geometry,
cross-domain KL, consistency of gains, and one report that gathers them with plots.

Subcommands, in the order a study runs them (every output lands in --out, default out/analysis):

    # accuracy avg@k / pass@k of each model on the embedded eval split of every domain (+ benchmark files)
    python analyze.py eval --models base=tiny math=out/math code=out/code mixed=out/mixed ties=out/ties \
        --benchmarks embedded aime24=data/aime24.jsonl --k 4
    # IFBench (the paper's IF benchmark) from a local copy of IFBench_test.jsonl, with the paper's graders
    python analyze.py eval --models mixed=out/mixed --benchmarks ifbench=IFBench_test.jsonl --domains if --grader paper
    # which weights RL moved, how the experts' updates overlap and align (streamed tensor by tensor)
    python analyze.py weights --base Qwen/Qwen3-4B-Base --models math=out/math code=out/code mixed=out/mixed
    # KL between experts on each expert's own trajectories, and expert vs mixed / merged (paper Figure 4)
    python analyze.py kl --experts math=out/math code=out/code --multitask out/mixed --merged ties=out/ties
    # are the mixed / merged model's per-problem gains the union of the experts' gains? (paper Figure 5)
    python analyze.py consistency --base base --experts math code --models mixed ties
    # report.md with every table and plot; runs the analyses above that are missing, with their defaults
    python analyze.py report --runs out

Lists take spaces or commas (`--models a=x b=y` or `--models a=x,b=y`); a model is `name=path` or a bare
path / preset whose last folder is its name. On a GPU machine add nothing: --device defaults to cuda when present (bf16 weights there,
fp32 on CPU). `weights` on a 4B model reads one tensor slice per model at a time; use --device cuda to make
its random projections fast, or --proj-seeds (an empty list) to skip them.

How `report` finds things (it never trains or merges):
- training runs: every <runs>/<run>/ holding run.json (metrics.jsonl beside it); one domain in
  config["domains"] makes an expert of that domain, several make the multi-task run, and config["teachers"]
  makes an MT-OPD run (a distilled model).
- merged models: every <runs>/<name>/ holding merge_report.json (also when merge.py copied a run.json there
  from the base folder); the cost table reads its "wall_s".
- checkpoints: the run folder itself when it holds config.json + *.safetensors, else its newest such subfolder.
- base model: --base, else a run's checkpoints/step_000000 when kept, else config["model"] of the runs.
- analyses: <out>/eval.json, weights.json, kl.json, consistency.json. With --compute (default) a missing one
  is computed from the models found, with that subcommand's default settings (weights: the trained models
  only, not the merges; eval and kl: the runs' embedded math difficulty); run the subcommand yourself first
  to choose other settings. A section whose inputs are missing says so in report.md.
"""

import csv
import io
import json
import math
import os
import re
import tempfile
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from safetensors import safe_open
from tqdm import tqdm

import data
import model
import verifiers


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _split_commas(args: list[str]) -> list[str]:
    # tyro would keep `--models a=x,b=y` as the one string "a=x,b=y"; take commas and spaces alike,
    # as train.py --domains and merge.py --models do.
    return [s for a in args for s in a.split(",") if s]


Names = Annotated[list[str], tyro.constructors.PrimitiveConstructorSpec(
    nargs="*", metavar="A[,B...]", instance_from_str=_split_commas, is_instance=lambda x: isinstance(x, list),
    str_from_instance=lambda x: [",".join(x)])]


# ----------------------------------------------------------------------------------------------------------
# Shared helpers: named model specs, atomic writes, plots
# ----------------------------------------------------------------------------------------------------------


def parse_named(specs: list[str], what: str = "model") -> dict[str, str]:
    """["math=out/math", "out/code", "tiny"] -> {"math": "out/math", "code": "out/code", "tiny": "tiny"}."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec.rstrip("/")).name or spec
        if not name or not path:
            raise ValueError(f"bad {what} spec {spec!r}: expected name=path or a path")
        if name in named:
            raise ValueError(f"{what} name {name!r} given twice ({named[name]!r} and {path!r}); use name=path")
        named[name] = path
    return named


def clean_json(obj):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python, tuples -> lists, recursively."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(clean_json(obj), indent=1) + "\n")


def read_json(path: str | Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def save_plot(fig, path: str | Path, plotted: dict) -> None:
    """Save a figure as PNG with the numbers it shows as JSON beside it (same stem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), plotted)


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def heatmap(ax, values, rows: list[str], cols: list[str], title: str, text=None, cmap="viridis", digits=3, **kw):
    """Matrix plot with each cell's value (or text[i][j]) written in it; None/NaN cells are grey."""
    m = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, aspect="auto", **kw)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            label = text[i][j] if text is not None else fmt(m[i, j], digits)
            # black text on light cells, white on dark ones (perceived luminance of the cell colour)
            r, g, b, _ = cm(im.norm(m[i, j])) if np.isfinite(m[i, j]) else (0.83, 0.83, 0.83, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def label_bars(ax, bars, values, digits: int = 2) -> None:
    """Write each bar's value inside its base, and "n/a" where the value is undefined (no bar is drawn)."""
    for bar, v in zip(bars, values):
        missing = v is None or not math.isfinite(v)
        ax.annotate("n/a" if missing else f"{v:.{digits}f}", (bar.get_x() + bar.get_width() / 2, 0),
                    xytext=(0, 3 if missing or v >= 0 else -3), textcoords="offset points", ha="center",
                    va="bottom" if missing or v >= 0 else "top", fontsize=7, rotation=90)


def hbar_panels(rows: list[str], panels: dict[str, list], *, xlabel: str, title: str, err: dict | None = None,
                xlim: tuple[float, float] | None = None, digits: int = 3):
    """One panel per column of a rows x columns table, one horizontal bar per row with its value written beside
    it ("n/a" where undefined, and no bar). Readable with a dozen models, where grouped vertical bars are not.
    err: {panel: (lo, hi)} lists of whisker ends. Returns the figure."""
    finite = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    values = [v for vs in panels.values() for v in vs if finite(v)]
    lo_lim, hi_lim = xlim or (min(values + [0.0]) * 1.25, max(values + [0.05]) * 1.25)
    fig, axes = plt.subplots(1, len(panels), layout="constrained", sharey=True, squeeze=False,
                             figsize=(max(6.0, 3.3 * len(panels)), 0.3 * len(rows) + 1.8))
    y = np.arange(len(rows))
    for ax, (name, vals) in zip(axes[0], panels.items()):
        v = np.array([v if finite(v) else np.nan for v in vals], dtype=float)
        xerr = None
        if err and name in err:
            lo, hi = err[name]
            xerr = [[max(a - l, 0) if finite(a) and finite(l) else 0 for a, l in zip(vals, lo)],
                    [max(h - a, 0) if finite(a) and finite(h) else 0 for a, h in zip(vals, hi)]]
        ax.barh(y, v, color="C0", xerr=xerr, capsize=2, error_kw={"lw": 0.8})
        ends = err[name][1] if err and name in err else vals   # the value goes right of its whisker
        for i, (val, end) in enumerate(zip(vals, ends)):
            at = max([x for x in (val, end) if finite(x)] + [0])
            ax.text(at, i, f" {fmt(val, digits)}", va="center", fontsize=7)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlim(lo_lim, hi_lim)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, rows)
    axes[0][0].invert_yaxis()   # the first row on top, as in the tables
    fig.suptitle(title)
    return fig


def md_table(header: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) if isinstance(c, float) or c is None else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def load_policy(path: str, device: str):
    """A model from model.py on `device`: bf16 on GPU, fp32 on CPU (bf16 on CPU is slow and imprecise)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return model.load_model(path, dtype=dtype).to(device).eval()


# ----------------------------------------------------------------------------------------------------------
# eval: avg@k and pass@k per model x benchmark, per-problem rewards kept for `consistency`
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
    that domain across benchmarks (what `kl` puts beside its heatmap)."""
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
                    difficulty: int = 1) -> dict:
    """{benchmark name: rows}. "embedded" gives one benchmark per domain, "embedded/<domain>" (math at
    `difficulty`); anything else is a row-schema file (name=path or path, named after the file's stem)."""
    benches = {}
    for spec in specs:
        if spec == "embedded":
            for d in domains:
                benches[f"embedded/{d}"] = data.embedded(d, "eval", n=n_problems, seed=seed, difficulty=difficulty)
            continue
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec).stem
        if not Path(path).exists():
            raise FileNotFoundError(f"benchmark {name!r}: no file {path}")
        rows = data.load(path, list(domains), "eval", seed=seed)
        if not rows:
            raise ValueError(f"benchmark {name!r}: {path} has no rows of domains {domains}")
        benches[name] = rows[:n_problems] if n_problems else rows
    return benches


def evaluate_rows(policy, tokenizer, rows: list[dict], *, k: int, max_new_tokens: int, temperature: float,
                  top_p: float, batch_size: int, seed: int, think: bool, workers: int, bar=None,
                  grader: str = "lenient") -> list[dict]:
    """k samples per row, each graded by its domain's verifier -> one {"id", "domain", "rewards", "lengths",
    "truncated", "errors"} per row."""
    out = []
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        samples = model.generate(policy, tokenizer, [r["prompt"] for r in batch], n=k,
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
            })
        if bar is not None:
            bar.update(len(batch))
    return out


def plot_eval(result: dict, path: Path) -> None:
    """avg@k per model (rows, in evaluation order) and benchmark (panels), with the mean over benchmarks."""
    table, models = result["table"], list(result["models"])
    benches = list(dict.fromkeys(b for name in models for b in table.get(name, {})))  # in the order evaluated
    k = max((v["k"] for name in models for v in table.get(name, {}).values()), default=0)
    values = {b: [table.get(name, {}).get(b, {}).get("avg@k") for name in models] for b in benches}
    if len(benches) > 1:
        values["mean"] = [None if None in vals else float(np.mean(vals))
                          for vals in zip(*(values[b] for b in benches))]
    fig = hbar_panels(models, values, xlabel=f"avg@{k} (mean reward)", title=f"Accuracy per benchmark (avg@{k})")
    save_plot(fig, path, {"benchmarks": benches, "metric": f"avg@{k}", "models": models,
                          "values": {name: [values[b][i] for b in benches] for i, name in enumerate(models)}})


@dataclass
class EvalConfig:
    """Accuracy (avg@k, pass@k) of models on eval sets; per-problem rewards are kept for `consistency`."""

    models: Names = field(default_factory=lambda: ["tiny"])
    """Models: name=path, or a path / preset ("tiny") named after its last folder."""
    benchmarks: Names = field(default_factory=lambda: ["embedded"])
    """Eval sets: "embedded" (the eval split of every domain) and/or row-schema files as name=path."""
    domains: Names = field(default_factory=lambda: list(data.DOMAINS))
    """Domains to keep (embedded sets made, file rows filtered)."""
    difficulty: int = 0
    """Difficulty of the embedded math problems: the one the models were trained on (train.py --difficulty;
    0 is what the tiny model learns, 1-3 suit real models)."""
    n_problems: int | None = 32
    """Problems per benchmark (the first n); None for all."""
    k: int = 4
    """Samples per problem."""
    temperature: float = 0.6
    """Sampling temperature (0.6 and top-p 0.95: Qwen3's recommended thinking-mode sampling)."""
    top_p: float = 0.95
    max_new_tokens: int = 4
    """The completion budget the models were trained with (train.py --max-new-tokens; its tiny preset: 4).
    Longer samples of the tiny model are noise whose digits can even match a math answer. Real models
    reason for thousands of tokens; `report` passes the runs' own value."""
    batch_size: int = 16
    """Prompts per generate call (each sampled k times)."""
    think: bool = True
    """Grade only the text after </think> (a <think> left open scores 0); see verifiers/."""
    grader: Literal["lenient", "paper"] = "lenient"
    """"paper": the paper's graders (boxed math, "Answer: X", 20 code tests, 0 without </think>);
    "lenient": the project's, which the tiny model is trained with (see verifiers/)."""
    workers: int = 4
    """Parallel verifier processes (code runs programs)."""
    seed: int = 0
    device: str = field(default_factory=default_device)
    out: str = "out/analysis"
    """Writes eval.json, eval.md, eval.csv, eval_per_problem.jsonl, eval_bars.png/.json here."""

    def __post_init__(self):
        unknown = set(self.domains) - set(verifiers.VERIFIERS)
        assert not unknown, f"unknown domains {sorted(unknown)}; known: {sorted(verifiers.VERIFIERS)}"
        assert self.k >= 1 and self.batch_size >= 1


def run_eval(cfg: EvalConfig) -> dict:
    models = parse_named(cfg.models)
    benches = load_benchmarks(cfg.benchmarks, cfg.domains, cfg.n_problems, cfg.seed, cfg.difficulty)
    records = []
    bar = tqdm(total=len(models) * sum(map(len, benches.values())), desc="eval", unit="problem")
    for name, path in models.items():
        tokenizer, policy = model.load_tokenizer(path), load_policy(path, cfg.device)
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
    plot_eval(result, out / "eval_bars.png")
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
        raise FileNotFoundError(f"{path}: no .safetensors weights (a folder written by save_pretrained, "
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
            raise ValueError(f"model {name!r} ({path}) does not share the tensors of base {base}: "
                             f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                             f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        for n, shape in shapes.items():
            got = tuple(hs[n].get_slice(n).get_shape())
            if got != shape:
                raise ValueError(f"model {name!r} ({path}): tensor {n} has shape {list(got)}, "
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


def pair_matrix(res: dict, thr: str, scope: str, stat: str, diag: float | None = 1.0, transpose_stat=None):
    """names x names matrix of a pair statistic (row A, column B); transpose_stat fills B's row (one-sided)."""
    names = list(res["models"])
    m = [[diag if a == b else None for b in names] for a in names]
    for p in res["pairs"]:
        i, j = names.index(p["a"]), names.index(p["b"])
        m[i][j] = p[thr][scope].get(stat)
        m[j][i] = p[thr][scope].get(transpose_stat or stat)
    return m


def plot_weights(res: dict, out: Path) -> list[Path]:
    """weights_sparsity (per module type), weights_layers (per layer), weights_overlap (pair matrices with
    the random-mask expectation), weights_cosine (attention / FFN / all, exact vs projected)."""
    names, paths = list(res["models"]), []
    scopes = [s for s in res["scopes"]]
    # sparsity per module type, both thresholds: models x module types
    fig, axes = plt.subplots(2, 1, layout="constrained",
                             figsize=(max(7, 0.9 * len(scopes) + 3), 1.1 * len(names) + 4))
    for ax, thr in zip(axes, ("rel", "exact")):
        heatmap(ax, [[res["sparsity"][n][thr][s] for s in scopes] for n in names], names, scopes,
                {"exact": "exact threshold: unchanged when w1 == w0",
                 "rel": f"relative threshold: unchanged when |w1 - w0| <= {res['rel_tol']:g} max(|w1|, |w0|)"}[thr],
                digits=4)  # colours span the values seen: sparsities of RL updates sit close together
        ax.set_xlabel("module type (attention = q,k,v,o; ffn = gate,up,down; all = every parameter)")
        ax.set_ylabel("model")
    fig.suptitle("Update sparsity: fraction of parameters unchanged from the base")
    paths.append(out / "weights_sparsity.png")
    save_plot(fig, paths[-1], {"scopes": scopes, "sparsity": res["sparsity"]})
    # sparsity per layer
    fig, ax = plt.subplots(layout="constrained", figsize=(7, 4))
    for c, name in enumerate(names):
        for thr, style in (("rel", "-o"), ("exact", ":x")):
            ax.plot(res["layers"]["index"], res["layers"][name][thr], style, color=f"C{c}", ms=4,
                    label=f"{name} ({'relative' if thr == 'rel' else 'exact'})")
    ax.set_xticks(res["layers"]["index"])
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of parameters unchanged")
    ax.set_title("Update sparsity per layer")
    ax.legend(fontsize=7)
    paths.append(out / "weights_layers.png")
    save_plot(fig, paths[-1], {"layers": res["layers"]})
    if len(names) < 2:
        return paths
    # overlap matrices over all parameters, relative threshold, with the random-mask expectation in each cell
    panels = [("jaccard", "jaccard_rand", None, "Jaccard |A&B|/|A|B|"),
              ("a_in_b", "a_in_b_rand", "b_in_a", "one-sided |A&B|/|A| (row A)"),
              ("sign_agree", None, None, "sign agreement on A&B"),
              ("cos", None, None, "cosine of updates on A&B")]
    fig, axes = plt.subplots(1, 4, layout="constrained", figsize=(5.2 * 4, 0.7 * len(names) + 3))
    plotted = {"names": names, "threshold": "rel", "scope": "all"}
    for ax, (stat, rand, trans, title) in zip(axes, panels):
        m = pair_matrix(res, "rel", "all", stat, transpose_stat=trans)
        text = [[fmt(v, 2) for v in row] for row in m]
        if rand:
            mr = pair_matrix(res, "rel", "all", rand, diag=None,
                             transpose_stat=trans and trans + "_rand")
            text = [[t if r is None else f"{t}\n(rand {fmt(r, 2)})" for t, r in zip(tr, rr)]
                    for tr, rr in zip(text, mr)]
            plotted[rand] = mr
        plotted[stat] = m
        heatmap(ax, m, names, names, title, text=text, vmin=-1 if stat == "cos" else 0, vmax=1)
    fig.suptitle("Overlap of changed positions (relative threshold, all parameters)")
    paths.append(out / "weights_overlap.png")
    save_plot(fig, paths[-1], plotted)
    # cosine per pair: attention / FFN / all, exact vs projected (paper Figure 3)
    groups = [g for g in ("attention", "ffn", "all") if g in res["scopes"]]
    labels = [f"{p['a']}-{p['b']}" for p in res["pairs"]]
    # one row per group: with a dozen pairs, three panels side by side would not fit a page
    fig, axes = plt.subplots(len(groups), 1, layout="constrained", sharex=True, squeeze=False,
                             figsize=(max(6.0, 0.75 * len(labels) + 2), 3.0 * len(groups) + 1))
    plotted = {"pairs": labels, "threshold": "rel"}
    for ax, g in zip(axes[:, 0], groups):
        exact = [p["rel"][g]["cos"] for p in res["pairs"]]
        proj = [p["rel"][g].get("cos_proj") for p in res["pairs"]]
        spread = [p["rel"][g].get("cos_proj_std") for p in res["pairs"]]
        x = np.arange(len(labels))
        b1 = ax.bar(x - 0.2, [np.nan if v is None else v for v in exact], 0.4, label="exact (fp64)")
        label_bars(ax, b1, exact)
        if any(v is not None for v in proj):
            b2 = ax.bar(x + 0.2, [np.nan if v is None else v for v in proj], 0.4,
                        yerr=[0 if v is None else v for v in spread], capsize=3,
                        label=f"projected to {res['projection']['dim']} dims (mean +- std over seeds)")
            label_bars(ax, b2, proj)
        ax.axhline(0, color="black", lw=0.5)
        seen = [v for v in exact + proj if v is not None and math.isfinite(v)]
        ax.set_ylim(min(-0.05, min(seen + [0]) - 0.1), min(1.1, max(0.3, max(seen + [0]) + 0.15)))
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_title(f"{g}: cosine of updates on overlap")
        ax.set_ylabel("cosine similarity")
        plotted[g] = {"exact": exact, "proj": proj, "proj_std": spread}
    axes[-1][0].set_xlabel("model pair")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    paths.append(out / "weights_cosine.png")
    save_plot(fig, paths[-1], plotted)
    return paths


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
    device: str = field(default_factory=default_device)
    out: str = "out/analysis"
    """Writes weights.json and weights_*.png/.json here."""


def materialize(name_or_path: str, out: Path) -> str:
    """A folder of safetensors for `name_or_path`: itself, the HF cache folder of a hub id, or the model.py
    preset ("tiny") saved once under `out`."""
    if Path(name_or_path).exists():
        return name_or_path
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download  # a hub id: its files in the local HF cache, no download
        return snapshot_download(name_or_path, local_files_only=True)
    dest = out / f"base-{Path(name_or_path).name}"
    if not dest.exists():
        model.save_pretrained(model.load_model(name_or_path), model.load_tokenizer(name_or_path), str(dest))
    return str(dest)


def run_weights(cfg: WeightsConfig) -> dict:
    out = Path(cfg.out)
    res = compare_weights(materialize(cfg.base, out), parse_named(cfg.models), rel_tol=cfg.rel_tol,
                          proj_dim=cfg.proj_dim, proj_seeds=tuple(cfg.proj_seeds), chunk_elems=cfg.chunk_elems,
                          device=cfg.device)
    write_json(out / "weights.json", res)
    plot_weights(res, out)
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
# kl: how far apart the policies are, on each expert's own trajectories (paper Figure 4)
# ----------------------------------------------------------------------------------------------------------


def pack(trajs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (prompt + completion) ids, attention mask, and the mask of logit positions that predict a
    completion token: logits at position t predict token t+1, so completion token c (0-based) of a prompt of
    length p is predicted at p + c - 1."""
    width = max(len(p) + len(c) for p, c in trajs)
    ids = torch.full((len(trajs), width), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros(len(trajs), width, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(trajs), width, dtype=torch.bool)  # (B, T)
    for b, (p, c) in enumerate(trajs):
        ids[b, : len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attn[b, : len(p) + len(c)] = 1
        mask[b, len(p) - 1 : len(p) + len(c) - 1] = True
    return ids, attn, mask


@torch.no_grad()
def teacher_forced_kl(p_model, q_model, trajs: list[tuple[list[int], list[int]]], *, pad_id: int,
                      batch_size: int = 4, time_chunk: int = 512) -> dict:
    """Exact full-vocabulary KL(p || q) and KL(q || p) at every completion position of `trajs` (prompt ids,
    completion ids), both models fed the same tokens; token-level mean over all completion tokens.
    Temperature 1: the KL is between the models' raw next-token distributions. The fp32 log-softmax is taken
    time_chunk positions at a time so a 150k vocabulary does not multiply memory by the sequence length."""
    sum_pq = sum_qp = 0.0
    n_tokens = 0
    device = next(p_model.parameters()).device
    for b in range(0, len(trajs), batch_size):
        ids, attn, mask = (t.to(device) for t in pack(trajs[b : b + batch_size], pad_id))
        logits_p = p_model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        logits_q = q_model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        if logits_p.shape[-1] != logits_q.shape[-1]:
            raise ValueError(f"the models have different vocabularies ({logits_p.shape[-1]} vs "
                             f"{logits_q.shape[-1]} logits): KL needs a shared tokenizer")
        for t0 in range(0, ids.shape[1], time_chunk):
            m = mask[:, t0 : t0 + time_chunk]  # (B, t)
            if not m.any():
                continue
            logp = F.log_softmax(logits_p[:, t0 : t0 + time_chunk][m].float(), dim=-1)  # (N, V)
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


def plot_kl(res: dict, path: Path) -> None:
    rows, cols = res["domains"], res["models"]
    panels = [(res["kl_fwd"], "KL(expert of row || column)\non the row expert's trajectories", "magma", None),
              (res["kl_rev"], "KL(column || expert of row)\non the row expert's trajectories", "magma", None)]
    if res.get("perf_change") is not None:
        lim = max([abs(v) for row in res["perf_change"] for v in row if v is not None] + [1e-3])
        panels.append((res["perf_change"], "accuracy change on the row's domain\n(column - row's expert)",
                       "RdBu", (-lim, lim)))
    # panels stacked: a merge study has a dozen columns, and three such panels side by side do not fit a page
    fig, axes = plt.subplots(len(panels), 1, layout="constrained", squeeze=False,
                             figsize=(1.0 * len(cols) + 3.5, (0.55 * len(rows) + 1.9) * len(panels)))
    for ax, (m, title, cmap, lims) in zip(axes[:, 0], panels):
        # two significant figures: KLs between close policies are far below 0.001
        heatmap(ax, m, [f"{d} data" if "KL" in title else d for d in rows], cols, title, cmap=cmap,
                text=[[sig(v, 2) for v in row] for row in m], **({"vmin": lims[0], "vmax": lims[1]} if lims else {}))
        ax.set_ylabel("trajectories of the expert of" if "KL" in title else "domain")
    axes[-1][0].set_xlabel("model")
    if res.get("perf_change") is None:
        fig.text(0.5, -0.02, "accuracy change: not available (no eval.json for these models)", ha="center")
    save_plot(fig, path, {k: res.get(k) for k in ("domains", "models", "kl_fwd", "kl_rev", "perf_change")})


@dataclass
class KLConfig:
    """Cross-domain KL matrix: on trajectories each expert samples on its own domain's eval prompts, the KL
    between that expert and every other expert, the multi-task model and the merged models."""

    experts: Names
    """Single-domain experts as domain=path (math=out/math code=out/code)."""
    multitask: str | None = None
    """The model trained on the mix of domains: a path (column "multitask") or name=path."""
    merged: Names = field(default_factory=list)
    """Merged models as name=path."""
    prompts: str = "embedded"
    """Eval prompts: "embedded" or a row-schema file (rows of each expert's domain are used)."""
    n_problems: int = 16
    """Prompts per domain."""
    difficulty: int = 0
    """Difficulty of the embedded math prompts (as in eval: the one the models were trained on)."""
    k: int = 2
    """Trajectories sampled per prompt."""
    max_new_tokens: int = 4
    """As in eval: the completion budget the models were trained with (train.py's tiny preset: 4)."""
    temperature: float = 1.0
    """Sampling temperature of the trajectories (1: the expert's own policy)."""
    top_p: float = 1.0
    batch_size: int = 4
    """Sequences per teacher-forced forward pass."""
    seed: int = 0
    eval: str | None = None
    """eval.json for the accuracy-change panel; default <out>/eval.json when present."""
    device: str = field(default_factory=default_device)
    out: str = "out/analysis"
    """Writes kl.json and kl_heatmap.png/.json here."""

    def __post_init__(self):
        unknown = set(parse_named(self.experts, "expert")) - set(data.DOMAINS)
        assert not unknown, f"experts must be named by domain ({', '.join(data.DOMAINS)}), got {sorted(unknown)}"


def run_kl(cfg: KLConfig) -> dict:
    experts = parse_named(cfg.experts, "expert")
    columns = dict(experts)
    if cfg.multitask:   # a column named "multitask", or by NAME when given as NAME=PATH
        columns |= parse_named([cfg.multitask]) if "=" in cfg.multitask else {"multitask": cfg.multitask}
    columns |= parse_named(cfg.merged, "merged model")
    domains = list(experts)
    fwd = [[None] * len(columns) for _ in domains]
    rev = [[None] * len(columns) for _ in domains]
    n_tokens = {}
    bar = tqdm(total=len(domains) * len(columns), desc="kl", unit="pair")
    for r, domain in enumerate(domains):
        tokenizer, p_model = model.load_tokenizer(experts[domain]), load_policy(experts[domain], cfg.device)
        if cfg.prompts == "embedded":
            rows = data.embedded(domain, "eval", n=cfg.n_problems, seed=cfg.seed, difficulty=cfg.difficulty)
        else:
            rows = data.load(cfg.prompts, [domain], "eval", seed=cfg.seed)[: cfg.n_problems]
        if not rows:
            raise ValueError(f"no {domain} eval prompts in {cfg.prompts}")
        bar.set_postfix_str(f"sampling {domain}")
        samples = model.generate(p_model, tokenizer, [row["prompt"] for row in rows], n=cfg.k,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 top_p=cfg.top_p, seed=cfg.seed)
        trajs = [(s["prompt_ids"], s["completion_ids"]) for s in samples if s["completion_ids"]]
        for c, (name, path) in enumerate(columns.items()):
            bar.set_postfix_str(f"{domain} data: {domain} vs {name}")
            q_model = p_model if name == domain else load_policy(path, cfg.device)
            kl = teacher_forced_kl(p_model, q_model, trajs, pad_id=tokenizer.pad_token_id,
                                   batch_size=cfg.batch_size)
            fwd[r][c], rev[r][c], n_tokens[domain] = kl["kl_pq"], kl["kl_qp"], kl["n_tokens"]
            del q_model
            bar.update(1)
        del p_model
    bar.close()
    res = {"config": asdict(cfg), "domains": domains, "models": list(columns), "paths": columns,
           "kl_fwd": fwd, "kl_rev": rev, "n_tokens": n_tokens, "perf_change": None}
    eval_path = Path(cfg.eval) if cfg.eval else Path(cfg.out) / "eval.json"
    if eval_path.exists():
        res["perf_change"] = kl_perf_change(read_json(eval_path), domains, columns)
        res["eval"] = str(eval_path)
    write_json(Path(cfg.out) / "kl.json", res)
    plot_kl(res, Path(cfg.out) / "kl_heatmap.png")
    print(kl_markdown(res))
    return res


def kl_perf_change(evaluation: dict, domains: list[str], columns: dict[str, str]) -> list[list] | None:
    """[row domain A][column model M] = accuracy of M on domain A - accuracy of A's expert on A (avg@k from
    eval.json's by_domain); None in a cell whose model or domain was not evaluated."""
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


def kl_markdown(res: dict) -> str:
    md = ("Token-level KL on each row expert's own trajectories (mean over completion tokens), "
          "KL(row expert || column) / KL(column || row expert):\n\n")
    rows = [[f"{d} data ({res['n_tokens'].get(d, 0)} tokens)"] +
            [f"{fmt(f, 4)} / {fmt(b, 4)}" for f, b in zip(res["kl_fwd"][i], res["kl_rev"][i])]
            for i, d in enumerate(res["domains"])]
    md += md_table(["trajectories", *res["models"]], rows)
    if res.get("perf_change") is not None:
        md += "\nAccuracy change on the row's domain, column model minus the row's expert (avg@k):\n\n"
        md += md_table(["domain", *res["models"]],
                       [[d] + [None if v is None else float(v) for v in res["perf_change"][i]]
                        for i, d in enumerate(res["domains"])])
    return md


# ----------------------------------------------------------------------------------------------------------
# consistency: are the multi-task / merged model's per-problem gains the experts' gains? (paper Figure 5)
# ----------------------------------------------------------------------------------------------------------


def read_per_problem(path: str | Path) -> list[dict]:
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            for key in ("model", "benchmark", "id", "domain", "rewards"):
                if key not in r:
                    raise ValueError(f"{path}: line {n}: missing field {key!r}")
            if not isinstance(r["rewards"], list) or not r["rewards"]:
                raise ValueError(f"{path}: line {n}: field 'rewards' must be a non-empty list")
            records.append(r)
    return records


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")


def bootstrap_cosine(a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int, level: float = 0.95):
    """Percentile bootstrap interval of cosine(a, b) resampling problems with replacement; resamples where a
    vector is all zero (cosine undefined) are dropped."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))  # (n_boot, n)
    A, B = a[idx], b[idx]
    norms = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    ok = norms > 0
    if not ok.any():
        return float("nan"), float("nan")
    cos = (A * B).sum(1)[ok] / norms[ok]
    lo, hi = np.percentile(cos, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def consistency(records: list[dict], base: str, experts: list[str], models: list[str], *, n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Per problem, gain g = max(acc - base_acc, 0) with acc the mean reward of the k samples; the union gain
    is the per-problem max over the experts' gains; for each model, cosine(g_model, g_union) with a bootstrap
    95% interval, per domain and over all problems. A model equal to the union scores 1; a model whose gains
    fall only where no expert gains scores 0. Only problems that every model has results for are used."""
    acc = defaultdict(dict)
    domain_of = {}
    for r in records:
        key = (r["benchmark"], r["id"])
        acc[r["model"]][key] = float(np.mean(r["rewards"]))
        domain_of[key] = r["domain"]
    needed = [base, *experts, *models]
    missing = [m for m in needed if m not in acc]
    if missing:
        raise ValueError(f"no per-problem results for models {missing}; the results have {sorted(acc)}")
    keys = sorted(set.intersection(*(set(acc[m]) for m in needed)))
    if not keys:
        raise ValueError(f"models {needed} share no problem in the results")

    def gain(m):
        return np.array([max(acc[m][k] - acc[base][k], 0.0) for k in keys])

    union = np.max([gain(e) for e in experts], axis=0)
    scopes = {"all": np.ones(len(keys), bool)}
    seen = {domain_of[k] for k in keys}
    order = [d for d in data.DOMAINS if d in seen] + sorted(seen - set(data.DOMAINS))
    scopes |= {d: np.array([domain_of[k] == d for k in keys]) for d in order}
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


def plot_consistency(res: dict, path: Path) -> None:
    """cosine(gains, union) per model (rows) and problem set (panels), whiskers at the bootstrap interval."""
    scopes = [s for s in res["n_problems"] if s != "all"] + ["all"]
    models = res["models"]
    panel = {s: f"{s} (n={res['n_problems'][s]})" for s in scopes}
    stat = lambda key, s: [res["cos"][name][s][key] for name in models]  # noqa: E731
    fig = hbar_panels(models, {panel[s]: stat("cos", s) for s in scopes}, xlim=(0, 1.3),
                      err={panel[s]: (stat("lo", s), stat("hi", s)) for s in scopes},
                      xlabel="cosine(gains, experts' union)",
                      title="Per-problem gains over the base vs the union of the experts' gains "
                            "(bars: cosine; whiskers: 95% bootstrap interval)")
    save_plot(fig, path, {"scopes": scopes, **{key: {name: [res["cos"][name][s][key] for s in scopes]
                                                     for name in models} for key in ("cos", "lo", "hi")}})


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
    path = cfg.results or str(Path(cfg.out) / "eval_per_problem.jsonl")
    res = consistency(read_per_problem(path), cfg.base, cfg.experts, cfg.models, n_boot=cfg.n_boot,
                      seed=cfg.seed)
    res["results"] = path
    write_json(Path(cfg.out) / "consistency.json", res)
    plot_consistency(res, Path(cfg.out) / "consistency_bars.png")
    print(consistency_markdown(res))
    return res


def consistency_markdown(res: dict) -> str:
    scopes = [s for s in res["n_problems"] if s != "all"] + ["all"]
    md = (f"cosine(per-problem gain over {res['base']}, union of the experts' gains "
          f"[{', '.join(res['experts'])}]) with a 95% bootstrap interval over problems:\n\n")
    rows = [[name] + [f"{fmt(res['cos'][name][s]['cos'])} [{fmt(res['cos'][name][s]['lo'])}, "
                      f"{fmt(res['cos'][name][s]['hi'])}]" for s in scopes] for name in res["models"]]
    md += md_table(["model", *[f"{s} (n={res['n_problems'][s]})" for s in scopes]], rows)
    if any(res["cos"][n][s]["cos"] is None or not math.isfinite(res["cos"][n][s]["cos"])
           for n in res["models"] for s in scopes):
        md += ("\nn/a: the model, or every expert, gains nothing over the base on those problems, so the cosine "
               "is undefined.\n")
    return md


# ----------------------------------------------------------------------------------------------------------
# report: one report.md from a directory of runs and the analyses above
# ----------------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl of a training run: one JSON object with a "step" per line."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError(f"{path}: line {n}: missing field 'step'")
            rows.append(row)
    return rows


def find_checkpoint(folder: Path) -> str | None:
    """The folder itself when it holds an HF model (config.json + safetensors), else its most recently
    written subfolder that does; None when there is none."""
    def is_model(p: Path) -> bool:
        return (p / "config.json").exists() and any(p.glob("*.safetensors"))

    if is_model(folder):
        return str(folder)
    subs = [p for p in folder.iterdir() if p.is_dir() and is_model(p)]
    return str(max(subs, key=lambda p: p.stat().st_mtime)) if subs else None


def discover(runs: Path) -> dict:
    """{"train": {run: {...}}, "merged": {name: {...}}} from the folders directly under `runs`."""
    found = {"train": {}, "merged": {}}
    if not runs.is_dir():
        return found
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        # a merge first: merge.py copies the base folder's side files, which can include a run.json
        if (d / "merge_report.json").exists():
            found["merged"][d.name] = {"dir": str(d), "report": read_json(d / "merge_report.json"),
                                       "checkpoint": find_checkpoint(d)}
        elif (d / "run.json").exists():
            run = read_json(d / "run.json")
            cfg = run.get("config", {})
            domains = cfg.get("domains") or []
            if isinstance(domains, str):
                domains = domains.split(",")
            # MT-OPD (train.py --teachers) distils experts; otherwise one domain is an expert, several the mix
            kind = "opd" if cfg.get("teachers") else "expert" if len(domains) == 1 else "mixed"
            found["train"][d.name] = {
                "dir": str(d), "run": run, "domains": list(domains), "kind": kind, "base": cfg.get("model"),
                "metrics": read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").exists() else [],
                "checkpoint": find_checkpoint(d), "mtime": (d / "run.json").stat().st_mtime,
                "step0": find_checkpoint(d / "checkpoints" / "step_000000")
                         if (d / "checkpoints" / "step_000000").is_dir() else None}
    return found


def models_from_runs(found: dict, cfg: "ReportConfig") -> dict:
    """{"base": path|None, "experts": {domain: path}, "multitask": {name: path}, "merged": {name: path},
    "distilled": {name: path}}: the flags when given, else what the run folders show (the newest run when two
    train the same domain)."""
    experts, multitask, distilled = {}, {}, {}
    for name, t in sorted(found["train"].items(), key=lambda kv: kv[1]["mtime"]):
        if not t["checkpoint"]:
            continue
        if t["kind"] == "expert":
            experts[t["domains"][0]] = t["checkpoint"]
        elif t["kind"] == "mixed":
            multitask[name] = t["checkpoint"]
        else:
            distilled[name] = t["checkpoint"]
    experts = {d: experts[d] for d in data.DOMAINS if d in experts}  # tables list domains in the usual order
    if len(multitask) == 1:
        multitask = {"multitask": next(iter(multitask.values()))}
    # the base: the runs' saved step-0 model when one is kept, else the starting model their config names
    step0 = [t["step0"] for t in found["train"].values() if t["step0"]]
    bases = {t["base"] for t in found["train"].values() if t["base"]}
    return {
        "base": cfg.base or (step0[0] if step0 else bases.pop() if len(bases) == 1 else None),
        "experts": parse_named(cfg.experts, "expert") if cfg.experts else experts,
        "multitask": {"multitask": cfg.multitask} if cfg.multitask else multitask,
        "merged": parse_named(cfg.merged, "merged model") if cfg.merged else
                  {n: m["checkpoint"] for n, m in found["merged"].items() if m["checkpoint"]},
        "distilled": distilled,
    }


PER_TOKEN_STATS = ("kl", "teacher_kl", "entropy", "clip_frac")   # train.py averages these over trained tokens


def trained_nothing(run: dict, row: dict) -> bool:
    """A step whose every group had equal rewards and was dropped (train.py --filter-zero-var) trained no token:
    train.py then logs 0 for the per-token statistics, which is no measurement, so the plots skip it."""
    cfg = run.get("config", {})
    return bool(cfg.get("filter_zero_var")) and not cfg.get("teachers") and row.get("zero_var_frac") == 1.0


def plot_curve(ax, pts: list, color: str, label: str) -> int:
    """Per-step values as a thin line, and over 30 steps their trailing mean over w steps as a thick one
    (RL rewards are noisy from step to step). Returns w (1: no mean drawn)."""
    x, y = np.array(pts, dtype=float).T
    if len(pts) < 30:
        ax.plot(x, y, marker="o", ms=3, color=color, label=label)
        return 1
    w = max(5, len(pts) // 15)
    ax.plot(x, y, lw=0.7, alpha=0.3, color=color)
    ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.8, color=color, label=label)
    return w


def plot_training(train: dict, out: Path) -> list[Path]:
    """train_curves.png: reward, accuracy and completion length per domain (one panel per domain, one line per
    run); train_stats.png: the run-wide statistics that are logged (KL, entropy, ...). A run has one colour
    in both figures."""
    paths = []
    color = {name: f"C{i % 10}" for i, name in enumerate(train)}
    logged = {k.split("/", 1)[1] for t in train.values() for row in t["metrics"] for k in row if k.startswith("reward/")}
    domains = [d for d in data.DOMAINS if d in logged] + sorted(logged - set(data.DOMAINS))
    windows = set()
    if domains:
        kinds = [k for k in ("reward", "acc", "len") if any(f"{k}/{d}" in row for t in train.values()
                                                            for row in t["metrics"] for d in domains)]
        fig, axes = plt.subplots(len(kinds), len(domains), layout="constrained", squeeze=False,
                                 figsize=(4 * len(domains), 3 * len(kinds)))
        plotted = {}
        for r, kind in enumerate(kinds):
            for c, d in enumerate(domains):
                ax, key = axes[r][c], f"{kind}/{d}"
                for name, t in train.items():
                    pts = [(row["step"], row[key]) for row in t["metrics"] if row.get(key) is not None]
                    if pts:
                        windows.add(plot_curve(ax, pts, color[name], name))
                        plotted.setdefault(key, {})[name] = pts
                ax.set_title(f"{d}: {kind}")
                ax.set_xlabel("step")
                ax.set_ylabel({"reward": "mean reward", "acc": "accuracy", "len": "completion tokens"}[kind])
                if ax.lines:
                    ax.legend(fontsize=7)
        smooth = f" (thin: each step; thick: mean of the last {max(windows)} steps)" if max(windows) > 1 else ""
        fig.suptitle("Training curves per domain" + smooth)
        paths.append(out / "train_curves.png")
        save_plot(fig, paths[-1], plotted)
    # a statistic that is 0 in every run (kl without a KL term, teacher_kl without MT-OPD) is left out
    stats = [k for k in ("reward", "kl", "teacher_kl", "entropy", "grad_norm", "clip_frac", "zero_var_frac",
                         "truncated", "tokens_per_s") if any(row.get(k) for t in train.values() for row in t["metrics"])]
    if stats:
        cols = min(4, len(stats))
        rows = math.ceil(len(stats) / cols)
        fig, axes = plt.subplots(rows, cols, layout="constrained", figsize=(4 * cols, 3 * rows), squeeze=False)
        plotted, windows = {}, {1}
        for ax, key in zip(axes.flat, stats):
            for name, t in train.items():
                pts = [(row["step"], row[key]) for row in t["metrics"] if row.get(key) is not None
                       and not (key in PER_TOKEN_STATS and trained_nothing(t["run"], row))]
                if key in ("kl", "teacher_kl") and not any(v for _, v in pts):
                    continue   # the run has no such term (kl_coef 0, no teachers): zeros are no measurement
                if pts:
                    windows.add(plot_curve(ax, pts, color[name], name))
                    plotted.setdefault(key, {})[name] = pts
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            if ax.lines:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(stats):]:
            ax.axis("off")
        smooth = f" (thin: each step; thick: mean of the last {max(windows)} steps)" if max(windows) > 1 else ""
        fig.suptitle("Training statistics" + smooth + "; per-token statistics skip steps that trained no token")
        paths.append(out / "train_stats.png")
        save_plot(fig, paths[-1], plotted)
    return paths


def device_hours(run: dict) -> float | None:
    """run.json's device_hours, else wall_s x world_size / 3600."""
    if run.get("device_hours") is not None:
        return float(run["device_hours"])
    if run.get("wall_s") is not None:
        return float(run["wall_s"]) * int(run.get("world_size", 1)) / 3600
    return None


def sig(x, digits: int = 3) -> str:
    """A number to `digits` significant figures (costs of tiny runs are 1e-4 hours), or n/a."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def cost_table(found: dict) -> tuple[str, dict] | None:
    """Device-hours of each way to one multi-domain model: the mixed run; the expert runs plus one merge
    (merge_report.json's wall_s on one device); the expert runs plus MT-OPD (the experts are its teachers).
    Beside each, the mixed run's cost as a fraction of it (the paper: 33.2% of separate training + merging)."""
    hours = {kind: {n: device_hours(t["run"]) for n, t in found["train"].items() if t["kind"] == kind}
             for kind in ("expert", "mixed", "opd")}
    if not any(hours.values()):
        return None
    hours["merge"] = {n: None if m["report"].get("wall_s") is None else float(m["report"]["wall_s"]) / 3600
                      for n, m in found["merged"].items()}
    rows = []
    for kind, label in (("expert", "expert run"), ("mixed", "mixed run"), ("merge", "merge"), ("opd", "MT-OPD run")):
        for n, h in hours[kind].items():
            info = found["merged"][n]["report"] if kind == "merge" else found["train"][n]["run"]
            wall = info.get("wall_s")
            rows.append([label, n, info.get("device", "n/a"), info.get("world_size", 1), sig(wall), sig(h)])
    md = ("Every run and merge. Device-hours = wall time x processes; a training run's wall time counts its steps "
          "(train.py's run.json), a merge's the whole merge.py process:\n\n")
    md += md_table(["kind", "run", "device", "processes", "wall s", "device-hours"], rows)

    experts = sum(hours["expert"].values()) if hours["expert"] and None not in hours["expert"].values() else None
    plus = lambda h: None if experts is None or h is None else experts + h  # noqa: E731
    approaches = {f"mixed run {n}": h for n, h in hours["mixed"].items()}
    approaches["experts alone (before combining)"] = experts
    approaches |= {f"experts + merge {n}": plus(h) for n, h in hours["merge"].items()}
    approaches |= {f"experts + MT-OPD run {n}": plus(h) for n, h in hours["opd"].items()}
    mixed_name, mixed = next(iter(hours["mixed"].items()), (None, None))
    md += (f"\nEach way to one model for all domains, and the mixed run's cost as a fraction of it"
           f"{f' (mixed run: {mixed_name})' if mixed_name else ' (no mixed run found)'}:\n\n")
    md += md_table(["approach", "device-hours", "mixed / approach"],
                   [[a, sig(h), sig(ratio(mixed, h) if mixed is not None and h else None)]
                    for a, h in approaches.items()])
    return md, {"hours": hours, "experts_total": experts, "approaches": approaches, "mixed": mixed_name}


def merge_comparison(found: dict, models: dict, evaluation: dict) -> str | None:
    """The ways to combine the experts side by side: per-domain accuracy (avg@k over every problem of the
    domain) of each merge and MT-OPD run, beside the experts (each on its own domain) and the mixed model,
    with each merge's own statistics from merge_report.json."""
    if not found["merged"] and not models["distilled"]:
        return None
    by = evaluation.get("by_domain", {})
    domains = [d for d in data.DOMAINS if any(d in v for v in by.values())]
    name = lambda n, p: match_eval_name(evaluation, n, p)  # noqa: E731

    def accs(model_name):
        acc = [by.get(model_name, {}).get(d) if model_name else None for d in domains]
        return acc, (float(np.mean(acc)) if acc and None not in acc else None)

    experts = {d: name(d, p) for d, p in models["experts"].items()}
    own = [by.get(experts.get(d), {}).get(d) if experts.get(d) else None for d in domains]
    rows = [["experts", "each on its own domain", *own, None if None in own else float(np.mean(own)), None,
             "", "", ""]]
    mixed = None
    for n, p in models["multitask"].items():
        acc, mean = accs(name(n, p))
        mixed = mean if mixed is None else mixed   # the first mixed run is the reference
        rows.append(["mixed", name(n, p) or n, *acc, mean, None, "", "", ""])
    combined = []
    for n, m in found["merged"].items():
        acc, mean = accs(name(n, m["checkpoint"] or m["dir"]))
        summary = m["report"].get("summary", {})
        kept = summary.get("kept")
        combined.append(["merge", name(n, m["checkpoint"] or m["dir"]) or n, *acc, mean,
                         None if mean is None or mixed is None else mean - mixed,
                         sig(float(np.mean(kept)) if kept else None), sig(summary.get("sign_conflict")),
                         sig(summary.get("update_norm"))])
    for n, p in models["distilled"].items():
        acc, mean = accs(name(n, p))
        combined.append(["MT-OPD", name(n, p) or n, *acc, mean,
                         None if mean is None or mixed is None else mean - mixed, "", "", ""])
    combined.sort(key=lambda r: -1.0 if r[len(domains) + 2] is None else -r[len(domains) + 2])
    md = ("Accuracy per domain (avg@k, from eval.json), best combination first; mean - mixed compares with the "
          "mixed model; for merges, the fraction of each expert's update kept (mean over experts), the fraction "
          "of positions whose updates disagree in sign, and the L2 norm of the merged update "
          "(merge_report.json):\n\n")
    return md + md_table(["kind", "model", *domains, "mean", "mean - mixed", "kept", "sign conflicts",
                          "update norm"], rows + combined)


@dataclass
class ReportConfig:
    """report.md with every table and plot, from a directory of runs (see the module docstring)."""

    runs: str = "out"
    """Folder holding one subfolder per training run (run.json) and per merge (merge_report.json)."""
    out: str = "out/analysis"
    """Where the analyses' JSON are read (and computed when missing) and report.md is written."""
    base: str | None = None
    """Base model; default: a run's saved step-0 checkpoint, else config["model"] of the runs."""
    experts: Names = field(default_factory=list)
    """domain=path experts; default: the single-domain runs."""
    multitask: str | None = None
    """Multi-task model; default: the multi-domain run."""
    merged: Names = field(default_factory=list)
    """name=path merged models; default: the folders holding merge_report.json."""
    compute: bool = True
    """Run eval / weights / kl / consistency with their default settings when their JSON is missing."""
    device: str = field(default_factory=default_device)


def run_report(cfg: ReportConfig) -> str:
    runs, out = Path(cfg.runs), Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    found = discover(runs)
    m = models_from_runs(found, cfg)
    trained = {**m["experts"], **m["multitask"], **m["distilled"]}
    others = {**m["experts"], **m["multitask"], **m["merged"], **m["distilled"]}
    named = lambda d: [f"{k}={v}" for k, v in d.items()]  # noqa: E731
    files = {k: out / f"{k}.json" for k in ("eval", "weights", "kl", "consistency")}
    # eval and kl sample like the runs did: their embedded math difficulty and completion budget, when shared
    level = {}
    for key in ("difficulty", "max_new_tokens"):
        values = {t["run"].get("config", {}).get(key) for t in found["train"].values()} - {None}
        level |= {key: values.pop()} if len(values) == 1 else {}
    if cfg.compute and m["base"] and others and not files["eval"].exists():
        run_eval(EvalConfig(models=[f"base={m['base']}", *named(others)], out=cfg.out, device=cfg.device, **level))
    if cfg.compute and m["base"] and trained and not files["weights"].exists():
        # the trained models only: with every merge too, the pair plots would be unreadable
        run_weights(WeightsConfig(models=named(trained), base=m["base"], out=cfg.out, device=cfg.device))
    if cfg.compute and m["experts"] and not files["kl"].exists():
        first_mt = next(iter(m["multitask"].items()), None)
        extra_mt = dict(list(m["multitask"].items())[1:])  # a second multi-task run is one more column
        run_kl(KLConfig(experts=named(m["experts"]), multitask=first_mt and f"{first_mt[0]}={first_mt[1]}",
                        merged=named({**extra_mt, **m["distilled"], **m["merged"]}), out=cfg.out,
                        device=cfg.device, **level))
    combined = {**m["multitask"], **m["merged"], **m["distilled"]}
    if (cfg.compute and files["eval"].exists() and m["base"] and m["experts"] and combined
            and not files["consistency"].exists()):
        ev = read_json(files["eval"])
        name = lambda n, p: match_eval_name(ev, n, p)  # noqa: E731
        run_consistency(ConsistencyConfig(
            base=name("base", m["base"]), experts=[name(d, p) for d, p in m["experts"].items()],
            models=[name(n, p) for n, p in combined.items()], out=cfg.out))

    md = [f"# M2RL report\n\nRuns: `{runs}`. Analyses: `{out}`. Every plot has its numbers in a .json beside it.\n"]

    def missing(what: str) -> None:
        md.append(f"**Not available:** {what}\n")

    md.append("## 1. Runs\n")
    if found["train"] or found["merged"]:
        rows = [[n, t["kind"], ",".join(t["domains"]), t["metrics"][-1]["step"] if t["metrics"] else "n/a",
                 sig(t["run"].get("wall_s")), t["run"].get("device", "n/a"), t["run"].get("world_size", "n/a"),
                 sig(device_hours(t["run"])), t["checkpoint"] or "none"] for n, t in found["train"].items()]
        rows += [[n, "merge", m_["report"].get("method", ""), "", sig(m_["report"].get("wall_s")),
                  m_["report"].get("device", "n/a"), "", "", m_["checkpoint"] or "none"]
                 for n, m_ in found["merged"].items()]
        md.append(md_table(["run", "kind", "domains / method", "last step", "wall s", "device", "processes",
                            "device-hours", "checkpoint"], rows))
    else:
        missing(f"no run.json or merge_report.json in the folders of `{runs}`.")
    ev = read_json(files["eval"]) if files["eval"].exists() else None
    md.append("\nModels used (named as in eval.json): " + ", ".join(
        f"{(ev and match_eval_name(ev, k, v)) or k} = `{v}`" for k, v in {"base": m["base"], **others}.items()) + "\n")

    md.append("## 2. Training curves\n")
    plots = plot_training(found["train"], out) if any(t["metrics"] for t in found["train"].values()) else []
    for p in plots:
        md.append(f"![{p.stem}]({p.name})\n")
    if not plots:
        missing(f"no metrics.jsonl with reward/<domain> lines in the runs of `{runs}`.")

    md.append("## 3. Main table: accuracy of every model on every domain\n")
    if ev:
        md.append(eval_tables(ev["table"], list(ev["models"]))[0])
        plot_eval(ev, out / "eval_bars.png")
        md.append("\n![eval](eval_bars.png)\n")
    else:
        missing(f"`{files['eval']}` (run `python analyze.py eval`, or report with --compute and models).")

    md.append("## 4. Combining the experts: merge methods and MT-OPD vs the mixed model\n")
    comparison = merge_comparison(found, m, ev) if ev else None
    if comparison:
        md.append(comparison)
    else:
        missing("merged models or MT-OPD runs in the runs folder, with their eval results "
                f"(`{files['eval']}`)." if ev else f"`{files['eval']}` (the accuracy of the merged models).")

    md.append("## 5. Cost: mixed training vs separate training + combining\n")
    cost = cost_table(found)
    if cost:
        md.append(cost[0])
        write_json(out / "cost.json", cost[1])
    else:
        missing(f"no training runs with run.json in `{runs}`.")

    md.append("## 6. Weight updates\n")
    if files["weights"].exists():
        res = read_json(files["weights"])
        md.append(weights_markdown(res))
        for p in plot_weights(res, out):
            md.append(f"\n![{p.stem}]({p.name})\n")
    else:
        missing(f"`{files['weights']}` (run `python analyze.py weights`, or give --base and the models).")

    md.append("## 7. Cross-domain KL\n")
    if files["kl"].exists():
        res = read_json(files["kl"])
        md.append(kl_markdown(res))
        if res.get("perf_change") is None:
            missing("the accuracy change beside the KL (no eval.json when kl ran).")
        plot_kl(res, out / "kl_heatmap.png")
        md.append("\n![kl](kl_heatmap.png)\n")
    else:
        missing(f"`{files['kl']}` (run `python analyze.py kl`, or report with --compute and expert runs).")

    md.append("## 8. Consistency of gains\n")
    if files["consistency"].exists():
        res = read_json(files["consistency"])
        md.append(consistency_markdown(res))
        plot_consistency(res, out / "consistency_bars.png")
        md.append("\n![consistency](consistency_bars.png)\n")
    else:
        missing(f"`{files['consistency']}` (needs eval results of the base, the experts and a mixed or "
                f"merged model; run `python analyze.py consistency`).")
    text = "\n".join(md)
    write_atomic(out / "report.md", text)
    print(f"wrote {out / 'report.md'}")
    return text


# ----------------------------------------------------------------------------------------------------------


def main(cfg: EvalConfig | WeightsConfig | KLConfig | ConsistencyConfig | ReportConfig):
    print(json.dumps({type(cfg).__name__: asdict(cfg)}))
    {EvalConfig: run_eval, WeightsConfig: run_weights, KLConfig: run_kl, ConsistencyConfig: run_consistency,
     ReportConfig: run_report}[type(cfg)](cfg)


if __name__ == "__main__":
    main(tyro.extras.subcommand_cli_from_dict({"eval": EvalConfig, "weights": WeightsConfig, "kl": KLConfig,
                                                "consistency": ConsistencyConfig, "report": ReportConfig}))
