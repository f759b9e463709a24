"""Which prompts each training step sees: the domain mix and a seeded, endless, resumable order.

    import data
    w = data.mix_weights("math=3,code=1", ("math", "code"))    # {"math": 0.75, "code": 0.25}
    batch = data.batch_for_step(pools, w, step=7, n=32, seed=0)  # pools: {domain: [rows]}

A step's batch is a pure function of (pools, weights, step, n, seed), so a resumed run sees the same data.
"""

import math
from functools import lru_cache

import numpy as np


def mix_weights(mix: str, domains: tuple[str, ...]) -> dict[str, float] | None:
    """None for the pooled shuffle (proportional to data), else normalised per-domain weights."""
    if mix == "proportional":
        return None
    if mix == "uniform":
        return {d: 1.0 / len(domains) for d in domains}
    weights = {}
    for part in mix.split(","):
        name, _, value = part.partition("=")
        if name not in domains:
            raise ValueError(f"--mix names {name!r}, which is not among --domains {','.join(domains)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--mix {part!r}: expected DOMAIN=NUMBER") from None
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"--mix {mix!r}: weights must be >= 0 with a positive sum")
    total = sum(weights.values())
    return {d: weights.get(d, 0.0) / total for d in domains}


def split_counts(n: int, weights: dict[str, float]) -> dict[str, int]:
    """n items split by weights with largest remainders, so counts sum to n exactly."""
    raw = {d: n * w for d, w in weights.items()}
    counts = {d: int(math.floor(r)) for d, r in raw.items()}
    for d in sorted(raw, key=lambda d: counts[d] - raw[d])[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


@lru_cache(maxsize=64)
def _permutation(n: int, seed: int, salt: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, salt, epoch]).permutation(n)


def take(rows: list[dict], start: int, k: int, seed: int, salt: int) -> list[dict]:
    """Items start..start+k of an endless stream of seeded shuffles of rows (one shuffle per epoch)."""
    out = []
    for i in range(start, start + k):
        epoch, j = divmod(i, len(rows))
        out.append(rows[_permutation(len(rows), seed, salt, epoch)[j]])
    return out


def batch_for_step(pools: dict[str, list[dict]], weights, step: int, n: int, seed: int) -> list[dict]:
    """The n prompts of one step: a pure function of the step, so a resumed run sees the same data."""
    if weights is None:  # pooled shuffle: each domain appears in proportion to its number of rows
        pooled = [r for d in pools for r in pools[d]]
        return take(pooled, step * n, n, seed, salt=0)
    batch = []
    for i, (d, k) in enumerate(split_counts(n, weights).items()):
        batch += take(pools[d], step * k, k, seed, salt=i + 1) if k else []
    order = np.random.default_rng([seed, step]).permutation(len(batch))  # mix domains across ranks
    return [batch[i] for i in order]
