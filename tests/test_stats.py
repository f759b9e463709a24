"""stats.py: the hierarchical bootstrap against an exact enumeration and hand-computed cases, its pairing,
the one-sided bounds at 0 and 1, and the validation split."""

import itertools
import zlib
from collections import Counter

import numpy as np
import pytest

import stats


def exact_replicates(x: np.ndarray) -> list[float]:
    """Every equally likely outcome of one hierarchical resample of x (seeds, problems), enumerated: S seeds
    drawn with replacement, then for each drawn seed n of its problems drawn with replacement."""
    S, n = x.shape
    out = []
    for seeds in itertools.product(range(S), repeat=S):
        for probs in itertools.product(itertools.product(range(n), repeat=n), repeat=S):
            out.append(sum(x[s, j] for s, js in zip(seeds, probs) for j in js) / (S * n))
    return out


def test_hierarchical_bootstrap_matches_the_exact_enumeration():
    x = np.array([[0.0, 1.0], [0.5, 1.0]])   # 2 seeds x 2 problems
    exact = exact_replicates(x)
    assert len(exact) == 4 * 4 * 4   # 4 seed draws, then 4 problem draws for each of the 2 drawn seeds
    # by hand: E = mean(x) = 0.625; Var = (Var of the seed means + mean within-seed variance / n) / S
    #        = (0.015625 + (0.25 + 0.0625) / 2 / 2) / 2 = 0.046875
    assert np.mean(exact) == pytest.approx(0.625) and np.var(exact) == pytest.approx(0.046875)
    n_boot = 200_000
    reps = stats.hierarchical_means(x, stats.seed_rng(0).integers(0, 2, size=(n_boot, 2)), stats.bench_rng(0, "b"))
    assert reps.mean() == pytest.approx(0.625, abs=0.003) and reps.var() == pytest.approx(0.046875, rel=0.02)
    want, got = Counter(exact), Counter(np.round(reps, 9).tolist())
    assert set(got) == set(want)   # 0, 0.25, 0.375, ..., 1: exactly the values the enumeration reaches
    for v, count in want.items():
        assert got[v] / n_boot == pytest.approx(count / 64, abs=0.005), v


def test_seeds_are_resampled():
    # seed 0 scores 0 on every problem, seed 1 scores 1: a replicate draws both seeds alike (0 or 1, 1/4 each)
    # or one of each (0.5, 1/2), so the interval is [0, 1]; resampling problems alone would give [0.5, 0.5]
    x = np.array([[0.0] * 10, [1.0] * 10])
    e = stats.estimate({"b": x}, n_boot=2000, seed=0)
    assert (e["value"], e["lo"], e["hi"]) == (0.5, 0.0, 1.0) and e["seeds"] == [0.0, 1.0] and e["n_seeds"] == 2
    assert not stats.significant(e)
    # one seed: only problems are resampled (the same numbers as a plain bootstrap of that seed's problems)
    y = np.random.default_rng(5).random(12)
    e1 = stats.estimate({"b": y[None]}, n_boot=500, seed=3)
    idx = np.random.default_rng([3, zlib.crc32(b"b")]).integers(0, 12, size=(500, 12))
    lo, hi = np.percentile([np.mean([y[j] for j in row]) for row in idx], [2.5, 97.5])
    assert (e1["lo"], e1["hi"]) == pytest.approx((lo, hi)) and e1["n_seeds"] == 1


def test_differences_are_paired_within_seed():
    rng = np.random.default_rng(7)
    a = rng.random((3, 8))
    b = a - 0.1   # the same shift on every (seed, problem)
    diff = stats.estimate({"x": a - b}, n_boot=1000, seed=0)
    assert (diff["lo"], diff["hi"]) == pytest.approx((0.1, 0.1)) and stats.significant(diff)
    # the same generators give the same seeds and problems to both models: replicate by replicate, a - b = 0.1
    draw = lambda v: stats.hierarchical_means(v, stats.seed_rng(0).integers(0, 3, size=(1000, 3)),  # noqa: E731
                                              stats.bench_rng(0, "x"))
    assert draw(a) - draw(b) == pytest.approx(np.full(1000, 0.1))
    ea, eb = (stats.estimate({"x": v}, n_boot=1000, seed=0) for v in (a, b))
    assert (ea["lo"] - eb["lo"], ea["hi"] - eb["hi"]) == pytest.approx((0.1, 0.1))


def test_one_sided_bounds_at_zero_and_one():
    # by hand: (1 - p)^40 = 0.05 -> p = 1 - 0.05^(1/40) = 0.0721575 (the rule of three says about 3/40 = 0.075)
    assert stats.one_sided_bound(40) == pytest.approx(0.0721575, abs=1e-7)
    assert (1 - stats.one_sided_bound(40)) ** 40 == pytest.approx(0.05)
    zeros = np.zeros((1, 10))   # 1 seed x 10 problems, 4 samples each: 40 graded samples, all wrong
    e = stats.estimate({"b": zeros}, n_boot=100, seed=0, samples={"b": 4})
    assert (e["lo"], e["hi"], e["bound"]) == (0.0, pytest.approx(0.0721575, abs=1e-7), "upper")
    assert stats.est_text(e) == "0.000 [0.000, 0.072] one-sided"
    # two seeds and two benchmarks all right: 2 x (10 x 4 + 5 x 2) = 100 samples
    e = stats.estimate({"b": np.ones((2, 10)), "c": np.ones((2, 5))}, n_boot=100, seed=0, samples={"b": 4, "c": 2})
    assert (e["lo"], e["hi"], e["bound"]) == (pytest.approx(0.05 ** (1 / 100)), 1.0, "lower")
    assert stats.est_text(e) == f"1.000 [{0.05 ** (1 / 100):.3f}, 1.000] one-sided; seeds 1.000 to 1.000"
    # not all 0 or all 1, or no sample counts (a difference): the bootstrap interval
    assert stats.estimate({"b": np.array([[0.0, 1.0]])}, n_boot=100, seed=0, samples={"b": 4})["bound"] is None
    assert stats.estimate({"b": zeros}, n_boot=100, seed=0)["hi"] == 0.0


def test_validation_slice_is_a_stable_quarter():
    # crc32 of "p0", "p1", ... mod 4, computed once by hand with zlib: p4, p6 and p10 are validation problems
    assert [i for i in range(12) if stats.is_validation(f"p{i}")] == [4, 6, 10]
    assert stats.is_validation(4) == stats.is_validation("4")   # ids are hashed as text
    share = np.mean([stats.is_validation(f"math-{i}") for i in range(4000)])
    assert 0.22 < share < 0.28
