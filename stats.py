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
# Statistics: bootstrap intervals over problems, paired differences, seeds
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


def estimate(scores: dict[str, np.ndarray], *, n_boot: int, seed: int) -> dict | None:
    """scores {benchmark: (seeds, problems) per-problem scores} -> {"value", "lo", "hi", "seeds", "n"}: the mean
    over benchmarks of the mean over problems of the seed-averaged scores, its 95% percentile bootstrap
    interval, each seed's own value, and the number of problems. A difference of two models is the estimate
    of their per-problem differences. None without a benchmark."""
    scores = {b: s for b, s in scores.items() if s.shape[1]}
    if not scores:
        return None
    reps = np.mean([resample_means(s.mean(0), n_boot, bench_rng(seed, b)) for b, s in scores.items()], axis=0)
    lo, hi = percentile_interval(reps)
    return {"value": float(np.mean([s.mean() for s in scores.values()])), "lo": lo, "hi": hi,
            "seeds": np.mean([s.mean(1) for s in scores.values()], axis=0).tolist(),
            "n": sum(s.shape[1] for s in scores.values())}


def significant(e: dict) -> bool:
    """The 95% interval excludes 0."""
    return e["lo"] > 0 or e["hi"] < 0


def interval_text(e: dict | None, diff: bool = False) -> str:
    """"[0.350, 0.470]" (a difference: "[+0.050, +0.190]"), then "; seeds a to b" when there are several."""
    if e is None:
        return "n/a"
    f = (lambda x: f"{x:+.3f}") if diff else (lambda x: f"{x:.3f}")  # noqa: E731
    text = f"[{f(e['lo'])}, {f(e['hi'])}]"
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
