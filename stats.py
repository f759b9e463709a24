"""The helpers that analyze.py, report.py and plots.py share, below all three so that none of them imports
another for them: JSON in and out, number formatting and markdown tables, and the bootstrap statistics behind
every 95% interval of the report (report.py's docstring defines them). This module imports no other file of
the project but cli.py (for UserError).

    from stats import estimate, est_text, md_table, write_json
"""

import json
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from cli import UserError


# ----------------------------------------------------------------------------------------------------------
# JSON in and out, formatting, markdown tables
# ----------------------------------------------------------------------------------------------------------


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
        raise UserError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def sig(x, digits: int = 3) -> str:
    """A number to `digits` significant figures in plain decimals (0.0000123, 12300), or n/a: KLs of close
    policies and the costs of tiny runs are far below 0.001."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return np.format_float_positional(x, precision=digits, fractional=False, trim="-")


def md_table(header: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) if isinstance(c, float) or c is None else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line of a JSON-lines file; a line that is not a JSON object
    holding every one of `fields` is a UserError naming the file and line."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            for key in fields:
                if not isinstance(r, dict) or key not in r:
                    raise UserError(f"{path}: line {n}: missing field {key!r}")
            records.append((n, r))
    return records


# ----------------------------------------------------------------------------------------------------------
# Statistics: a hierarchical bootstrap over seeds and problems, paired differences, one-sided bounds at 0 and
# 1, the validation slice that picks the best merge
# ----------------------------------------------------------------------------------------------------------


def bench_rng(seed: int, benchmark: str) -> np.random.Generator:
    """The resampling generator of one benchmark: the same for every model and difference on it, so that
    they are all measured on the same resampled problems."""
    return np.random.default_rng([seed, zlib.crc32(benchmark.encode())])


def resample_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of x over len(x) entries drawn with replacement: a percentile bootstrap's replicates."""
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))  # (n_boot, n)
    return x[idx].mean(axis=1)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def seed_rng(seed: int) -> np.random.Generator:
    """The generator that resamples seeds: one for every benchmark and model, so that a replicate of a mean over
    benchmarks, and of every model and difference, draws the same seeds."""
    return np.random.default_rng([seed, zlib.crc32(b"seeds")])


def hierarchical_means(x: np.ndarray, seed_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) replicates of the mean of x (seeds, problems) under a two-level bootstrap: row r takes the
    seeds seed_idx[r] (S drawn with replacement), and for each of them n problems drawn with replacement from
    that seed's row, independently per drawn seed. Paired: a difference of two models resampled with the same
    seed_idx and rng uses the same seeds and, within each, the same problems for both."""
    n_boot, S = seed_idx.shape
    prob = rng.integers(0, x.shape[1], size=(n_boot, S, x.shape[1]))   # (n_boot, S, n)
    return x[seed_idx[:, :, None], prob].mean(axis=(1, 2))


def one_sided_bound(n_samples: int, level: float = 0.95) -> float:
    """Clopper-Pearson one-sided bound for 0 successes in n samples: the p with (1 - p)^n = 1 - level (the
    lower bound for n of n is 1 minus it). Samples of different problems may differ in their chances: all n
    fail with probability prod(1 - p_i) <= (1 - mean p)^n (AM-GM), so the bound holds for the mean chance."""
    return 1.0 - (1.0 - level) ** (1.0 / n_samples)


def estimate(scores: dict[str, np.ndarray], *, n_boot: int, seed: int,
             samples: dict[str, int] | None = None) -> dict | None:
    """scores {benchmark: (seeds, problems) per-problem scores} -> {"value", "lo", "hi", "seeds", "n",
    "n_seeds", "bound"}: the mean over benchmarks of the mean over seeds and problems, its 95% interval, each
    seed's own value, and the numbers of problems and seeds. A difference of two models is the estimate of
    their per-problem differences (paired). None without a benchmark.

    The interval: percentile bootstrap, hierarchical. Each replicate draws the seeds with replacement
    (seed_rng), then within each drawn seed the problems of each benchmark with replacement (bench_rng); with
    one seed only problems are resampled, so the interval is eval noise on that one checkpoint. samples
    {benchmark: graded samples per score}: when given and every score is 0 (or every one 1), the bootstrap's
    [0, 0] says nothing, and the interval is the one-sided 95% bound over the graded samples instead
    (seeds x problems x samples): [0, one_sided_bound], "bound": "upper" (or [1 - it, 1], "lower")."""
    scores = {b: s for b, s in scores.items() if s.shape[1]}
    if not scores:
        return None
    n_seeds = {s.shape[0] for s in scores.values()}
    assert len(n_seeds) == 1, f"every benchmark needs the same seeds, got {n_seeds}"
    S = n_seeds.pop()
    seed_idx = seed_rng(seed).integers(0, S, size=(n_boot, S))   # (n_boot, S)
    reps = np.mean([hierarchical_means(s, seed_idx, bench_rng(seed, b)) for b, s in scores.items()], axis=0)
    lo, hi = percentile_interval(reps)
    e = {"value": float(np.mean([s.mean() for s in scores.values()])), "lo": lo, "hi": hi,
         "seeds": np.mean([s.mean(1) for s in scores.values()], axis=0).tolist(),
         "n": sum(s.shape[1] for s in scores.values()), "n_seeds": S, "bound": None}
    if samples is not None:
        n_graded = sum(s.size * samples[b] for b, s in scores.items())
        if all((s == 0).all() for s in scores.values()):
            e |= {"lo": 0.0, "hi": one_sided_bound(n_graded), "bound": "upper"}
        elif all((s == 1).all() for s in scores.values()):
            e |= {"lo": 1.0 - one_sided_bound(n_graded), "hi": 1.0, "bound": "lower"}
    return e


def significant(e: dict) -> bool:
    """The 95% interval excludes 0."""
    return e["lo"] > 0 or e["hi"] < 0


def interval_text(e: dict | None, diff: bool = False) -> str:
    """"[0.350, 0.470]" (a difference: "[+0.050, +0.190]"; a one-sided bound: "[0.000, 0.023] one-sided"), then
    "; seeds a to b" when there are several."""
    if e is None:
        return "n/a"
    f = (lambda x: f"{x:+.3f}") if diff else (lambda x: f"{x:.3f}")  # noqa: E731
    text = f"[{f(e['lo'])}, {f(e['hi'])}]" + (" one-sided" if e.get("bound") else "")
    if len(e["seeds"]) > 1:
        text += f"; seeds {f(min(e['seeds']))} to {f(max(e['seeds']))}"
    return text


def est_text(e: dict | None, diff: bool = False) -> str:
    """"0.412 [0.350, 0.470]"; a difference "+0.120 [+0.050, +0.190] sig" (or n.s.); then the seeds, if several."""
    if e is None:
        return "n/a"
    interval, _, seeds = interval_text(e, diff).partition("; ")
    verdict = (" sig" if significant(e) else " n.s.") if diff else ""
    value = f"{e['value']:+.3f}" if diff else f"{e['value']:.3f}"
    return f"{value} {interval}{verdict}" + (f"; {seeds}" if seeds else "")


def spread_text(values: list, f=sig) -> str:
    """One value as it is; several (one per seed) as "mean (seeds min to max)"; n/a when any is missing."""
    if not values or any(v is None for v in values):
        return "n/a"
    if len(values) == 1:
        return f(values[0])
    return f"{f(float(np.mean(values)))} (seeds {f(min(values))} to {f(max(values))})"


VALIDATION_EVERY = 4
"""One problem in VALIDATION_EVERY is in the validation slice (by its id's hash), the rest in the test slice."""


def is_validation(problem_id) -> bool:
    """The problem is in the validation slice: crc32 of its id (as text) is divisible by VALIDATION_EVERY. Stable
    across runs, seeds and models, and about a quarter of every benchmark; the report picks the best merge on
    this slice and measures it on the rest, so the pick does not inflate the measured difference."""
    return zlib.crc32(str(problem_id).encode()) % VALIDATION_EVERY == 0
