"""report.py: its statistics against plain recomputations, finding runs, and whole reports from tiny runs and
from hand-made results of several seeds."""

import functools
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from safetensors.torch import save_file

import analyze
import model
import report
import stats
from analyze import UserError


# ------------------------------------------------------------------------------------------------ statistics

def plain_interval(x: np.ndarray, benchmark: str, seed: int = 0, n_boot: int = 1000) -> tuple[float, float]:
    """The percentile interval written out: the benchmark's resampled problem indices, one mean per resample
    in a Python loop, numpy's percentiles."""
    idx = np.random.default_rng([seed, zlib.crc32(benchmark.encode())]).integers(0, len(x), size=(n_boot, len(x)))
    means = [sum(float(x[j]) for j in row) / len(row) for row in idx]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def plain_hier_interval(scores: dict[str, np.ndarray], seed: int = 0, n_boot: int = 1000) -> tuple[float, float]:
    """The hierarchical interval written out with Python loops: replicate r draws S seeds with replacement (the
    seeds generator), then for each drawn seed that seed's problems of each benchmark with replacement (the
    benchmark's generator); its value is the mean over benchmarks of the mean over the drawn (seed, problem)
    pairs; numpy's percentiles."""
    S = next(iter(scores.values())).shape[0]
    seeds = np.random.default_rng([seed, zlib.crc32(b"seeds")]).integers(0, S, size=(n_boot, S))
    probs = {b: np.random.default_rng([seed, zlib.crc32(b.encode())]).integers(0, s.shape[1], size=(n_boot, S, s.shape[1]))
             for b, s in scores.items()}
    means = []
    for r in range(n_boot):
        per_bench = []
        for b, s in scores.items():
            vals = [float(s[seeds[r][i], j]) for i in range(S) for j in probs[b][r][i]]
            per_bench.append(sum(vals) / len(vals))
        means.append(sum(per_bench) / len(per_bench))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def test_estimate_matches_a_plain_loop():
    x = np.random.default_rng(1).random(30)
    e = report.estimate({"b": x[None]}, n_boot=1000, seed=0)
    assert e["value"] == pytest.approx(x.mean()) and e["seeds"] == [pytest.approx(x.mean())] and e["n"] == 30
    assert (e["lo"], e["hi"]) == pytest.approx(plain_interval(x, "b"), abs=1e-12)
    assert e["lo"] < x.mean() < e["hi"]


def test_estimate_hand_computed_cases():
    # every problem scores the same: no spread, the interval is the point
    e = report.estimate({"b": np.full((1, 7), 0.25)}, n_boot=200, seed=0)
    assert (e["value"], e["lo"], e["hi"]) == pytest.approx((0.25, 0.25, 0.25))
    # one problem: every resample is that problem
    e = report.estimate({"b": np.array([[0.5]])}, n_boot=50, seed=3)
    assert (e["lo"], e["hi"]) == (0.5, 0.5)
    # paired: b is a shifted by 0.1 on every problem, so the difference is exactly 0.1 whatever the resample
    # (significant), though each model's own interval is wide and the two overlap
    a = np.random.default_rng(2).random(20)
    b = a - 0.1
    diff = report.estimate({"x": (a - b)[None]}, n_boot=1000, seed=0)
    assert (diff["value"], diff["lo"], diff["hi"]) == pytest.approx((0.1, 0.1, 0.1)) and report.significant(diff)
    ea, eb = (report.estimate({"x": v[None]}, n_boot=1000, seed=0) for v in (a, b))
    assert ea["lo"] < eb["hi"] and ea["hi"] - ea["lo"] > 0.2
    # the same problems resampled for both: a's interval is b's shifted by 0.1
    assert (ea["lo"] - eb["lo"], ea["hi"] - eb["hi"]) == pytest.approx((0.1, 0.1))
    assert not report.significant({"lo": -0.01, "hi": 0.3}) and report.significant({"lo": -0.3, "hi": -0.01})


def test_estimate_over_benchmarks_resamples_each_benchmark():
    rng = np.random.default_rng(4)
    x, y = rng.random(3), rng.random(5)
    e = report.estimate({"p": x[None], "q": y[None]}, n_boot=500, seed=9)
    assert e["value"] == pytest.approx((x.mean() + y.mean()) / 2) and e["n"] == 8
    reps = []
    ix = np.random.default_rng([9, zlib.crc32(b"p")]).integers(0, 3, size=(500, 3))
    iy = np.random.default_rng([9, zlib.crc32(b"q")]).integers(0, 5, size=(500, 5))
    for rx, ry in zip(ix, iy):
        reps.append((np.mean([x[j] for j in rx]) + np.mean([y[j] for j in ry])) / 2)
    assert (e["lo"], e["hi"]) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))


def test_estimate_with_seeds_resamples_seeds_then_problems():
    s = np.array([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 0.5]])   # 2 seeds x 4 problems
    e = report.estimate({"b": s}, n_boot=1000, seed=0)
    avg = s.mean(axis=0)
    assert e["value"] == pytest.approx(avg.mean()) and e["seeds"] == pytest.approx([0.5, 0.375])
    assert (e["lo"], e["hi"]) == pytest.approx(plain_hier_interval({"b": s}))
    assert e["n_seeds"] == 2 and e["bound"] is None
    assert report.est_text(e) == f"0.438 [{e['lo']:.3f}, {e['hi']:.3f}]; seeds 0.375 to 0.500"
    assert report.est_text({"value": 0.1, "lo": 0.05, "hi": 0.15, "seeds": [0.1]}, diff=True) == \
        "+0.100 [+0.050, +0.150] sig"
    assert report.est_text({"value": 0.1, "lo": -0.05, "hi": 0.25, "seeds": [0.0, 0.2]}, diff=True) == \
        "+0.100 [-0.050, +0.250] n.s.; seeds +0.000 to +0.200"
    assert report.spread_text([0.02, 0.04]) == "0.03 (seeds 0.02 to 0.04)" and report.spread_text([None]) == "n/a"


def records(model_name: str, bench: str, domain: str, rewards: list[list[float]], first: int = 0) -> list[dict]:
    return [{"model": model_name, "benchmark": bench, "id": f"{bench}-{first + i}", "domain": domain,
             "rewards": r} for i, r in enumerate(rewards)]


def test_problem_scores_keep_the_problems_every_seed_has():
    seed0 = records("m", "b", "math", [[1, 0], [1, 1], [0, 0]])
    seed1 = records("m", "b", "math", [[1, 1], [0, 0], [0, 0], [1, 1]])   # one more problem
    ps = report.problem_scores([seed0, seed1])
    assert ps["ids"]["b"] == ["b-0", "b-1", "b-2"] and ps["n_seen"]["b"] == 4 and ps["seeds"] == 2
    assert ps["avg"]["m"]["b"].tolist() == [[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert ps["pass"]["m"]["b"].tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]   # pass@2 of 2 samples
    pooled = report.pooled_records([seed0, seed1])
    assert [r["rewards"] for r in pooled] == [[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]


def one_seed_ps(scores: dict[str, dict[str, list[float]]], domains: dict[str, list[str]],
                kinds: dict[str, list[str | None]] | None = None) -> dict:
    """problem_scores of one seed: scores {model: {benchmark: [one reward per problem p0, p1, ...]}}, each
    problem's domain, and its item kind (None: no "kind" field, as in real data)."""
    recs = []
    for name, per_bench in scores.items():
        for b, rewards in per_bench.items():
            ks = (kinds or {}).get(b, [None] * len(rewards))
            recs += [{"model": name, "benchmark": b, "id": f"p{i}", "domain": domains[b][i], "rewards": [r],
                      **({"kind": ks[i]} if ks[i] else {})} for i, r in enumerate(rewards)]
    return report.problem_scores([recs])


def test_kind_tables_per_domain_and_kind():
    # math: problems p0-p3 shared, p4-p5 specific; if: p0-p1 conflict, p2 has no kind
    kinds = {"m": ["shared"] * 4 + ["specific"] * 2, "i": ["conflict", "conflict", None]}
    scores = {"base": {"m": [0, 1, 0, 0, 0, 0], "i": [1, 0, 1]}, "e": {"m": [1, 1, 0, 1, 1, 0], "i": [0, 0, 1]}}
    ps = one_seed_ps(scores, {"m": ["math"] * 6, "i": ["if"] * 3}, kinds)
    assert ps["kinds"] == {"m": kinds["m"], "i": kinds["i"]}
    st = report.kind_stats(ps, n_boot=200, seed=0)
    assert list(st) == ["base", "e"] and list(st["e"]) == ["math", "if"]
    assert {k: e["value"] for k, e in st["e"]["math"].items()} == {"shared": 0.75, "specific": 0.5}
    assert st["base"]["math"]["shared"]["value"] == 0.25 and st["base"]["if"]["conflict"]["value"] == 0.5
    # e's conflict items are all wrong: the one-sided bound over 2 problems x 1 sample, 1 - 0.05^(1/2)
    assert st["e"]["if"]["conflict"]["bound"] == "upper"
    assert st["e"]["if"]["conflict"]["hi"] == pytest.approx(1 - 0.05 ** 0.5)
    md = report.kind_tables(ps, {"kinds": st})
    assert "| model | shared (n=4) | specific (n=2) |" in md and "| model | conflict (n=2) |" in md
    assert "| e | 0.000 [0.000, 0.776] one-sided |" in md
    # real data carries no kind: no table at all
    plain = one_seed_ps(scores, {"m": ["math"] * 6, "i": ["if"] * 3})
    assert report.kind_stats(plain, n_boot=200, seed=0) == {} and report.kind_tables(plain, {"kinds": {}}) is None


def test_transfer_matrix_and_best_merge_on_the_validation_slice():
    # 12 problems p0-p11 of one benchmark holding two domains; p4, p6, p10 are the validation slice
    dom = ["math"] * 6 + ["if"] * 6
    val = [stats.is_validation(f"p{i}") for i in range(12)]
    assert [i for i, v in enumerate(val) if v] == [4, 6, 10]
    base = [0.0] * 12
    em = [1.0] * 6 + [1.0, 0, 0, 0, 0, 0]   # the math expert: all math, one if problem
    ei = [0.0] * 6 + [1.0] * 6
    mixed = [0.5] * 12
    good_val = [1.0 if v else 0.0 for v in val]   # merge a: right on validation only
    good_test = [0.0 if v else 1.0 for v in val]  # merge b: right on test only (better on the whole eval set)
    ps = one_seed_ps({"base": {"x": base}, "em": {"x": em}, "ei": {"x": ei}, "mixed": {"x": mixed},
                      "a": {"x": good_val}, "b": {"x": good_test}}, {"x": dom})
    who = {"base": "base", "experts": {"math": "em", "if": "ei"}, "mixed": "mixed",
           "combined": {"a": "merge", "b": "merge"}}
    tr = report.transfer_stats(ps, who, n_boot=200, seed=0)
    assert {d: {c: e["value"] for c, e in row.items()} for d, row in tr.items()} == \
        {"math": {"math": 1.0, "if": pytest.approx(1 / 6)}, "if": {"math": 0.0, "if": 1.0}}
    bm = report.best_merge_stats(ps, who, n_boot=200, seed=0)
    assert bm["model"] == "a" and bm["validation"] == {"a": 1.0, "b": 0.0}
    assert bm["n_validation"] == {"x": 3} and bm["n_test"] == {"x": 9}
    assert bm["mixed_minus_best"]["mean"]["value"] == 0.5   # mixed 0.5 minus a's 0 on every test problem
    assert bm["mixed_minus_best"]["mean"]["lo"] == 0.5 and report.significant(bm["mixed_minus_best"]["mean"])
    text = report.best_merge_text({"best_merge": bm}, who)
    assert "picked on a validation slice" in text and "validation (3 problems) and test (9)" in text
    assert "mixed minus a on the test slice: **+0.500 [+0.500, +0.500] sig**" in text
    # no validation problem in a benchmark: no pick
    ps_small = one_seed_ps({"mixed": {"x": [0.5] * 3}, "a": {"x": [1.0] * 3}}, {"x": ["math"] * 3})
    assert report.best_merge_stats(ps_small, {**who, "combined": {"a": "merge"}}, n_boot=50, seed=0) is None


def test_interval_note_says_what_is_resampled():
    ps = one_seed_ps({"m": {"x": [0.0, 1.0, 1.0]}}, {"x": ["math"] * 3})
    st = report.accuracy_stats(ps, {"base": None, "experts": {}, "mixed": None, "combined": {}}, n_boot=100, seed=0)
    md = report.main_table(ps, st)
    assert "One seed: the 95% intervals resample problems only" in md and "eval noise" in md
    assert "hierarchical" in report.interval_note(3) and "seeds resampled with replacement" in report.interval_note(3)


# ------------------------------------------------------------------------------------------------ finding runs

def fake_run(root: Path, name: str, config: dict, wall_s: float, model_files: bool = True) -> str:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"config": config, "wall_s": wall_s, "world_size": 1, "device": "cpu",
                                            "device_hours": wall_s / 3600}))
    if model_files:   # what find_checkpoint looks for; no weights are read here
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    return str(d)


def fake_experiment(root: Path, wall: float = 100.0) -> dict:
    """experiment.py's runs folder: base (0 steps), two experts, mixed, MT-OPD, and a TIES merge whose folder also
    holds a run.json (merge.py copies one from a base run folder)."""
    p = {"base": fake_run(root, "base", {"domains": ["math", "if"], "steps": 0}, 1.0),
         "math": fake_run(root, "math", {"domains": ["math"]}, wall),
         "if": fake_run(root, "if", {"domains": ["if"]}, wall),
         "mixed": fake_run(root, "mixed", {"domains": ["math", "if"]}, 1.5 * wall),
         "opd": fake_run(root, "opd", {"domains": ["math", "if"], "teachers": "math=a,if=b"}, 1.2 * wall),
         "ties": fake_run(root, "ties", {"domains": ["math", "if"]}, 999.0)}
    (root / "ties" / "merge_report.json").write_text(json.dumps(
        {"method": "ties", "wall_s": 36.0, "summary": {"kept": [0.2, 0.4], "sign_conflict": 0.1, "update_norm": 2.5}}))
    return p


def test_discover_kinds_base_and_cost(tmp_path):
    p = fake_experiment(tmp_path)
    found = report.discover(tmp_path)
    assert {n: t["kind"] for n, t in found["train"].items()} == {"base": "base", "if": "expert", "math": "expert",
                                                                 "mixed": "mixed", "opd": "opd"}
    assert list(found["merged"]) == ["ties"]
    models = report.models_from_runs(found, analyze.ReportConfig(runs=[str(tmp_path)]))
    assert models["base"] == p["base"] and models["experts"] == {"math": p["math"], "if": p["if"]}
    assert models["distilled"] == {"opd": p["opd"]} and models["multitask"] == {"multitask": p["mixed"]}
    md, cost = report.cost_table([found])
    assert cost["experts_total"] == pytest.approx(200 / 3600)
    assert cost["approaches"]["experts + merge ties"] == pytest.approx(236 / 3600)
    assert cost["approaches"]["experts + MT-OPD run opd"] == pytest.approx(320 / 3600)
    assert "| mixed run mixed | 0.0417 | 1 |" in md and "| experts + MT-OPD run opd | 0.0889 | 0.469 |" in md
    assert "base" not in cost["hours"]["mixed"]   # the 0-step base run is no way to a multi-domain model
    assert cost["tokens"]["expert"] == {"if": None, "math": None} and "| n/a |" in md   # no metrics.jsonl


def test_cost_table_counts_completion_tokens(tmp_path):
    fake_experiment(tmp_path)
    for name, per_step in (("math", [100, 120]), ("if", [50, 50]), ("mixed", [300, 200, 100]), ("opd", [10, 20])):
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "completion_tokens": n}) + "\n" for i, n in enumerate(per_step)))
    md, cost = report.cost_table([report.discover(tmp_path)])
    assert cost["tokens"] == {"expert": {"if": 100.0, "math": 220.0}, "mixed": {"mixed": 600.0},
                              "opd": {"opd": 30.0}, "merge": {"ties": 0.0}}
    assert cost["approach_tokens"] == {"mixed run mixed": 600.0, "experts alone (before combining)": 320.0,
                                       "experts + merge ties": 320.0, "experts + MT-OPD run opd": 350.0}
    assert "| mixed run | mixed |  | cpu | 1 | 150 | 0.0417 | 600 |" in md
    assert "| experts + merge ties | 0.0656 | 0.636 | 320 |" in md


def test_report_samples_like_the_runs(tmp_path, monkeypatch):
    """With --compute, eval and kl use the runs' completion budget, and weights takes the trained models only
    (not the merges)."""
    cfg = {"max_new_tokens": 7}
    fake_run(tmp_path, "math", {"domains": ["math"], **cfg}, 10.0)
    fake_run(tmp_path, "code", {"domains": ["code"], **cfg}, 10.0)
    fake_run(tmp_path, "mixed", {"domains": ["math", "code"], **cfg}, 10.0)
    fake_run(tmp_path, "ties", {}, 1.0)
    (tmp_path / "ties" / "merge_report.json").write_text(json.dumps({"method": "ties"}))
    seen = {}
    for fn in ("run_eval", "run_weights", "run_kl", "run_consistency"):
        monkeypatch.setattr(analyze, fn, lambda c, fn=fn: seen.setdefault(fn, c))
    report.run_report(analyze.ReportConfig(runs=[str(tmp_path)], out=str(tmp_path / "a"), base="b", device="cpu"))
    assert seen["run_eval"].max_new_tokens == 7 and seen["run_kl"].max_new_tokens == 7
    assert [m.split("=")[0] for m in seen["run_weights"].models] == ["math", "code", "multitask"]
    assert [m.split("=")[0] for m in seen["run_eval"].models] == ["base", "math", "code", "multitask", "ties"]
    assert seen["run_eval"].out == str(tmp_path / "a")   # one runs folder: the analyses live in --out


def test_report_refuses_missing_or_empty_runs_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    for runs, message in ((["none"], "--runs none: no such folder"),
                          ([str(tmp_path / "empty")], "no training run (a subfolder with run.json) or merge"),
                          ([], "give at least one folder")):
        with pytest.raises(UserError, match=re.escape(message)):
            report.run_report(analyze.ReportConfig(runs=runs, device="cpu"))
    fake_experiment(tmp_path / "runs")
    with pytest.raises(UserError, match="one runs folder's models"):
        report.run_report(analyze.ReportConfig(runs=[str(tmp_path / "runs")] * 2, experts=["math=x"]))
    with pytest.raises(UserError, match="2 folders for 1 --runs folders"):
        report.run_report(analyze.ReportConfig(runs=[str(tmp_path / "runs")], analyses=["a", "b"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "runs"]
    assert not (tmp_path / "runs" / "analysis").exists()


def test_report_goes_under_the_runs_folder(tmp_path):
    fake_experiment(tmp_path / "runs")
    text = report.run_report(analyze.ReportConfig(runs=[str(tmp_path / "runs")], compute=False))
    assert (tmp_path / "runs" / "analysis" / "report.md").read_text() == text
    assert "## 1. Runs" in text and text.count("**Not available:**") == 6   # no analyses were run
    # no base anywhere (no base run, no config["model"]) and an eval.json without one: still a report
    fake_run(tmp_path / "other", "math", {"domains": ["math"]}, 10.0)
    analyze.write_json(tmp_path / "other" / "analysis" / "eval.json", {"models": {"math": "x"}, "table": {}})
    text = report.run_report(analyze.ReportConfig(runs=[str(tmp_path / "other")], compute=False))
    assert f"Models used, named as in eval.json: math = `{tmp_path / 'other' / 'math'}`" in text


# ------------------------------------------------------------------------------------------------ whole reports

def perturbed(seed: int, frac: float = 0.1):
    """The tiny base (seed 0) with 10% of its entries moved: a stand-in for an RL-trained checkpoint."""
    net = model.load_model("tiny-init", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_((torch.rand(p.shape, generator=g) < frac) * 0.05 * torch.randn(p.shape, generator=g))
    return net


def write_run(root: Path, name: str, domains: list[str], wall_s: float, net) -> str:
    d = root / name
    model.save_pretrained(net, model.load_tokenizer("tiny"), str(d))
    (d / "run.json").write_text(json.dumps({"config": {"domains": domains, "model": "tiny-init"}, "wall_s": wall_s,
                                            "world_size": 1, "device": "cpu", "device_hours": wall_s / 3600}))
    lines = []
    for step in range(6):
        row = {"step": step, "time": 10.0 * step, "reward": 0.1 * step, "kl": 0.01 * step, "entropy": 2 - 0.1 * step,
               "grad_norm": 1.0, "truncated": 0.5, "zero_var_frac": 0.3, "tokens_per_s": 100.0}
        for i, dom in enumerate(domains):
            row |= {f"reward/{dom}": 0.1 * step + 0.05 * i, f"acc/{dom}": 0.08 * step, f"len/{dom}": 50 + step}
        lines.append(json.dumps(row) + "\n")
    (d / "metrics.jsonl").write_text("".join(lines))
    return str(d)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Tiny experts for math and if (short prompts), their mixed run, and their average as a merge."""
    root = tmp_path_factory.mktemp("runs")
    experts = {"math": perturbed(1), "if": perturbed(2)}
    paths = {dom: write_run(root, dom, [dom], 100.0, net) for dom, net in experts.items()}
    paths["multitask"] = write_run(root, "math-if", ["math", "if"], 150.0, perturbed(3))
    merged = model.load_model("tiny-init", seed=0)
    sds = [net.state_dict() for net in experts.values()]
    merged.load_state_dict({k: (sds[0][k] + sds[1][k]) / 2 for k in sds[0]})
    model.save_pretrained(merged, model.load_tokenizer("tiny"), str(root / "ties"))
    (root / "ties" / "merge_report.json").write_text(json.dumps({"method": "ties", "wall_s": 36.0}))
    paths["ties"] = str(root / "ties")
    return root, paths


def test_report_computes_and_writes_every_section(runs_dir, tmp_path, monkeypatch):
    root, paths = runs_dir
    out = tmp_path / "analysis"
    # the report computes every analysis itself from the runs; eval and kl get smaller defaults to stay fast
    monkeypatch.setattr(analyze, "EvalConfig", functools.partial(
        analyze.EvalConfig, domains=["math", "if"], n_problems=3, k=2, max_new_tokens=8, workers=2))
    monkeypatch.setattr(analyze, "KLConfig", functools.partial(analyze.KLConfig, n_problems=2, max_new_tokens=6))
    text = report.run_report(analyze.ReportConfig(runs=[str(root)], out=str(out), device="cpu", n_boot=200))
    assert "Not available" not in text
    for section in ("## 1. Runs", "## 2. Training curves", "## 3. Main table", "### Each model vs the base",
                    "### Each expert on its own domain", "## 4. Combining the experts", "## 5. Cost",
                    "## 6. Weight updates", "## 7. Cross-domain KL", "## 8. Consistency of gains"):
        assert section in text
    for png in ("train_curves", "train_stats", "eval_bars", "weights_sparsity", "weights_layers",
                "weights_overlap", "weights_cosine", "kl_heatmap", "kl_cross", "consistency_bars"):
        assert f"]({png}.png)" in text
        assert (out / f"{png}.png").stat().st_size > 10_000 and (out / f"{png}.json").exists()
    # models found from the runs: experts by their single domain, the two-domain run, the merge folder;
    # the weight analysis takes the trained models only
    weights = json.loads((out / "weights.json").read_text())
    assert weights["models"] == {"math": paths["math"], "if": paths["if"], "multitask": paths["multitask"]}
    evaluation = json.loads((out / "eval.json").read_text())
    assert list(evaluation["models"]) == ["base", "math", "if", "multitask", "ties"]
    assert 0.85 < weights["sparsity"]["math"]["exact"]["all"] < 0.95   # 10% of entries were moved
    kl = json.loads((out / "kl.json").read_text())
    assert kl["domains"] == ["math", "if"] and kl["perf_change"] is not None
    assert all(v is not None for a in kl["kl_fwd"] for b in a for v in b)   # every (A, B) cell of every model
    cons = json.loads((out / "consistency.json").read_text())
    assert cons["base"] == "base" and cons["experts"] == ["math", "if"] and cons["models"] == ["multitask", "ties"]
    # every cell of the main table carries its interval, every difference its interval and verdict
    stats = json.loads((out / "stats.json").read_text())
    main = text[text.index("## 3. Main table"):text.index("### Each model vs the base")]
    row = next(line for line in main.splitlines() if line.startswith("| ties | "))
    cells = re.findall(r"\| (\d\.\d{3}) \| (\[\d\.\d{3}, \d\.\d{3}\]) ", row)   # value, then its interval
    e = stats["cells"]["avg"]["ties"]["embedded/math"]
    assert len(cells) == 3 and cells[0] == (f"{e['value']:.3f}", f"[{e['lo']:.3f}, {e['hi']:.3f}]")
    assert re.search(r"\| ties \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] (sig|n\.s\.) \|", text)
    # cost: experts 100 s + 100 s + merge 36 s against the mixed run's 150 s
    cost = json.loads((out / "cost.json").read_text())
    assert cost["approaches"]["experts + merge ties"] == pytest.approx(236 / 3600)
    assert "| experts + merge ties | 0.0656 | 0.636 |" in text   # 236 s in hours; 150 / 236


SEED_REWARDS = {   # seed -> model -> (embedded/math problems, embedded/if problems), 2 samples each
    0: {"base": ([[0, 0], [0, 0], [1, 0], [0, 0]], [[0, 0], [0, 0], [0, 0], [1, 0]]),
        "math": ([[1, 1], [1, 1], [1, 1], [1, 1]], [[0, 0], [0, 0], [0, 0], [1, 0]]),
        "if": ([[0, 0], [0, 0], [1, 0], [0, 0]], [[1, 1], [1, 0], [1, 1], [1, 1]]),
        "mixed": ([[1, 0], [1, 1], [1, 0], [0, 0]], [[1, 0], [1, 0], [0, 0], [1, 1]]),
        "ties": ([[1, 1], [1, 0], [1, 1], [1, 0]], [[1, 0], [0, 0], [1, 0], [1, 1]]),
        "opd": ([[1, 1], [1, 1], [1, 0], [0, 0]], [[1, 1], [1, 0], [0, 0], [1, 1]])},
    1: {"base": ([[0, 0], [1, 0], [0, 0], [0, 0], [1, 1]], [[0, 0], [0, 0], [0, 0], [0, 0]]),
        "math": ([[1, 1], [1, 1], [1, 1], [1, 1], [1, 1]], [[0, 0], [0, 0], [1, 0], [0, 0]]),
        "if": ([[0, 0], [1, 0], [0, 0], [0, 0], [1, 1]], [[1, 1], [1, 1], [1, 0], [1, 1]]),
        "mixed": ([[1, 1], [1, 0], [0, 0], [1, 0], [1, 1]], [[1, 1], [0, 0], [1, 0], [1, 0]]),
        "ties": ([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], [[1, 1], [1, 0], [0, 0], [1, 0]]),
        "opd": ([[1, 0], [1, 1], [1, 1], [0, 0], [1, 1]], [[1, 1], [1, 1], [0, 0], [1, 0]])},
}   # seed 1 has a fifth math problem, which seed 0 lacks: the report leaves it out


def seed_folder(root: Path, seed: int) -> tuple[Path, Path]:
    """One seed of the experiment: runs/ as experiment.py lays them out, report/ with eval and consistency
    results written by hand."""
    runs, analyses = root / f"seed_{seed}" / "runs", root / f"seed_{seed}" / "report"
    paths = fake_experiment(runs, wall=100.0 + 20 * seed)
    for name, domains in (("math", ["math"]), ("if", ["if"]), ("mixed", ["math", "if"])):
        lines = [{"step": step, **{f"reward/{d}": 0.1 * step + seed for d in domains}} for step in range(4)]
        (runs / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    recs = []
    for name, (math_r, if_r) in SEED_REWARDS[seed].items():
        recs += records(name, "embedded/math", "math", math_r) + records(name, "embedded/if", "if", if_r)
    analyses.mkdir(parents=True)
    (analyses / "eval_per_problem.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    analyze.write_json(analyses / "eval.json", {"models": {n: paths[n] for n in SEED_REWARDS[seed]}})
    analyze.write_json(analyses / "consistency.json",
                       analyze.consistency(recs, "base", ["math", "if"], ["mixed", "ties", "opd"], n_boot=50))
    # weights: the math expert changes 1 + seed of 16 weights, the if expert 2, the mixed model 3
    up = "model.layers.0.mlp.up_proj.weight"
    base = torch.ones(4, 4)
    folders = {}
    for name, changed in (("base", 0), ("math", 1 + seed), ("if", 2), ("mixed", 3)):
        w = base.clone()
        w.view(-1)[:changed] += 1.0
        folders[name] = root / f"seed_{seed}" / "weights" / name
        folders[name].mkdir(parents=True)
        save_file({up: w}, str(folders[name] / "model.safetensors"))
    weights = analyze.compare_weights(str(folders.pop("base")), {n: str(f) for n, f in folders.items()},
                                      proj_seeds=(), progress=False)
    analyze.write_json(analyses / "weights.json", weights)
    # kl: KL(expert B || model) = (seed + 1) (1 + A + 2B + model) / 100 on domain A, 0 for the expert itself
    names = ["math", "if", "mixed", "ties", "opd"]
    fwd = [[[0.0 if m == b else (seed + 1) * (1 + a + 2 * b + m) / 100 for m in range(5)] for b in range(2)]
           for a in range(2)]
    analyze.write_json(analyses / "kl.json", {"domains": ["math", "if"], "models": names, "cross": True,
                                              "paths": {n: paths[n] for n in names},
                                              "kl_fwd": fwd, "kl_rev": fwd, "n_tokens": [[10, 10], [10, 10]],
                                              "perf_change": [[0.0, -0.5, -0.5, -0.2, -0.4],
                                                              [-0.7, 0.0, -0.4, -0.4, -0.3]]})
    return runs, analyses


def test_report_of_several_seeds(tmp_path):
    folders = [seed_folder(tmp_path, s) for s in (0, 1)]
    cfg = analyze.ReportConfig(runs=[str(r) for r, _ in folders], analyses=[str(a) for _, a in folders],
                               compute=False)
    text = report.run_report(cfg)
    out = tmp_path / "analysis"   # the folder holding both seeds' folders
    assert (out / "report.md").read_text() == text and (out / "stats.json").exists()

    def per_problem(name, bench):   # (seeds, 4 problems) mean rewards, computed here from the table above
        return np.array([[np.mean(r) for r in SEED_REWARDS[s][name][0 if bench == "embedded/math" else 1][:4]]
                         for s in (0, 1)])

    def expected(s: np.ndarray, bench: str, diff: bool = False) -> str:
        """A main-table value and its interval column, or a difference's cell, from the rewards above."""
        avg, seeds = s.mean(axis=0), s.mean(axis=1)
        lo, hi = plain_hier_interval({bench: s})
        f = (lambda x: f"{x:+.3f}") if diff else (lambda x: f"{x:.3f}")
        spread = f"seeds {f(seeds.min())} to {f(seeds.max())}"
        if not diff:
            return f"{f(avg.mean())} | [{f(lo)}, {f(hi)}]; {spread}"
        return f"{f(avg.mean())} [{f(lo)}, {f(hi)}] {'sig' if lo > 0 or hi < 0 else 'n.s.'}; {spread}"

    mixed = next(line for line in text.splitlines() if line.startswith("| mixed | "))   # the main table's row
    assert f"| {expected(per_problem('mixed', 'embedded/math'), 'embedded/math')} |" in mixed
    assert f"| {expected(per_problem('mixed', 'embedded/if'), 'embedded/if')} |" in mixed
    assert ("| model | embedded/math (n=4) | 95% interval | embedded/if (n=4) | 95% interval | mean | 95% interval |"
            in text)
    assert "Left out, because not every model and seed has them: 1 problem of embedded/math." in text
    # differences: each model vs the base, the math expert's gain on math, the merge vs the mixed model
    vs_base = expected(per_problem("ties", "embedded/if") - per_problem("base", "embedded/if"), "embedded/if", True)
    assert vs_base in text
    gain = expected(per_problem("math", "embedded/math") - per_problem("base", "embedded/math"), "embedded/math", True)
    assert f"| math (math) | embedded/math | 4 | {gain} |" in text
    vs_mixed = expected(per_problem("ties", "embedded/math") - per_problem("mixed", "embedded/math"),
                        "embedded/math", True)
    assert vs_mixed in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["roles"] == {"base": "base", "experts": {"math": "math", "if": "if"}, "mixed": "mixed",
                              "combined": {"ties": "merge", "opd": "MT-OPD"}}
    assert stats["vs_mixed"]["ties"]["embedded/math"]["value"] == pytest.approx(
        (per_problem("ties", "embedded/math") - per_problem("mixed", "embedded/math")).mean())
    # cost over seeds: each expert 100 s and 120 s
    assert "| expert run | math |  | cpu | 1 | 110 (seeds 100 to 120) | 0.0306 (seeds 0.0278 to 0.0333) |" in text
    # consistency on both seeds' samples pooled: the cosine of the seed-averaged gains
    cons = json.loads((out / "consistency_seeds.json").read_text())
    pooled = {n: np.concatenate([per_problem(n, "embedded/math").mean(0), per_problem(n, "embedded/if").mean(0)])
              for n in ("base", "math", "if", "ties")}
    gain = {n: np.maximum(pooled[n] - pooled["base"], 0) for n in ("math", "if", "ties")}
    union = np.maximum(gain["math"], gain["if"])
    cos = gain["ties"] @ union / (np.linalg.norm(gain["ties"]) * np.linalg.norm(union))
    assert cons["cos"]["ties"]["all"]["cos"] == pytest.approx(cos)
    seeds = cons["cos"]["ties"]["all"]["seeds"]
    assert len(seeds) == 2 and f"; seeds {min(seeds):.3f} to {max(seeds):.3f} |" in text
    # the runs table names each runs folder; the training curves draw each seed
    assert f"| {folders[1][0]} | mixed | mixed | math,if | 3 |" in text
    curves = json.loads((out / "train_curves.json").read_text())
    assert curves["reward/math"]["mixed (runs folder 1)"] == [[0, 1.0], [1, 1.1], [2, 1.2], [3, 1.3]]
    assert sorted(curves["reward/if"]) == ["if (runs folder 0)", "if (runs folder 1)", "mixed (runs folder 0)",
                                           "mixed (runs folder 1)"]
    # weights and KL: the first seed in full, then every seed's headline numbers
    assert "| math | 0.906 (seeds 0.875 to 0.938) |" in text   # 15/16 and 14/16 of the weights unchanged
    assert "| mixed | 0.812 (seeds 0.812 to 0.812) |" in text
    # KL(if expert || mixed) on math: (1 + 0 + 2 + 2) / 100 x seed + 1
    assert "| expert if | 0.075 (seeds 0.05 to 0.1) | 0.09 (seeds 0.06 to 0.12) |" in text
    # ΔPerf of Figure 4 (the mixed model): mixed minus each domain's expert, paired intervals over both seeds
    delta = [expected(per_problem("mixed", b) - per_problem(d, b), b, True)
             for d, b in (("math", "embedded/math"), ("if", "embedded/if"))]
    assert f"| ΔPerf | {delta[0]} | {delta[1]} |" in text
    assert "Not available" not in text
    # two seeds: the text says the intervals resample seeds; a cell at 1 (the math expert on math: 2 seeds x 4
    # problems x 2 samples, all right) shows the one-sided bound 0.05^(1/16)
    assert "2 seeds: the 95% intervals are a hierarchical percentile bootstrap" in text
    assert f"| math | 1.000 | [{0.05 ** (1 / 16):.3f}, 1.000] one-sided; seeds 1.000 to 1.000 |" in text
    # the transfer matrix: its diagonal is each expert's own gain; off it, the math expert on if
    tr = [expected(per_problem("math", b) - per_problem("base", b), b, True) for b in ("embedded/math", "embedded/if")]
    assert f"| math (math) | {tr[0]} | {tr[1]} |" in text
    assert json.loads((out / "transfer_matrix.json").read_text())["experts"] == ["math", "if"]
    # the best merge (the only one, ties) picked on validation (problems 1 and 3 of each benchmark: crc32 of
    # "embedded/math-1" and "-3" is divisible by 4), mixed - ties measured on problems 0 and 2
    test_part = {b: (per_problem("mixed", b) - per_problem("ties", b))[:, [0, 2]]
                 for b in ("embedded/math", "embedded/if")}
    bm = f"mixed minus ties on the test slice: **{report.est_text(report.estimate(test_part, n_boot=1000, seed=0), True)}**"
    assert bm in text and "validation (4 problems) and test (4)" in text
    # report.json: every table's numbers, the same as the text's and stats.json's
    rj = json.loads((out / "report.json").read_text())
    assert rj["n_seeds"] == 2 and rj["main"] == stats["cells"] and rj["vs_mixed"] == stats["vs_mixed"]
    assert rj["main"]["avg"]["math"]["embedded/math"]["bound"] == "lower"
    assert rj["transfer"]["math"]["math"] == rj["expert_gain"]["math on embedded/math"]
    assert rj["transfer"]["math"]["if"]["value"] == pytest.approx(
        (per_problem("math", "embedded/if") - per_problem("base", "embedded/if")).mean())
    assert rj["best_merge"]["model"] == "ties" and rj["best_merge"]["mixed_minus_best"]["mean"]["value"] == \
        pytest.approx(np.mean([t.mean() for t in test_part.values()]))
    assert rj["kinds"] == {}   # these rows carry no item kind
    assert rj["cost"] == json.loads((out / "cost.json").read_text())
    assert [w["sparsity"]["math"]["rel"]["all"] for w in rj["weights"]] == [15 / 16, 14 / 16]
    assert rj["kl"][1]["kl_fwd"][0][1][2] == pytest.approx(2 * (1 + 0 + 2 + 2) / 100)
    assert rj["kl_delta_perf"][0][2]["value"] == pytest.approx(
        (per_problem("mixed", "embedded/math") - per_problem("math", "embedded/math")).mean())
    assert rj["consistency"]["cos"]["ties"]["all"]["cos"] == pytest.approx(cos)
