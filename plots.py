"""The figures of analyze.py and report.py: each function takes an analysis result (the dict its JSON holds)
and writes one PNG with the numbers it shows in a .json beside it (same stem).

    import plots
    plots.plot_weights(json.load(open("out/analysis/weights.json")), Path("out/analysis"))

Kept apart from the analyses so that analyze.py imports matplotlib only when it draws.
"""

import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt
import numpy as np

import data
from stats import fmt, sig, write_json


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


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


def finite(v) -> bool:
    return v is not None and math.isfinite(v)


def hbar_panels(rows: list[str], panels: dict[str, list], *, xlabel: str, title: str, err: dict | None = None,
                xlim: tuple[float, float] | None = None, digits: int = 3):
    """One panel per column of a rows x columns table, one horizontal bar per row with its value written beside
    it ("n/a" where undefined, and no bar). Readable with a dozen models, where grouped vertical bars are not.
    err: {panel: (lo, hi)} lists of whisker ends. Returns the figure."""
    values = [v for vs in panels.values() for v in vs if finite(v)]
    values += [v for lo_hi in (err or {}).values() for vs in lo_hi for v in vs if finite(v)]
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


# ----------------------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------------------


def plot_accuracy(models: list[str], panels: dict[str, list], path: Path, *, metric: str,
                  err: dict | None = None, note: str = "") -> None:
    """One panel per benchmark (and the mean), one bar per model; err: {panel: (lo, hi)} interval whiskers."""
    fig = hbar_panels(models, panels, xlabel=f"{metric} (mean reward)", err=err,
                      title=f"Accuracy per benchmark ({metric}){note}")
    save_plot(fig, path, {"metric": metric, "models": models, "values": panels, "interval": err})


# ----------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------


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
        seen = [v for v in exact + proj if finite(v)]
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


# ----------------------------------------------------------------------------------------------------------
# kl
# ----------------------------------------------------------------------------------------------------------


def plot_kl(res: dict, path: Path) -> None:
    """On each expert's own trajectories (the diagonal of the cross matrix): KL between that expert and every
    model, both directions, and the accuracy change beside it."""
    rows, cols = res["domains"], res["models"]
    own = {key: [res[key][a][a] for a in range(len(rows))] for key in ("kl_fwd", "kl_rev")}
    panels = [(own["kl_fwd"], "KL(expert of row || column)\non the row expert's trajectories", "magma", None),
              (own["kl_rev"], "KL(column || expert of row)\non the row expert's trajectories", "magma", None)]
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
    save_plot(fig, path, {"domains": rows, "models": cols, **own, "perf_change": res.get("perf_change")})


def plot_transfer(transfer: dict, path: Path) -> None:
    """The expert x domain transfer matrix (report.py's transfer_stats): each expert's gain over the base on
    each domain, with its 95% interval written in the cell; diverging colours centred on 0."""
    experts = list(transfer)
    domains = list(dict.fromkeys(d for row in transfer.values() for d in row))
    cell = lambda e, key: e[key] if e else None  # noqa: E731
    value = [[cell(transfer[x].get(d), "value") for d in domains] for x in experts]
    lo = [[cell(transfer[x].get(d), "lo") for d in domains] for x in experts]
    hi = [[cell(transfer[x].get(d), "hi") for d in domains] for x in experts]
    text = [[f"{v:+.2f}\n[{a:+.2f}, {b:+.2f}]" if v is not None else "n/a" for v, a, b in zip(*rows)]
            for rows in zip(value, lo, hi)]
    lim = max([abs(v) for row in value for v in row if finite(v)] + [1e-3])
    fig, ax = plt.subplots(figsize=(1.3 * len(domains) + 2.5, 0.7 * len(experts) + 1.6), layout="constrained")
    heatmap(ax, value, [f"expert {x}" for x in experts], domains, "gain over the base (avg@k), 95% interval",
            text=text, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xlabel("evaluated domain")
    save_plot(fig, path, {"experts": experts, "domains": domains, "gain": value, "lo": lo, "hi": hi})


def plot_kl_cross(res: dict, columns: list[str], path: Path) -> None:
    """Paper Figure 4, one panel per model M of `columns`: cell (expert B, domain A) = KL(expert_B || M) on
    expert B's trajectories of domain A's prompts, and under it the ΔPerf row: accuracy of M on A minus that of
    A's expert. One colour scale for every panel, so the models can be compared."""
    domains = res["domains"]
    idx = [res["models"].index(c) for c in columns]
    mats = {c: [[res["kl_fwd"][a][b][j] for a in range(len(domains))] for b in range(len(domains))]
            for c, j in zip(columns, idx)}
    delta = {c: None if res.get("perf_change") is None else [[res["perf_change"][a][j] for a in range(len(domains))]]
             for c, j in zip(columns, idx)}
    top = max([v for m in mats.values() for row in m for v in row if finite(v)] + [1e-6])
    lim = max([abs(v) for d in delta.values() if d for v in d[0] if finite(v)] + [1e-3])
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = plt.figure(layout="constrained", figsize=(4.6 * ncols, (0.55 * len(domains) + 2.6) * nrows))
    subs = np.atleast_1d(fig.subfigures(nrows, ncols)).ravel()
    for sub, c in zip(subs, columns):
        ax, ax_d = sub.subplots(2, 1, height_ratios=[len(domains), 1.4])
        heatmap(ax, mats[c], [f"expert {d}" for d in domains], [f"{d} data" for d in domains],
                f"KL(expert B || {c})", text=[[sig(v, 2) for v in row] for row in mats[c]], cmap="magma",
                vmin=0, vmax=top)
        if delta[c] is not None:
            heatmap(ax_d, delta[c], ["ΔPerf"], domains, f"{c} - expert of A, on A",
                    text=[[sig(v, 2) for v in delta[c][0]]], cmap="RdBu", vmin=-lim, vmax=lim)
        else:
            ax_d.axis("off")
            ax_d.text(0.5, 0.5, "ΔPerf: no eval.json", ha="center", va="center")
    for sub in subs[len(columns):]:
        sub.set_facecolor("none")
    fig.suptitle("Cross-domain KL (paper Figure 4): row = expert B sampling, column = domain A of the prompts")
    save_plot(fig, path, {"domains": domains, "models": columns, "kl_fwd": mats, "perf_change": delta})


# ----------------------------------------------------------------------------------------------------------
# consistency
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# training runs
# ----------------------------------------------------------------------------------------------------------

PER_TOKEN_STATS = ("kl", "teacher_kl", "entropy", "clip_frac")   # train.py averages these over trained tokens


def trained_nothing(run: dict, row: dict) -> bool:
    """A step whose every group had equal rewards and was dropped (train.py --filter-zero-var) trained no token:
    train.py then logs 0 for the per-token statistics, which is no measurement, so the plots skip it."""
    cfg = run.get("config", {})
    return bool(cfg.get("filter_zero_var")) and not cfg.get("teachers") and row.get("zero_var_frac") == 1.0


def plot_curve(ax, pts: list, color: str, label: str | None) -> int:
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
    run); train_stats.png: the run-wide statistics that are logged (KL, entropy, ...). train maps a key to a
    run as report.discover finds it; a key (name, seed) draws every seed of a run in the run's colour."""
    paths = []
    name_of = {key: key[0] if isinstance(key, tuple) else key for key in train}
    series = {key: f"{key[0]} (runs folder {key[1]})" if isinstance(key, tuple) else key for key in train}
    names = list(dict.fromkeys(name_of.values()))
    color = {name: f"C{i % 10}" for i, name in enumerate(names)}

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
                seen = set()   # one legend entry per run, however many seeds
                for run_key, t in train.items():
                    pts = [(row["step"], row[key]) for row in t["metrics"] if row.get(key) is not None]
                    if pts:
                        name = name_of[run_key]
                        windows.add(plot_curve(ax, pts, color[name], None if name in seen else name))
                        seen.add(name)
                        plotted.setdefault(key, {})[series[run_key]] = pts
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
            seen = set()
            for run_key, t in train.items():
                pts = [(row["step"], row[key]) for row in t["metrics"] if row.get(key) is not None
                       and not (key in PER_TOKEN_STATS and trained_nothing(t["run"], row))]
                if key in ("kl", "teacher_kl") and not any(v for _, v in pts):
                    continue   # the run has no such term (kl_coef 0, no teachers): zeros are no measurement
                if pts:
                    name = name_of[run_key]
                    windows.add(plot_curve(ax, pts, color[name], None if name in seen else name))
                    seen.add(name)
                    plotted.setdefault(key, {})[series[run_key]] = pts
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


# ----------------------------------------------------------------------------------------------------------
# evaluation during training (paper Figure 2), pairwise merges (Table 6), self-verification (Figures 6-7)
# ----------------------------------------------------------------------------------------------------------


def plot_train_eval(curves: dict, path: Path) -> None:
    """Figure 2: one panel per trained run, one line per evaluated domain (avg@k of the held-out problems at
    each evaluated step) with a band at its 95% bootstrap interval. curves: {run: {domain: [{"step", "value",
    "lo", "hi"}]}} (report.train_eval_curves)."""
    runs = list(curves)
    fig, axes = plt.subplots(1, len(runs), layout="constrained", squeeze=False, sharey=True,
                             figsize=(max(4.0, 3.6 * len(runs)), 3.4))
    domains = list(dict.fromkeys(d for c in curves.values() for d in c))
    color = {d: f"C{i % 10}" for i, d in enumerate(domains)}
    for ax, run in zip(axes[0], runs):
        for d, pts in curves[run].items():
            x = [p["step"] for p in pts]
            ax.plot(x, [p["value"] for p in pts], marker="o", ms=3, color=color[d], label=d)
            ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], color=color[d], alpha=0.15, lw=0)
        ax.set_title(run)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("avg@k on held-out problems")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Accuracy of every domain during each run (bands: 95% bootstrap interval over problems)")
    save_plot(fig, path, curves)


def plot_pairwise(rows: list[dict], path: Path) -> None:
    """Table 6 as bars: each ordered pair's change on its first member's domain against that member's expert,
    whiskers at the paired interval, the KL cell in the label."""
    labels = [f"{r['a']}+{r['b']} on {r['a']} (KL {sig(r['kl'])})" for r in rows]
    get = lambda key: [r["delta"][key] if r["delta"] else None for r in rows]  # noqa: E731
    fig = hbar_panels(labels, {"pair merge - expert": get("value")}, err={"pair merge - expert": (get("lo"), get("hi"))},
                      xlabel="avg@k difference", title="Pairwise merges: change on each member's own domain")
    save_plot(fig, path, {"rows": rows})


def plot_verify(res: dict, path: Path) -> None:
    """Figures 6-7 in spirit: for each model and domain (rows), the generation accuracy and the judge's
    balanced accuracy in each mode (panels), whiskers at the 95% interval; 0.5 is chance."""
    own = [r for r in res["rows"] if r["judge"] == r["generator"]]
    labels = [f"{r['judge']} / {r['domain']}" for r in own]
    panels = {"generation acc": [r["gen_acc"] for r in own]}
    err = {"generation acc": ([r["gen_acc_lo"] for r in own], [r["gen_acc_hi"] for r in own])}
    for m in res["modes"]:
        panels[f"{m}: balanced acc"] = [r[m]["bal_acc"] for r in own]
        err[f"{m}: balanced acc"] = ([r[m]["bal_acc_lo"] for r in own], [r[m]["bal_acc_hi"] for r in own])
        panels[f"{m}: unparseable"] = [r[m]["unparseable"] for r in own]
    fig = hbar_panels(labels, panels, err=err, xlim=(0, 1.3), xlabel="share",
                      title="Self-verification: each model judging its own responses (balanced acc 0.5 = chance)")
    for ax, name in zip(fig.axes, panels):
        if "balanced" in name:
            ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    save_plot(fig, path, {"rows": labels, "values": panels, "interval": err})


def plot_verify_cross(res: dict, path: Path) -> None:
    """Judge x generator balanced accuracy per domain and mode (heatmaps), when `verify --cross` ran."""
    doms = list(dict.fromkeys(r["domain"] for r in res["rows"]))
    judges = list(dict.fromkeys(r["judge"] for r in res["rows"]))
    gens = list(dict.fromkeys(r["generator"] for r in res["rows"]))
    fig, axes = plt.subplots(len(res["modes"]), len(doms), layout="constrained", squeeze=False,
                             figsize=(3.2 * len(doms) + 1, 2.6 * len(res["modes"]) + 0.4 * len(judges)))
    plotted = {}
    for i, m in enumerate(res["modes"]):
        for j, d in enumerate(doms):
            cell = {(r["judge"], r["generator"]): r[m]["bal_acc"] for r in res["rows"] if r["domain"] == d}
            mat = [[cell.get((a, g)) for g in gens] for a in judges]
            heatmap(axes[i][j], mat, judges, gens, f"{d}, {m}", vmin=0, vmax=1, cmap="RdBu")
            plotted[f"{d}/{m}"] = mat
    fig.suptitle("Balanced accuracy of each judge (rows) on each generator's responses (columns)")
    save_plot(fig, path, {"judges": judges, "generators": gens, "balanced_acc": plotted})
