"""report.md and report.json from folders of training runs and the analyses of analyze.py: the runs, training
curves, the main table with 95% bootstrap intervals, accuracy per domain and item kind, the differences that
matter with paired intervals (each model vs the base, the expert x domain transfer matrix, each merge and
MT-OPD vs the mixed model, mixed - best merge), the cost, and the weight, KL and consistency sections. Run through analyze.py (its ReportConfig holds the flags):

    python analyze.py report --runs out                       # one experiment: out/analysis/report.md
    python analyze.py report --runs out/exp/seed_0/runs out/exp/seed_1/runs \
        --analyses out/exp/seed_0/report out/exp/seed_1/report --out out/exp/report   # one per seed, pooled

How the report finds things (it never trains or merges):
- training runs: every <runs>/<run>/ holding run.json (metrics.jsonl beside it); one domain in
  config["domains"] makes an expert of that domain, several make the multi-task run, config["teachers"]
  makes an MT-OPD run (a distilled model), and config["steps"] == 0 the base (experiment.py's base stage).
- merged models: every <runs>/<name>/ holding merge_report.json (also when merge.py copied a run.json there
  from the base folder); the cost table reads its "wall_s".
- checkpoints: the run folder itself when it holds config.json + *.safetensors, else its newest such subfolder.
- base model: --base, else the base run's step-0 checkpoint, else a run's checkpoints/step_000000 when kept,
  else config["model"] of the runs.
- analyses: eval.json, eval_per_problem.jsonl, weights.json, kl.json, consistency.json in each runs folder's
  --analyses folder. With --compute (default) a missing one is computed from the models found, with that
  subcommand's default settings (weights: the trained models only, not the merges; eval and kl: the runs'
  completion budget); run the subcommand yourself first to choose other settings. A section whose inputs
  are missing says so in report.md.

Several seeds: each --runs folder holds one seed's runs, named alike, and its own analyses. Models are
matched across seeds by their names in eval.json, problems by (benchmark, id): only the problems every seed
evaluated are used (`analyze.py eval` draws the same problems for every training seed: --problem-seed).
Training curves show every seed in its run's colour; the weight and KL sections show the first seed in full
and every seed's headline numbers; consistency pools the samples of all seeds.

Statistics (every table's numbers are in report.json; the accuracy estimates also in stats.json; the code is
stats.py's estimate):
- score of a model on a problem: the mean reward of its k samples (avg@k) or the unbiased pass@k, per seed.
  A table cell is the mean score over a benchmark's problems and the seeds.
- 95% interval: percentile bootstrap, hierarchical. Each of --n-boot resamples draws the seeds with
  replacement (one generator, seeded by (--seed, crc32 of "seeds"), shared by every benchmark and model), then
  for each drawn seed that seed's problems of a benchmark with replacement (each benchmark its own generator,
  seeded by (--seed, crc32 of its name)); the interval runs from the 2.5th to the 97.5th percentile of the
  resampled means (numpy's linear interpolation). With one seed only problems are resampled: eval noise on
  one checkpoint per method, which the report says.
- a cell at exactly 0 or 1 (every graded sample wrong, or right): the one-sided 95% Clopper-Pearson bound over
  N = seeds x problems x k graded samples (k the fewest samples a problem has; pass@k: seeds x problems),
  [0, 1 - 0.05^(1/N)] or [0.05^(1/N), 1], marked one-sided.
- mean over benchmarks: the mean of the benchmark means; its resamples are the means of every benchmark's
  resampled means (the same seeds drawn for all, problems resampled within each benchmark).
- difference of two models: the same statistic of the per-problem differences, so both models are scored on
  the same resampled seeds and problems (a paired bootstrap); significant when its interval excludes 0.
- seeds: each seed's own value of the statistic, shown as "seeds min to max".
- mixed - best merge: the best merge is the one with the highest mean over benchmarks on the validation slice
  (problems whose id's crc32 is divisible by 4, stats.is_validation), and the difference is measured on the
  other problems (the test slice).
- per item kind (rows with a "kind", the small world's): the cells' statistics on the problems of one
  (domain, kind); the transfer matrix: each expert minus the base on each domain's problems (paired).
"""

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

import analyze
import data
from cli import UserError
# the statistics below are stats.py's (tests and callers also read them here: report.estimate)
from stats import (VALIDATION_EVERY, bench_rng, est_text, estimate, fmt, interval_text,  # noqa: F401
                   is_validation, md_table, percentile_interval, read_json, read_jsonl, resample_means, sig,
                   significant, spread_text, write_atomic, write_json)


# ----------------------------------------------------------------------------------------------------------
# Per-problem scores (the bootstrap itself: stats.py)
# ----------------------------------------------------------------------------------------------------------


def problem_scores(seed_records: list[list[dict]]) -> dict:
    """Per-problem scores from each seed's eval_per_problem records.

    Returns {"models", "benchmarks", "seeds", "k", "ids": {b: [id]}, "domains": {b: [domain]}, "kinds": {b: [kind
    or None]}, "n_seen": {b: n},
    "avg": {model: {b: (seeds, problems)}}, "pass": ...}: for benchmark b, the models that have it in every
    seed, on the problems that every seed evaluated for every one of them (ids sorted). avg is the mean
    reward of the k samples; pass the unbiased pass@k, k the fewest samples any problem of b has."""
    tables = []
    for records in seed_records:
        t = defaultdict(dict)
        for r in records:
            t[(r["model"], r["benchmark"])][r["id"]] = r
        tables.append(t)
    models = list(dict.fromkeys(r["model"] for r in seed_records[0]))
    # a benchmark counts when some model has it in every seed
    benches = [b for b in dict.fromkeys(r["benchmark"] for r in seed_records[0])
               if any(all((m, b) in t for t in tables) for m in models)]
    out = {"models": models, "benchmarks": benches, "seeds": len(tables), "k": {}, "ids": {}, "domains": {},
           "kinds": {}, "n_seen": {}, "avg": defaultdict(dict), "pass": defaultdict(dict)}
    for b in benches:
        have = [m for m in models if all((m, b) in t for t in tables)]
        ids = sorted(set.intersection(*(set(t[(m, b)]) for m in have for t in tables)))
        k = min(len(t[(m, b)][i]["rewards"]) for m in have for t in tables for i in ids) if ids else 0
        out["ids"][b], out["k"][b] = ids, k
        out["domains"][b] = [tables[0][(have[0], b)][i]["domain"] for i in ids] if ids else []
        out["kinds"][b] = [tables[0][(have[0], b)][i].get("kind") for i in ids] if ids else []   # None: no kind
        out["n_seen"][b] = max(len(t[(m, b)]) for m in have for t in tables)
        for m in have:
            rows = [[t[(m, b)][i]["rewards"] for i in ids] for t in tables]   # (seeds, problems, samples)
            out["avg"][m][b] = np.array([[float(np.mean(x)) for x in row] for row in rows]).reshape(len(tables), -1)
            out["pass"][m][b] = np.array([[analyze.pass_at_k(len(x), sum(v >= 1.0 for v in x), k) for x in row]
                                          for row in rows]).reshape(len(tables), -1)
    return out


# ----------------------------------------------------------------------------------------------------------
# Finding the runs
# ----------------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl of a training run: one JSON object with a "step" per line."""
    return [row for _, row in read_jsonl(path, ("step",))]


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
            # no step trains nothing: the starting model; MT-OPD (train.py --teachers) distils experts;
            # otherwise one domain is an expert, several the mix
            kind = ("base" if cfg.get("steps") == 0 else "opd" if cfg.get("teachers") else
                    "expert" if len(domains) == 1 else "mixed")
            found["train"][d.name] = {
                "dir": str(d), "run": run, "domains": list(domains), "kind": kind, "base": cfg.get("model"),
                "metrics": read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").exists() else [],
                "checkpoint": find_checkpoint(d), "mtime": (d / "run.json").stat().st_mtime,
                "step0": find_checkpoint(d / "checkpoints" / "step_000000")
                         if (d / "checkpoints" / "step_000000").is_dir() else None}
    return found


def models_from_runs(found: dict, cfg: analyze.ReportConfig) -> dict:
    """{"base": path|None, "experts": {domain: path}, "multitask": {name: path}, "merged": {name: path},
    "distilled": {name: path}}: the flags when given, else what the run folders show (the newest run when two
    train the same domain)."""
    experts, multitask, distilled = {}, {}, {}
    for name, t in sorted(found["train"].items(), key=lambda kv: kv[1]["mtime"]):
        if not t["checkpoint"] or t["kind"] == "base":
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
    # the base: the base run's step-0 model, any run's saved step-0 model, else the model their config names
    base_runs = [t["step0"] or t["checkpoint"] for t in found["train"].values() if t["kind"] == "base"]
    step0 = [t["step0"] for t in found["train"].values() if t["step0"]]
    bases = {t["base"] for t in found["train"].values() if t["base"]}
    return {
        "base": (cfg.base or next((b for b in base_runs + step0 if b), None)
                 or (bases.pop() if len(bases) == 1 else None)),
        "experts": analyze.parse_named(cfg.experts, "expert") if cfg.experts else experts,
        "multitask": {"multitask": cfg.multitask} if cfg.multitask else multitask,
        "merged": analyze.parse_named(cfg.merged, "merged model") if cfg.merged else
                  {n: m["checkpoint"] for n, m in found["merged"].items() if m["checkpoint"]},
        "distilled": distilled,
    }


def roles(models: dict, evaluation: dict) -> dict:
    """The eval.json names of the base, the experts {domain: name}, the mixed model (the first multi-task
    run), and the combinations {name: "merge" or "MT-OPD"}; a model eval.json lacks is left out."""
    name = lambda n, p: analyze.match_eval_name(evaluation, n, p) if p else None  # noqa: E731
    experts = {d: name(d, p) for d, p in models["experts"].items()}
    mixed = [name(n, p) for n, p in models["multitask"].items()]
    combined = {name(n, p): "merge" for n, p in models["merged"].items()}
    combined |= {name(n, p): "MT-OPD" for n, p in models["distilled"].items()}
    return {"base": name("base", models["base"]), "experts": {d: e for d, e in experts.items() if e},
            "mixed": next((m for m in mixed if m), None), "combined": {n: k for n, k in combined.items() if n}}


# ----------------------------------------------------------------------------------------------------------
# Accuracy tables: the main table, the differences, the combinations vs the mixed model
# ----------------------------------------------------------------------------------------------------------


def accuracy_stats(ps: dict, who: dict, *, n_boot: int, seed: int) -> dict:
    """Every estimate the report states, from problem_scores: cells[metric][model][benchmark or "mean"],
    vs_base[model][benchmark or "mean"], expert_gain[(domain, benchmark or "mean")], vs_mixed[model][...]."""
    est = lambda scores, samples=None: estimate(scores, n_boot=n_boot, seed=seed, samples=samples)  # noqa: E731
    benches = ps["benchmarks"]

    def row(scores_of: dict, samples: dict | None = None) -> dict:   # per benchmark, and their mean when all there
        cells = {b: est({b: scores_of[b]}, samples) for b in benches if b in scores_of}
        cells["mean"] = est(scores_of, samples) if len(scores_of) == len(benches) else None
        return cells

    def diff(a: str, b: str, metric: str = "avg") -> dict:
        sa, sb = ps[metric].get(a, {}), ps[metric].get(b, {})
        return row({x: sa[x] - sb[x] for x in benches if x in sa and x in sb})

    # a cell at 0 or 1 gets a one-sided bound: over the k graded samples of each problem and seed for avg@k (k the
    # fewest any problem has, so the bound errs wide), over each problem's one pass/fail for pass@k
    samples = {"avg": ps["k"], "pass": dict.fromkeys(benches, 1)}
    out = {"cells": {m: {name: row(ps[m][name], samples[m]) for name in ps["models"]} for m in ("avg", "pass")}}
    base, mixed = who["base"], who["mixed"]
    out["vs_base"] = {n: diff(n, base) for n in ps["models"] if base in ps["avg"] and n != base}
    out["vs_mixed"] = {n: diff(n, mixed) for n in who["combined"] if mixed in ps["avg"] and n in ps["avg"]}
    # each expert against the base on the problems of its own domain, per benchmark holding any
    gains = {}
    for d, e in who["experts"].items():
        if base not in ps["avg"] or e not in ps["avg"]:
            continue
        scores = {}
        for b in benches:
            mine = np.array([dom == d for dom in ps["domains"][b]], dtype=bool)
            if b in ps["avg"][e] and b in ps["avg"][base] and mine.any():
                scores[b] = (ps["avg"][e][b] - ps["avg"][base][b])[:, mine]
        gains |= {(d, b): est({b: s}) for b, s in scores.items()}
        if len(scores) > 1:
            gains[(d, "mean")] = est(scores)
    out["expert_gain"] = gains
    # the experts as one model: on each problem, the expert of that problem's domain
    own = {}
    for b in benches:
        doms = ps["domains"][b]
        if doms and all(who["experts"].get(d) in ps["avg"] and b in ps["avg"][who["experts"][d]] for d in doms):
            own[b] = np.stack([ps["avg"][who["experts"][d]][b][:, i] for i, d in enumerate(doms)], axis=1)
    out["experts_own"] = row(own)
    if mixed in ps["avg"]:
        out["experts_own_vs_mixed"] = row({b: s - ps["avg"][mixed][b] for b, s in own.items() if b in ps["avg"][mixed]})
    out["kinds"] = kind_stats(ps, n_boot=n_boot, seed=seed)
    out["transfer"] = transfer_stats(ps, who, n_boot=n_boot, seed=seed)
    out["best_merge"] = best_merge_stats(ps, who, n_boot=n_boot, seed=seed)
    return out


def masked(scores_of: dict, mask_of: dict) -> dict:
    """{b: scores (seeds, problems) restricted to the problems mask_of[b] keeps}, for the benchmarks keeping any."""
    return {b: s[:, mask_of[b]] for b, s in scores_of.items() if b in mask_of and mask_of[b].any()}


def kind_stats(ps: dict, *, n_boot: int, seed: int) -> dict:
    """{model: {domain: {kind: estimate}}}: avg@k on the problems of each (domain, item kind), over the benchmarks
    holding them (the mean of their benchmark means), with the cells' intervals and one-sided bounds. Empty when
    no problem has a kind (real data has none; the small world's rows carry one)."""
    pairs = list(dict.fromkeys((d, k) for b in ps["benchmarks"] for d, k in zip(ps["domains"][b], ps["kinds"][b])
                               if k is not None))
    out = {}
    for name in ps["models"]:
        for d, kind in pairs:
            mask = {b: np.array([(dd, kk) == (d, kind) for dd, kk in zip(ps["domains"][b], ps["kinds"][b])], bool)
                    for b in ps["benchmarks"]}
            scores = masked(ps["avg"][name], mask)
            if scores:
                out.setdefault(name, {}).setdefault(d, {})[kind] = estimate(
                    scores, n_boot=n_boot, seed=seed, samples=ps["k"])
    return out


def transfer_stats(ps: dict, who: dict, *, n_boot: int, seed: int) -> dict:
    """The expert x domain transfer matrix {expert's domain: {domain: estimate}}: each expert's avg@k gain over
    the base on every domain's problems (paired per problem, over the benchmarks holding that domain), the end
    points of the paper's Figure 2. The diagonal is each expert on its own domain."""
    base = who["base"]
    if base not in ps["avg"]:
        return {}
    domains = list(dict.fromkeys(d for b in ps["benchmarks"] for d in ps["domains"][b]))
    domains = [d for d in data.DOMAINS if d in domains] + [d for d in domains if d not in data.DOMAINS]
    out = {}
    for de, e in who["experts"].items():
        if e not in ps["avg"]:
            continue
        gain = {b: ps["avg"][e][b] - ps["avg"][base][b] for b in ps["benchmarks"]
                if b in ps["avg"][e] and b in ps["avg"][base]}
        out[de] = {d: estimate(masked(gain, {b: np.array([x == d for x in ps["domains"][b]], bool) for b in gain}),
                               n_boot=n_boot, seed=seed) for d in domains}
    return out


def best_merge_stats(ps: dict, who: dict, *, n_boot: int, seed: int) -> dict | None:
    """The best merge picked on the validation slice, measured on the test slice (stats.is_validation splits
    each benchmark's problems by a hash of their ids): {"model", "validation": {merge: mean avg@k over
    benchmarks on validation}, "n_validation", "n_test": {benchmark: problems}, "mixed_minus_best": {benchmark or
    "mean": estimate on the test slice}}. None without a mixed model, a merge, or validation problems of every
    benchmark."""
    merges = [n for n, kind in who["combined"].items() if kind == "merge" and n in ps["avg"]]
    mixed = who["mixed"]
    if mixed not in ps["avg"] or not merges:
        return None
    val = {b: np.array([is_validation(i) for i in ps["ids"][b]], bool) for b in ps["benchmarks"]}
    test = {b: ~m for b, m in val.items()}
    merges = [n for n in merges if all(b in ps["avg"][n] for b in ps["benchmarks"])]
    if not merges or not all(val[b].any() and test[b].any() for b in ps["benchmarks"]):
        return None
    on_val = {n: float(np.mean([s.mean() for s in masked(ps["avg"][n], val).values()])) for n in merges}
    best = max(merges, key=lambda n: on_val[n])   # ties: the first merge found
    diff = masked({b: ps["avg"][mixed][b] - ps["avg"][best][b] for b in ps["benchmarks"]}, test)
    cells = {b: estimate({b: s}, n_boot=n_boot, seed=seed) for b, s in diff.items()}
    cells["mean"] = estimate(diff, n_boot=n_boot, seed=seed)
    return {"model": best, "validation": on_val, "n_validation": {b: int(m.sum()) for b, m in val.items()},
            "n_test": {b: int(m.sum()) for b, m in test.items()}, "mixed_minus_best": cells}


def interval_note(n_seeds: int) -> str:
    """What the report's 95% intervals resample, in a sentence."""
    if n_seeds == 1:
        return ("One seed: the 95% intervals resample problems only (a percentile bootstrap over each benchmark's "
                "problems), so they measure eval noise on these checkpoints, not the spread between training runs; "
                "run several seeds (experiment.py --seeds 3) for intervals about the methods.")
    return (f"{n_seeds} seeds: the 95% intervals are a hierarchical percentile bootstrap, seeds resampled with "
            "replacement, then each benchmark's problems with replacement within each resampled seed; a difference "
            "resamples the same seeds and problems for both models (paired).")


BOUND_NOTE = ("A cell at exactly 0 or 1 (every graded sample wrong, or every one right) shows the one-sided 95% "
              "Clopper-Pearson bound over its graded samples (seeds x problems x samples, the fewest samples any "
              "problem has; pass@k: seeds x problems), marked one-sided.")


def main_table(ps: dict, stats: dict) -> str:
    benches = ps["benchmarks"]
    kk = sorted(set(ps["k"].values()))
    k = kk[0] if len(kk) == 1 else "k"
    seeds = ("" if ps["seeds"] == 1 else
             f"; the mean over the {ps['seeds']} seeds and the problems, then each seed's value as min to max")
    md = (f"{interval_note(ps['seeds'])} {BOUND_NOTE}\n\n"
          f"avg@{k}, the mean reward of each problem's samples ({', '.join(map(str, kk))} per problem), each cell "
          f"with its 95% interval{seeds}:\n\n")
    # the value and its interval in two columns, so the value column holds a plain number
    cols = [*benches, "mean"]
    header = ["model"] + [h for b in cols for h in (f"{b} (n={len(ps['ids'][b])})" if b in ps["ids"] else b,
                                                       "95% interval")]
    cell = lambda e: [fmt(e["value"]) if e else "n/a", interval_text(e)]  # noqa: E731
    md += md_table(header, [[n] + [c for b in cols for c in cell(stats["cells"]["avg"][n].get(b))]
                            for n in ps["models"]])
    md += f"\npass@{k} (unbiased estimator; a sample passes when its reward is 1), with the same intervals:\n\n"
    md += md_table(header, [[n] + [c for b in cols for c in cell(stats["cells"]["pass"][n].get(b))]
                            for n in ps["models"]])
    dropped = {b: ps["n_seen"][b] - len(ps["ids"][b]) for b in benches if ps["n_seen"][b] > len(ps["ids"][b])}
    if dropped:
        md += ("\nLeft out, because not every model and seed has them: " +
               ", ".join(f"{n} problem{'s' if n > 1 else ''} of {b}" for b, n in dropped.items()) + ".\n")
    return md


SIG_NOTE = "sig: the interval excludes 0; n.s.: it does not"


def differences(ps: dict, stats: dict, who: dict) -> str | None:
    benches = ps["benchmarks"]
    cols = [*benches, "mean"]
    md = ""
    if stats["vs_base"]:
        md += (f"### Each model vs the base\n\nEach model minus the base ({who['base']}), avg@k, with paired 95% "
               f"bootstrap intervals ({SIG_NOTE}):\n\n")
        md += md_table(["model", *benches, "mean"], [[n] + [est_text(cells.get(b), diff=True) for b in cols]
                                                     for n, cells in stats["vs_base"].items()])
    if stats["expert_gain"]:
        md += ("\n### Each expert on its own domain\n\nEach expert's gain over the base on its own domain's "
               "problems:\n\n")
        md += md_table(["expert", "benchmark", "problems", "gain [95% interval]"],
                       [[f"{d} ({who['experts'][d]})", b, e["n"], est_text(e, diff=True)]
                        for (d, b), e in stats["expert_gain"].items() if e])
    if stats.get("transfer"):
        md += "\n" + transfer_table(stats, who)
    return md or None


def transfer_table(stats: dict, who: dict) -> str:
    """The expert x domain gain matrix with its intervals (the diagonal: each expert on its own domain)."""
    domains = list(dict.fromkeys(d for row in stats["transfer"].values() for d in row))
    return ("### Transfer: each expert's gain on every domain\n\nEach expert minus the base "
            f"({who['base']}) on each domain's problems, avg@k, paired 95% intervals ({SIG_NOTE}); rows: the "
            "expert's own domain, the diagonal its own gain (the end points of the paper's Figure 2):\n\n" +
            md_table(["expert", *domains], [[f"{de} ({who['experts'][de]})"] +
                                            [est_text(row.get(d), diff=True) for d in domains]
                                            for de, row in stats["transfer"].items()]))


def kind_tables(ps: dict, stats: dict) -> str | None:
    """One table per domain: avg@k of every model on each item kind, with intervals; None without kinds."""
    kinds = stats.get("kinds")
    if not kinds:
        return None
    n = defaultdict(int)
    for b in ps["benchmarks"]:
        for d, k in zip(ps["domains"][b], ps["kinds"][b]):
            n[(d, k)] += 1
    md = ("### Per domain and item kind\n\navg@k of every model on the problems of each item kind of each domain "
          "(the small world's kinds: shared, specific, conflict, composite), with the same intervals:\n")
    domains = list(dict.fromkeys(d for rows in kinds.values() for d in rows))
    for d in domains:
        ks = list(dict.fromkeys(k for rows in kinds.values() for k in rows.get(d, {})))
        md += f"\n{d}:\n\n" + md_table(["model", *[f"{k} (n={n[(d, k)]})" for k in ks]],
                                       [[name] + [est_text(kinds[name].get(d, {}).get(k)) for k in ks]
                                        for name in kinds])
    return md


def best_merge_text(stats: dict, who: dict) -> str | None:
    """Mixed - best merge, the merge picked on the validation slice and measured on the test slice."""
    bm = stats.get("best_merge")
    if not bm:
        return None
    n_val, n_test = sum(bm["n_validation"].values()), sum(bm["n_test"].values())
    return (f"\nMixed - best merge: the best merge is picked on a validation slice, not on the problems it is "
            f"measured on. Each benchmark's problems are split by a hash of their ids (crc32 of the id divisible "
            f"by {VALIDATION_EVERY}: validation) into validation ({n_val} problems) and test ({n_test}); the merge "
            f"with the highest mean avg@k on validation is **{bm['model']}** (" +
            ", ".join(f"{n} {fmt(v)}" for n, v in bm["validation"].items()) +
            f"). {who['mixed']} minus {bm['model']} on the test slice: "
            f"**{est_text(bm['mixed_minus_best'].get('mean'), diff=True)}** (mean over benchmarks); per benchmark: " +
            ", ".join(f"{b} {est_text(e, diff=True)}" for b, e in bm["mixed_minus_best"].items() if b != "mean") +
            ".\n")


def combination_table(found: dict, ps: dict, stats: dict, who: dict) -> str | None:
    """The ways to combine the experts side by side: accuracy per benchmark of each merge and MT-OPD run
    beside the experts (each on its own domain) and the mixed model, the mean's difference from the mixed
    model with its paired interval, and each merge's own statistics from merge_report.json."""
    if not who["combined"]:
        return None
    benches = ps["benchmarks"]
    cols = [*benches, "mean"]
    value = lambda cells, b: fmt(cells[b]["value"]) if cells.get(b) else "n/a"  # noqa: E731
    merges = {n: m["report"].get("summary", {}) for n, m in found["merged"].items()}
    rows = [["experts", "each on its own domain", *[value(stats["experts_own"], b) for b in cols],
             est_text(stats.get("experts_own_vs_mixed", {}).get("mean"), diff=True), "", "", ""]]
    if who["mixed"] in stats["cells"]["avg"]:
        mixed = stats["cells"]["avg"][who["mixed"]]
        rows.append(["mixed", who["mixed"], *[value(mixed, b) for b in cols], "", "", "", ""])
    combined = []
    for n, kind in who["combined"].items():
        if n not in stats["cells"]["avg"]:
            continue
        cells, summary = stats["cells"]["avg"][n], merges.get(n, {})
        kept = summary.get("kept")
        combined.append((cells["mean"]["value"] if cells.get("mean") else -1.0,
                         [kind, n, *[value(cells, b) for b in cols],
                          est_text(stats["vs_mixed"].get(n, {}).get("mean"), diff=True),
                          sig(float(np.mean(kept)) if kept else None) if kind == "merge" else "",
                          sig(summary.get("sign_conflict")) if kind == "merge" else "",
                          sig(summary.get("update_norm")) if kind == "merge" else ""]))
    rows += [r for _, r in sorted(combined, key=lambda x: -x[0])]
    md = ("avg@k per benchmark, best combination first; mean - mixed: difference from the mixed model with its "
          f"paired 95% interval ({SIG_NOTE}); for merges, the fraction of each expert's update kept (mean over "
          "experts), the fraction of positions whose updates disagree in sign, and the L2 norm of the merged "
          "update (merge_report.json of the first runs folder):\n\n")
    md += md_table(["kind", "model", *benches, "mean", "mean - mixed", "kept", "sign conflicts", "update norm"], rows)
    md += best_merge_text(stats, who) or ""
    if stats["vs_mixed"]:
        md += f"\nEach combination minus the mixed model ({who['mixed']}) per benchmark, paired 95% intervals:\n\n"
        md += md_table(["model", *benches, "mean"], [[n] + [est_text(cells.get(b), diff=True) for b in cols]
                                                     for n, cells in stats["vs_mixed"].items()])
    return md


# ----------------------------------------------------------------------------------------------------------
# Cost, and the other analyses over seeds
# ----------------------------------------------------------------------------------------------------------


def device_hours(run: dict) -> float | None:
    """run.json's device_hours, else wall_s x world_size / 3600."""
    if run.get("device_hours") is not None:
        return float(run["device_hours"])
    if run.get("wall_s") is not None:
        return float(run["wall_s"]) * int(run.get("world_size", 1)) / 3600
    return None


def completion_tokens(train_run: dict) -> float | None:
    """A training run's sampled completion tokens: the sum over its metrics.jsonl steps of completion_tokens
    (train.py sums it over ranks); None when no step logs it."""
    got = [m["completion_tokens"] for m in train_run["metrics"] if m.get("completion_tokens") is not None]
    return float(sum(got)) if got else None


def cost_of(found: dict) -> dict:
    """Device-hours and completion tokens of one runs folder: per run kind, and each way to one multi-domain
    model (a merge samples nothing: 0 tokens)."""
    hours = {kind: {n: device_hours(t["run"]) for n, t in found["train"].items() if t["kind"] == kind}
             for kind in ("expert", "mixed", "opd")}
    hours["merge"] = {n: None if m["report"].get("wall_s") is None else float(m["report"]["wall_s"]) / 3600
                      for n, m in found["merged"].items()}
    experts = sum(hours["expert"].values()) if hours["expert"] and None not in hours["expert"].values() else None
    plus = lambda h: None if experts is None or h is None else experts + h  # noqa: E731
    approaches = {f"mixed run {n}": h for n, h in hours["mixed"].items()}
    approaches["experts alone (before combining)"] = experts
    approaches |= {f"experts + merge {n}": plus(h) for n, h in hours["merge"].items()}
    approaches |= {f"experts + MT-OPD run {n}": plus(h) for n, h in hours["opd"].items()}
    mixed_name, mixed = next(iter(hours["mixed"].items()), (None, None))
    tokens = {kind: {n: completion_tokens(t) for n, t in found["train"].items() if t["kind"] == kind}
              for kind in ("expert", "mixed", "opd")}
    tokens["merge"] = dict.fromkeys(found["merged"], 0.0)
    expert_tokens = (sum(tokens["expert"].values()) if tokens["expert"] and None not in tokens["expert"].values()
                     else None)
    plus_t = lambda t: None if expert_tokens is None or t is None else expert_tokens + t  # noqa: E731
    approach_tokens = {f"mixed run {n}": t for n, t in tokens["mixed"].items()}
    approach_tokens["experts alone (before combining)"] = expert_tokens
    approach_tokens |= {f"experts + merge {n}": expert_tokens for n in tokens["merge"]}
    approach_tokens |= {f"experts + MT-OPD run {n}": plus_t(t) for n, t in tokens["opd"].items()}
    return {"hours": hours, "experts_total": experts, "approaches": approaches, "mixed": mixed_name,
            "mixed_fraction": {a: None if mixed is None or not h else mixed / h for a, h in approaches.items()},
            "tokens": tokens, "approach_tokens": approach_tokens}


def cost_table(founds: list[dict]) -> tuple[str, dict] | None:
    """Device-hours of each way to one multi-domain model: the mixed run; the expert runs plus one merge
    (merge_report.json's wall_s on one device); the expert runs plus MT-OPD (the experts are its teachers).
    Beside each, the mixed run's cost as a fraction of it (the paper: 33.2% of separate training + merging).
    Several runs folders (seeds): the mean, and the seeds' min to max."""
    costs = [cost_of(f) for f in founds]
    whole = lambda v: f"{v:.0f}"  # noqa: E731  (token counts)
    if not any(any(c["hours"][k] for k in ("expert", "mixed", "opd")) for c in costs):
        return None
    seeds = lambda key, name: [c["hours"][key].get(name) for c in costs]  # noqa: E731
    rows = []
    for kind, label in (("expert", "expert run"), ("mixed", "mixed run"), ("merge", "merge"), ("opd", "MT-OPD run")):
        for n in costs[0]["hours"][kind]:
            # merge_report.json or run.json of this run in each folder
            infos = [f["merged"].get(n, {}).get("report", {}) if kind == "merge" else
                     f["train"].get(n, {}).get("run", {}) for f in founds]
            rows.append([label, n, infos[0].get("steps_done", "") if kind != "merge" else "",
                         infos[0].get("device", "n/a"), infos[0].get("world_size", 1),
                         spread_text([i.get("wall_s") for i in infos]), spread_text(seeds(kind, n)),
                         spread_text([c["tokens"][kind].get(n) for c in costs], whole)])
    md = ("Every run and merge. Device-hours = wall time x processes; a training run's wall time counts its steps "
          "(train.py's run.json), a merge's the whole merge.py process" +
          (f"; mean over the {len(founds)} runs folders, with their min to max" if len(founds) > 1 else "") +
          "; completion tokens: every completion the run sampled (metrics.jsonl's completion_tokens summed over "
          "steps), n/a where its metrics lack them:\n\n")
    md += md_table(["kind", "run", "steps", "device", "processes", "wall s", "device-hours", "completion tokens"],
                   rows)
    mixed_name = costs[0]["mixed"]
    steps = {kind: sorted({t["run"].get("steps_done") for t in founds[0]["train"].values() if t["kind"] == kind} - {None})
             for kind in ("expert", "mixed")}
    if steps["expert"] and steps["mixed"]:
        md += (f"\nThe comparison: the mixed run's {'/'.join(map(str, steps['mixed']))} steps against "
               f"{len([t for t in founds[0]['train'].values() if t['kind'] == 'expert'])} experts of "
               f"{'/'.join(map(str, steps['expert']))} steps each. The paper compares its 400-step mixed run with four "
               "200-step experts plus a merge: the mixed run took 33.2% of their GPU hours.\n")
    md += (f"\nEach way to one model for all domains, and the mixed run's cost as a fraction of it"
           f"{f' (mixed run: {mixed_name})' if mixed_name else ' (no mixed run found)'}:\n\n")
    md += md_table(["approach", "device-hours", "mixed / approach", "completion tokens"],
                   [[a, spread_text([c["approaches"].get(a) for c in costs]),
                     spread_text([c["mixed_fraction"].get(a) for c in costs]),
                     spread_text([c["approach_tokens"].get(a) for c in costs], whole)] for a in costs[0]["approaches"]])
    return md, costs[0] if len(costs) == 1 else {"seeds": costs}


def weights_seeds(results: list[dict]) -> str:
    """Headline weight statistics of every seed: sparsity over all parameters, and per pair Jaccard and the
    cosine of the updates on their overlap (relative threshold)."""
    names = list(results[0]["models"])
    md = "Every runs folder (seed): mean (seeds min to max), relative threshold, all parameters:\n\n"
    md += md_table(["model", "sparsity"], [[n, spread_text([r["sparsity"].get(n, {}).get("rel", {}).get("all")
                                                            for r in results], fmt)] for n in names])
    pairs = [(p["a"], p["b"]) for p in results[0]["pairs"]]
    if pairs:
        def stat(a, b, key):
            return [next((p["rel"]["all"].get(key) for p in r["pairs"] if (p["a"], p["b"]) == (a, b)), None)
                    for r in results]
        md += "\n" + md_table(["pair", "Jaccard", "cosine on overlap"],
                              [[f"{a} / {b}", spread_text(stat(a, b, "jaccard"), fmt),
                                spread_text(stat(a, b, "cos"), fmt)] for a, b in pairs])
    return md


def kl_seeds(results: list[dict]) -> str:
    """Figure 4's matrix (the first model that is not an expert) over every seed: mean (seeds min to max)."""
    res = results[0]
    doms, names = res["domains"], res["models"]
    if len(names) <= len(doms):
        return ""
    col = names[len(doms)]
    cell = lambda r, a, b: r["kl_fwd"][a][b][r["models"].index(col)] if col in r["models"] else None  # noqa: E731
    rows = [[f"expert {e}"] + [spread_text([cell(r, a, b) for r in results]) for a in range(len(doms))]
            for b, e in enumerate(doms)]
    return (f"KL(expert B || {col}) on B's trajectories of domain A, every runs folder (seed): mean (seeds min to "
            f"max):\n\n" + md_table(["", *[f"{d} data" for d in doms]], rows))


def delta_perf(ps: dict, kl: dict, evaluation: dict, *, n_boot: int, seed: int) -> list[list[dict | None]]:
    """The ΔPerf of the KL section with paired intervals: [domain A][model M] = M minus A's expert on the problems
    of domain A (the mean over the benchmarks holding them); None where either was not evaluated."""
    names = {n: analyze.match_eval_name(evaluation, n, p) for n, p in kl["paths"].items()}
    out = []
    for a in kl["domains"]:
        expert = names.get(a)
        row = []
        for m in kl["models"]:
            mine, scores = ps["avg"].get(names.get(m), {}), {}
            theirs = ps["avg"].get(expert, {})
            for b in ps["benchmarks"]:
                mask = np.array([d == a for d in ps["domains"][b]], dtype=bool)
                if mask.any() and b in mine and b in theirs:
                    scores[b] = (mine[b] - theirs[b])[:, mask]
            row.append(estimate(scores, n_boot=n_boot, seed=seed))
        out.append(row)
    return out


def consistency_seeds(res: dict) -> str:
    """consistency_markdown for the pooled samples of several seeds, with each seed's own cosine."""
    scopes = [s for s in res["n_problems"] if s != "all"] + ["all"]
    cell = lambda v: est_text({"value": v["cos"], "lo": v["lo"], "hi": v["hi"], "seeds": v["seeds"]})  # noqa: E731
    return (f"cosine(per-problem gain over {res['base']}, union of the experts' gains [{', '.join(res['experts'])}]) "
            "on the samples of every runs folder (seed) pooled per problem, with a 95% bootstrap interval over "
            "problems, then each runs folder's own cosine as min to max; 0 where the model or every expert gains "
            "nothing:\n\n" +
            md_table(["model", *[f"{s} (n={res['n_problems'][s]})" for s in scopes]],
                     [[n] + [cell(res["cos"][n][s]) for s in scopes] for n in res["models"]]))


def pooled_records(seed_records: list[list[dict]]) -> list[dict]:
    """One record per (model, benchmark, id) that every seed has, holding the samples of every seed."""
    keyed = [{(r["model"], r["benchmark"], r["id"]): r for r in records} for records in seed_records]
    common = set.intersection(*(set(k) for k in keyed))
    return [{**r, "rewards": [v for k in keyed for v in k[key]["rewards"]]}
            for key, r in keyed[0].items() if key in common]


def accuracy_json(ps: dict, stats: dict, who: dict) -> dict:
    """report.json's accuracy sections: every estimate is {"value", "lo", "hi", "seeds", "n", "n_seeds",
    "bound"} (report.py's docstring says what they resample)."""
    return {"n_seeds": ps["seeds"], "intervals": f"{interval_note(ps['seeds'])} {BOUND_NOTE}", "roles": who,
            "models": ps["models"], "benchmarks": ps["benchmarks"], "k": ps["k"],
            "n_problems": {b: len(ids) for b, ids in ps["ids"].items()},
            "main": stats["cells"], "vs_base": stats["vs_base"],
            "expert_gain": {f"{d} on {b}": e for (d, b), e in stats["expert_gain"].items()},
            "experts_own": stats["experts_own"], "experts_own_vs_mixed": stats.get("experts_own_vs_mixed"),
            "vs_mixed": stats["vs_mixed"], "kinds": stats["kinds"], "transfer": stats["transfer"],
            "best_merge": stats["best_merge"] and {**stats["best_merge"],
                                                   "rule": f"validation: crc32(id) % {VALIDATION_EVERY} == 0"}}


# ----------------------------------------------------------------------------------------------------------
# Evaluation during training (paper Figure 2), pairwise merges (Table 6), self-verification (Table 7)
# ----------------------------------------------------------------------------------------------------------


def read_train_eval(path: Path) -> list[dict]:
    """eval.jsonl of a training run (train.py --eval-every): one line per evaluated step."""
    return [row for _, row in analyze.read_jsonl(path, ("step", "problems"))]


def train_eval_curves(runs: list[dict], *, n_boot: int, seed: int) -> dict:
    """{"curves": {run: {domain: [{"step", "value", "lo", "hi", "seeds", "n"}]}}, "change": {run: {domain:
    estimate}}, "eval_s": {run: [seconds per runs folder]}} from every runs folder's eval.jsonl of each run
    (runs: one {run name: found run} per runs folder). A point is avg@k over the held-out problems with its
    bootstrap interval (seeds averaged per problem, on the steps and problems every folder has); change is the
    last evaluated step minus step 0, per problem (a paired interval)."""
    out = {"curves": {}, "change": {}, "eval_s": {}}
    for name in runs[0]:
        paths = [Path(r[name]["dir"]) / "eval.jsonl" if name in r else None for r in runs]
        if not all(p is not None and p.exists() for p in paths):
            continue
        logs = [{row["step"]: row for row in read_train_eval(p)} for p in paths]
        steps = sorted(set.intersection(*(set(lg) for lg in logs)))
        if not steps:
            continue
        scores = {}   # (step, domain) -> (seeds, problems)
        for st in steps:
            per = [{(p["domain"], p["id"]): float(np.mean(p["rewards"])) for p in lg[st]["problems"]} for lg in logs]
            keys = [k for k in per[0] if all(k in x for x in per[1:])]   # in eval.jsonl's (domain) order
            for d in dict.fromkeys(d for d, _ in keys):
                mine = [k for k in keys if k[0] == d]
                scores[(st, d)] = (mine, np.array([[x[k] for k in mine] for x in per]))
        curves, change = {}, {}
        for (st, d), (_, sc) in scores.items():
            e = estimate({f"train-eval/{d}": sc}, n_boot=n_boot, seed=seed)
            curves.setdefault(d, []).append({"step": st, **e})
        for d in curves:
            first, last = scores.get((steps[0], d)), scores.get((steps[-1], d))
            if first and last and len(steps) > 1:
                both = sorted(set(first[0]) & set(last[0]))
                fi, la = [first[0].index(k) for k in both], [last[0].index(k) for k in both]
                change[d] = estimate({f"train-eval/{d}": last[1][:, la] - first[1][:, fi]}, n_boot=n_boot, seed=seed)
        out["curves"][name], out["change"][name] = curves, change
        out["eval_s"][name] = [r[name]["run"].get("eval_s") for r in runs]
    return out


def train_eval_markdown(res: dict, runs: dict) -> str:
    """Each run's curves as a table (step x evaluated domain), and the change from step 0 to the end."""
    md = ("avg@k of held-out problems of every domain, evaluated during each run (train.py --eval-every; "
          "eval.jsonl), with 95% bootstrap intervals over problems. The evaluation's time (eval s) is kept out of "
          "the run's wall time and device-hours, so the cost table above counts training only.\n")
    for name, curves in res["curves"].items():
        doms = list(curves)
        steps = [p["step"] for p in curves[doms[0]]]
        n = {d: curves[d][0]["n"] for d in doms}
        md += (f"\n{name} ({runs[name]['kind']}, trained on {', '.join(runs[name]['domains'])}; eval s "
               f"{spread_text(res['eval_s'][name])}):\n\n")
        md += md_table(["step", *[f"{d} (n={n[d]})" for d in doms]],
                       [[st] + [est_text(next((p for p in curves[d] if p["step"] == st), None)) for d in doms]
                        for st in steps])
    if any(res["change"].values()):
        md += (f"\nChange from step 0 to the last evaluated step, per problem, with paired 95% intervals ({SIG_NOTE}); "
               "the paper's Figure 2 reads from this whether training one domain lifts the others:\n\n")
        doms = list(dict.fromkeys(d for c in res["change"].values() for d in c))
        md += md_table(["run", "trained on", *doms],
                       [[n, ",".join(runs[n]["domains"]), *[est_text(c.get(d), diff=True) for d in doms]]
                        for n, c in res["change"].items()])
    return md


PAIR_METHOD_NOTE = ("The paper does not name the operator of its pairwise merges (Table 6); this uses one method for "
                    "every pair (experiment.py --pair-method, TIES by default).")


def pair_members(name: str) -> tuple[str, str] | None:
    """"math+code" -> ("math", "code"): a pair merge's name in its eval results."""
    a, sep, b = name.partition("+")
    return (a, b) if sep and a and b and "+" not in b else None


def pairwise_rows(main: list[list[dict]], pairs: list[list[dict]], experts: dict, kl: dict | None, *,
                  n_boot: int, seed: int) -> list[dict]:
    """Table 6 for every ordered pair (a, b) of experts merged: on a's domain, the pair merge's avg@k, a's
    expert's, and their difference with a paired interval (the same problems, seeds averaged per problem).
    main: each runs folder's eval_per_problem records (the experts'); pairs: each runs folder's pair-merge
    records (models named "a+b"); experts {domain: name in main}. kl: kl.json, for the neighbourhood cell
    KL(expert a || expert b) on the trajectories expert a samples on its own domain (where the paper's
    Figure 4 reading says: small, so b predicts like a on a's data and merging with b spares a)."""
    def scores(records, model, domain):   # {(benchmark, id): score}
        return {(r["benchmark"], r["id"]): float(np.mean(r["rewards"])) for r in records
                if r["model"] == model and r["domain"] == domain}

    names = list(dict.fromkeys(r["model"] for r in pairs[0]))
    out = []
    for pair in names:
        members = pair_members(pair)
        if not members:
            continue
        for a, b in (members, members[::-1]):
            if a not in experts:
                continue
            mine = [scores(recs, pair, a) for recs in pairs]
            theirs = [scores(recs, experts[a], a) for recs in main]
            keys = sorted(set.intersection(*(set(x) for x in mine + theirs)))
            by = defaultdict(list)
            for k in keys:
                by[k[0]].append(k)
            arr = lambda src, ks: np.array([[x[k] for k in ks] for x in src])  # noqa: E731  (seeds, problems)
            pair_s = {bench: arr(mine, ks) for bench, ks in by.items()}
            exp_s = {bench: arr(theirs, ks) for bench, ks in by.items()}
            cell = None
            if kl and a in kl["domains"] and b in kl["models"]:
                ia = kl["domains"].index(a)
                cell = kl["kl_fwd"][ia][ia][kl["models"].index(b)]
            out.append({"pair": pair, "a": a, "b": b, "n": len(keys),
                        "expert": estimate(exp_s, n_boot=n_boot, seed=seed),
                        "merged": estimate(pair_s, n_boot=n_boot, seed=seed),
                        "delta": estimate({bench: pair_s[bench] - exp_s[bench] for bench in by}, n_boot=n_boot,
                                          seed=seed),
                        "kl": cell})
    return out


def pairwise_markdown(rows: list[dict], method: str | None) -> str:
    md = (f"Every pair of experts merged{f' with {method}' if method else ''}, on each member's own domain against "
          f"that member's expert alone (the paper's Table 6), with paired 95% bootstrap intervals ({SIG_NOTE}). "
          "KL(a || b): the KL matrix's cell KL(expert a || expert b) on the trajectories expert a samples on its own "
          "domain: a small one says b is a neighbour of a there, which predicts that merging b in costs a little on "
          f"a's domain; the cells of (a, b) and (b, a) differ, as the changes can. {PAIR_METHOD_NOTE}\n\n")
    md += md_table(["pair", "on domain of", "merged with", "problems", "expert alone", "pair merge",
                    "pair - expert", "KL(a || b)"],
                   [[r["pair"], r["a"], r["b"], r["n"], est_text(r["expert"]), est_text(r["merged"]),
                     est_text(r["delta"], diff=True), sig(r["kl"])] for r in rows])
    return md


# ----------------------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------------------


def folders(cfg: analyze.ReportConfig) -> tuple[list[Path], list[Path], Path]:
    """(runs folders, their analyses folders, the report's folder), checked before anything is written."""
    runs = [Path(r) for r in cfg.runs]
    if not runs:
        raise UserError("--runs: give at least one folder of runs")
    for r in runs:
        if not r.is_dir():
            raise UserError(f"--runs {r}: no such folder")
    if len(runs) > 1 and (cfg.experts or cfg.multitask or cfg.merged):
        raise UserError("--experts, --multitask and --merged name one runs folder's models; with several "
                        "--runs folders the models are found in each")
    if cfg.out:
        out = Path(cfg.out)
    elif len(runs) == 1:
        out = runs[0] / "analysis"
    else:   # the folder holding every runs folder (out/exp for out/exp/seed_0/runs and out/exp/seed_1/runs)
        out = Path(os.path.commonpath([os.path.abspath(r) for r in runs])) / "analysis"
    if cfg.analyses and len(cfg.analyses) != len(runs):
        raise UserError(f"--analyses: {len(cfg.analyses)} folders for {len(runs)} --runs folders; give one each")
    analyses = [Path(a) for a in cfg.analyses] or ([out] if len(runs) == 1 else [r / "analysis" for r in runs])
    return runs, analyses, out


def compute_missing(found: dict, models: dict, where: Path, cfg: analyze.ReportConfig) -> None:
    """Run eval, weights, kl and consistency into `where` for the analyses missing there."""
    trained = {**models["experts"], **models["multitask"], **models["distilled"]}
    others = {**models["experts"], **models["multitask"], **models["merged"], **models["distilled"]}
    named = lambda d: [f"{k}={v}" for k, v in d.items()]  # noqa: E731
    files = {k: where / f"{k}.json" for k in ("eval", "weights", "kl", "consistency")}
    # eval and kl sample like the runs did: their completion budget, when they share one
    budget = {t["run"].get("config", {}).get("max_new_tokens") for t in found["train"].values()} - {None}
    level = {"max_new_tokens": budget.pop()} if len(budget) == 1 else {}
    if models["base"] and others and not files["eval"].exists():
        analyze.run_eval(analyze.EvalConfig(models=[f"base={models['base']}", *named(others)], out=str(where),
                                            n_problems=cfg.eval_problems, k=cfg.eval_k, device=cfg.device, **level))
    if models["base"] and trained and not files["weights"].exists():
        # the trained models only: with every merge too, the pair plots would be unreadable
        analyze.run_weights(analyze.WeightsConfig(models=named(trained), base=models["base"], out=str(where),
                                                  device=cfg.device))
    if models["experts"] and not files["kl"].exists():
        first_mt = next(iter(models["multitask"].items()), None)
        extra_mt = dict(list(models["multitask"].items())[1:])  # a second multi-task run is one more column
        analyze.run_kl(analyze.KLConfig(
            experts=named(models["experts"]), multitask=first_mt and f"{first_mt[0]}={first_mt[1]}",
            merged=named({**extra_mt, **models["distilled"], **models["merged"]}), out=str(where),
            n_problems=cfg.kl_problems, device=cfg.device, **level))
    combined = {**models["multitask"], **models["merged"], **models["distilled"]}
    if (files["eval"].exists() and models["base"] and models["experts"] and combined
            and not files["consistency"].exists()):
        ev = read_json(files["eval"])
        name = lambda n, p: analyze.match_eval_name(ev, n, p)  # noqa: E731
        analyze.run_consistency(analyze.ConsistencyConfig(
            base=name("base", models["base"]), experts=[name(d, p) for d, p in models["experts"].items()],
            models=[name(n, p) for n, p in combined.items()], out=str(where)))


def run_report(cfg: analyze.ReportConfig) -> str:
    import plots
    runs, analyses, out = folders(cfg)
    founds = [discover(r) for r in runs]
    for r, f in zip(runs, founds):
        if not f["train"] and not f["merged"]:
            raise UserError(f"--runs {r}: no training run (a subfolder with run.json) or merge (with "
                            f"merge_report.json) in it")
    models = [models_from_runs(f, cfg) for f in founds]
    if cfg.compute:
        for f, m, where in zip(founds, models, analyses):
            compute_missing(f, m, where, cfg)
    out.mkdir(parents=True, exist_ok=True)
    several = len(runs) > 1
    md = [f"# M2RL report\n\nRuns: {', '.join(f'`{r}`' for r in runs)}. Analyses: "
          f"{', '.join(f'`{a}`' for a in analyses)}. Every plot has its numbers in a .json beside it; every "
          f"table's numbers and intervals are in report.json (the accuracy estimates also in stats.json).\n"]
    numbers = {"runs": [str(r) for r in runs], "analyses": [str(a) for a in analyses], "n_boot": cfg.n_boot,
               "seed": cfg.seed}   # report.json: every table's numbers, filled section by section

    def missing(what: str) -> None:
        md.append(f"**Not available:** {what}\n")

    def each(name: str) -> list[dict] | None:   # an analysis' JSON from every runs folder, or None
        paths = [a / name for a in analyses]
        return [read_json(p) for p in paths] if all(p.exists() for p in paths) else None

    md.append("## 1. Runs\n")
    rows = []
    for i, f in enumerate(founds):
        where = [str(runs[i])] if several else []
        rows += [[*where, n, t["kind"], ",".join(t["domains"]), t["metrics"][-1]["step"] if t["metrics"] else "n/a",
                  sig(t["run"].get("wall_s")), t["run"].get("device", "n/a"), t["run"].get("world_size", "n/a"),
                  sig(device_hours(t["run"])), t["checkpoint"] or "none"] for n, t in f["train"].items()]
        rows += [[*where, n, "merge", m["report"].get("method", ""), "", sig(m["report"].get("wall_s")),
                  m["report"].get("device", "n/a"), "", "", m["checkpoint"] or "none"] for n, m in f["merged"].items()]
    md.append(md_table([*(["runs folder"] if several else []), "run", "kind", "domains / method", "last step",
                        "wall s", "device", "processes", "device-hours", "checkpoint"], rows))
    evals = each("eval.json")
    ev = evals[0] if evals else None
    shown = {"base": models[0]["base"], **models[0]["experts"], **models[0]["multitask"], **models[0]["merged"],
             **models[0]["distilled"]}
    shown = {k: v for k, v in shown.items() if v}   # no base found: none to show
    md.append(f"\nModels used{' (first runs folder)' if several else ''}, named as in eval.json: " + ", ".join(
        f"{(ev and analyze.match_eval_name(ev, k, v)) or k} = `{v}`" for k, v in shown.items()) + "\n")

    md.append("## 2. Training curves\n")
    train = {(n, i) if several else n: t for i, f in enumerate(founds) for n, t in f["train"].items()
             if t["kind"] != "base"}
    paths = plots.plot_training(train, out) if any(t["metrics"] for t in train.values()) else []
    md += [f"![{p.stem}]({p.name})\n" for p in paths]
    if not paths:
        missing("no metrics.jsonl with reward/<domain> lines in the runs.")

    per_problem = [a / "eval_per_problem.jsonl" for a in analyses]
    ps = stats = None
    if ev and all(p.exists() for p in per_problem):
        ps = problem_scores([analyze.read_per_problem(p) for p in per_problem])
        who = roles(models[0], ev)
        stats = accuracy_stats(ps, who, n_boot=cfg.n_boot, seed=cfg.seed)
        write_json(out / "stats.json", {"n_boot": cfg.n_boot, "seed": cfg.seed, "runs": [str(r) for r in runs],
                                        "analyses": [str(a) for a in analyses], "roles": who, "k": ps["k"],
                                        "n_problems": {b: len(ids) for b, ids in ps["ids"].items()},
                                        **{key: stats[key] for key in ("cells", "vs_base", "vs_mixed", "experts_own")},
                                        "expert_gain": {f"{d} on {b}": e
                                                        for (d, b), e in stats["expert_gain"].items()}})
        numbers |= accuracy_json(ps, stats, who)
    md.append("## 3. Main table: accuracy of every model on every benchmark\n")
    if ps:
        md.append(main_table(ps, stats))
        cells = stats["cells"]["avg"]
        cols = [*ps["benchmarks"], "mean"]
        panels = {b: [cells[n][b]["value"] if cells[n].get(b) else None for n in ps["models"]] for b in cols}
        err = {b: ([cells[n][b]["lo"] if cells[n].get(b) else None for n in ps["models"]],
                   [cells[n][b]["hi"] if cells[n].get(b) else None for n in ps["models"]]) for b in cols}
        plots.plot_accuracy(ps["models"], panels, out / "eval_bars.png", metric="avg@k", err=err,
                            note=": bars the mean, whiskers the 95% bootstrap interval")
        md.append("\n![eval](eval_bars.png)\n")
        text = kind_tables(ps, stats)
        if text:   # only when the rows carry item kinds (the small world's)
            md.append(text)
        text = differences(ps, stats, who)
        if text:
            md.append(text)
            if stats["transfer"]:
                plots.plot_transfer(stats["transfer"], out / "transfer_matrix.png")
                md.append("\n![transfer](transfer_matrix.png)\n")
        else:
            missing("the base model's eval results (for the differences from it).")
    elif ev:
        md.append(analyze.eval_tables(ev["table"], list(ev["models"]))[0])
        missing("the 95% intervals: no eval_per_problem.jsonl beside eval.json.")
    else:
        missing(f"`{analyses[0] / 'eval.json'}` (run `python analyze.py eval`, or report with --compute and models).")

    md.append("## 4. Combining the experts: merge methods and MT-OPD vs the mixed model\n")
    text = combination_table(founds[0], ps, stats, who) if ps else None
    if text:
        md.append(text)
    else:
        missing("merged models or MT-OPD runs in the runs folder, with their eval results (eval.json and "
                "eval_per_problem.jsonl).")

    md.append("## 5. Cost: mixed training vs separate training + combining\n")
    cost = cost_table(founds)
    if cost:
        md.append(cost[0])
        write_json(out / "cost.json", cost[1])
        numbers["cost"] = cost[1]
    else:
        missing("no training runs with run.json in the runs folders.")

    md.append("## 6. Weight updates\n")
    weights = each("weights.json")
    if weights:
        md.append(("First runs folder:\n\n" if several else "") + analyze.weights_markdown(weights[0]))
        md += [f"\n![{p.stem}]({p.name})\n" for p in plots.plot_weights(weights[0], out)]
        numbers["weights"] = [{k: w.get(k) for k in ("models", "scopes", "rel_tol", "sparsity", "pairs")}
                              for w in weights]   # one per runs folder (seed)
        if several:
            md.append("\n" + weights_seeds(weights))
    else:
        missing("weights.json (run `python analyze.py weights`, or give --base and the models).")

    md.append("## 7. Cross-domain KL\n")
    kls = each("kl.json")
    # kl.json written before the cross matrix holds [A][M] matrices, not [A][B][M]: not read
    if kls and kls[0].get("domains") and isinstance(kls[0]["kl_fwd"][0][0], list):
        res = kls[0]
        delta = None
        if ps:   # ΔPerf from the per-problem rewards, with paired intervals (and every seed's, pooled)
            delta = delta_perf(ps, res, ev, n_boot=cfg.n_boot, seed=cfg.seed)
            res = {**res, "perf_change": [[e and e["value"] for e in row] for row in delta]}
            numbers["kl_delta_perf"] = delta   # [domain A][model M], with intervals
            delta = [[est_text(e, diff=True) for e in row] for row in delta]
        numbers["kl"] = [{k: r.get(k) for k in ("domains", "models", "kl_fwd", "kl_rev", "n_tokens")} for r in kls]
        md.append(("KL of the first runs folder; ΔPerf over every runs folder.\n\n" if several else "") +
                  analyze.kl_markdown(res, delta))
        if res.get("perf_change") is None:
            missing("ΔPerf beside the KL (no eval results).")
        plots.plot_kl(res, out / "kl_heatmap.png")
        md.append("\n![kl](kl_heatmap.png)\n")
        if len(res["models"]) > len(res["domains"]):
            plots.plot_kl_cross(res, res["models"][len(res["domains"]):], out / "kl_cross.png")
            md.append("\n![kl_cross](kl_cross.png)\n")
        if several:
            md.append("\n" + kl_seeds(kls))
    else:
        missing("kl.json with the cross matrix (run `python analyze.py kl`, or report with --compute and expert "
                "runs).")

    md.append("## 8. Consistency of gains\n")
    cons = each("consistency.json")
    if cons and not several:
        res = cons[0]
    elif several and ps:   # the same comparison on every seed's samples pooled, then on each seed's own
        names = ((cons[0]["base"], cons[0]["experts"], cons[0]["models"]) if cons else
                 (who["base"], list(who["experts"].values()), [m for m in [who["mixed"], *who["combined"]] if m]))
        seed_records = [analyze.read_per_problem(p) for p in per_problem]
        pooled = pooled_records(seed_records)
        kept = {(r["model"], r["benchmark"], r["id"]) for r in pooled}
        res = analyze.consistency(pooled, *names, n_boot=cfg.n_boot, seed=cfg.seed)
        per_seed = [analyze.consistency([r for r in recs if (r["model"], r["benchmark"], r["id"]) in kept], *names,
                                        n_boot=cfg.n_boot, seed=cfg.seed)["cos"] for recs in seed_records]
        for name, scopes in res["cos"].items():
            for scope, v in scopes.items():
                v["seeds"] = [c[name][scope]["cos"] for c in per_seed]
        write_json(out / "consistency_seeds.json", res)
    else:
        res = None
    if res:
        numbers["consistency"] = {k: res.get(k) for k in ("base", "experts", "models", "n_problems", "cos")}
        md.append(consistency_seeds(res) if several else analyze.consistency_markdown(res))
        plots.plot_consistency(res, out / "consistency_bars.png")
        md.append("\n![consistency](consistency_bars.png)\n")
    else:
        missing("consistency.json (needs eval results of the base, the experts and a mixed or merged model; "
                "run `python analyze.py consistency`).")
    md += paper_analyses(founds, analyses, ev, models[0], out, cfg)
    text = "\n".join(md)
    write_json(out / "report.json", numbers)
    write_atomic(out / "report.md", text)
    print(f"wrote {out / 'report.md'}")
    return text


def paper_analyses(founds: list[dict], analyses: list[Path], ev: dict | None, models: dict, out: Path,
                   cfg: analyze.ReportConfig) -> list[str]:
    """Sections 9-11: Figure 2's curves (the runs' eval.jsonl), Table 6's pairwise merges (<analyses>/pairs/*/)
    and Table 7's self-verification (<analyses>/verify.json); their numbers go into stats.json too. The report
    never computes them (experiment.py runs them): a missing one reads "Not run"."""
    import plots
    md, numbers = [], {}
    md.append("## 9. Accuracy of every domain during training (paper Figure 2)\n")
    order = lambda t: ({"expert": 0, "mixed": 1}.get(t["kind"], 2),   # noqa: E731  experts in domain order
                       data.DOMAINS.index(t["domains"][0]) if t["kind"] == "expert" and t["domains"][0] in data.DOMAINS
                       else len(data.DOMAINS))
    runs = [dict(sorted(((n, t) for n, t in f["train"].items() if t["kind"] != "base"), key=lambda nt: order(nt[1])))
            for f in founds]
    curves = train_eval_curves(runs, n_boot=cfg.n_boot, seed=cfg.seed)
    if curves["curves"]:
        md.append(train_eval_markdown(curves, runs[0]))
        plots.plot_train_eval(curves["curves"], out / "train_eval.png")
        md.append("\n![train_eval](train_eval.png)\n")
        numbers["train_eval"] = curves
    else:
        md.append("**Not run:** no run has an eval.jsonl (train.py --eval-every N).\n")

    md.append("## 10. Pairwise merges and the policy neighbourhood (paper Table 6)\n")
    pair_files = [sorted((a / "pairs").glob("*/eval_per_problem.jsonl")) for a in analyses]
    main_files = [a / "eval_per_problem.jsonl" for a in analyses]
    rows = []
    if ev and all(pair_files) and all(p.exists() for p in main_files):
        who = roles(models, ev)
        kl_path = analyses[0] / "kl.json"
        kl = read_json(kl_path) if kl_path.exists() else None
        if kl and not (kl.get("domains") and isinstance(kl["kl_fwd"][0][0], list)):
            kl = None   # a kl.json from before the cross matrix
        pairs = [[r for f in files for r in analyze.read_per_problem(f)] for files in pair_files]
        # the merge method, from each pair merge's merge_report.json (eval.json names the merge's folder)
        merged = [Path(p) / "merge_report.json" for f in pair_files[0] if (f.parent / "eval.json").exists()
                  for p in read_json(f.parent / "eval.json")["models"].values()]
        methods = sorted({read_json(p).get("method") for p in merged if p.exists()} - {None})
        method = ", ".join(methods) or None
        rows = pairwise_rows([analyze.read_per_problem(p) for p in main_files], pairs, who["experts"], kl,
                             n_boot=cfg.n_boot, seed=cfg.seed)
    if rows:
        md.append(pairwise_markdown(rows, method))
        plots.plot_pairwise(rows, out / "pairwise.png")
        md.append("\n![pairwise](pairwise.png)\n")
        numbers["pairwise"] = rows
    else:
        md.append("**Not run:** pair merges' eval results (<analyses>/pairs/<a>-<b>/eval_per_problem.jsonl, "
                  "made by experiment.py) beside the main eval.\n")

    md.append("## 11. Self-verification (paper Section 3.6, Table 7, Figures 6-7)\n")
    vpath = analyses[0] / "verify.json"
    if vpath.exists():
        res = read_json(vpath)
        md.append(("First runs folder:\n\n" if len(analyses) > 1 else "") + analyze.verify_markdown(res))
        plots.plot_verify(res, out / "verify_bars.png")
        md.append("\n![verify](verify_bars.png)\n")
        if any(r["judge"] != r["generator"] for r in res["rows"]):
            plots.plot_verify_cross(res, out / "verify_cross.png")
            md.append("\n![verify_cross](verify_cross.png)\n")
        numbers["verify"] = res["rows"]
    else:
        md.append("**Not run:** verify.json (run `python analyze.py verify`).\n")
    if numbers:
        stats = read_json(out / "stats.json") if (out / "stats.json").exists() else {}
        write_json(out / "stats.json", {**stats, **numbers})
    return md
