"""report.py's Figure 2 curves (train.py's eval.jsonl) and Table 6 pairwise merges, on hand-made results whose
numbers are known by hand."""

import json

import pytest

import plots
import report


def rec(model, domain, pid, rewards):
    return {"model": model, "benchmark": f"embedded/{domain}", "id": pid, "domain": domain, "rewards": rewards}


KL = {"domains": ["math", "code"], "models": ["math", "code", "mixed"],
      # kl_fwd[A][B][M]: KL(expert B || M) on expert B's trajectories of domain A
      "kl_fwd": [[[0.0, 0.1, 0.2], [0.5, 0.0, 0.6]], [[0.0, 0.9, 0.4], [0.7, 0.0, 0.3]]]}


def test_pairwise_table_hand_computed(tmp_path):
    main = [rec("math", "math", "p1", [1, 0]), rec("math", "math", "p2", [0, 0]), rec("math", "math", "p3", [1, 1]),
            rec("math", "math", "p4", [1, 1]),   # not in the pair's results: left out of the pairing
            rec("code", "code", "q1", [1, 1]), rec("code", "code", "q2", [0, 1]),
            rec("math", "code", "q1", [0, 0])]   # the math expert on code: not a cell of Table 6
    pairs = [rec("math+code", "math", "p1", [1, 1]), rec("math+code", "math", "p2", [0, 1]),
             rec("math+code", "math", "p3", [1, 1]),
             rec("math+code", "code", "q1", [0, 1]), rec("math+code", "code", "q2", [0, 0])]
    rows = report.pairwise_rows([main], [pairs], {"math": "math", "code": "code"}, KL, n_boot=4000, seed=0)
    by = {(r["a"], r["b"]): r for r in rows}
    assert set(by) == {("math", "code"), ("code", "math")}
    m = by[("math", "code")]
    # on math: expert 0.5, 0, 1 (mean 0.5); pair 1, 0.5, 1 (mean 5/6); differences 0.5, 0.5, 0
    assert m["n"] == 3
    assert m["expert"]["value"] == pytest.approx(0.5) and m["merged"]["value"] == pytest.approx(5 / 6)
    assert m["delta"]["value"] == pytest.approx(1 / 3)
    # resampled means of (0.5, 0.5, 0) lie in {0, 1/6, 1/3, 1/2}; all three 0 has chance 1/27 > 2.5%, all three
    # 0.5 has chance 8/27 > 2.5%: the interval is [0, 0.5], which holds 0
    assert (m["delta"]["lo"], m["delta"]["hi"]) == (pytest.approx(0.0), pytest.approx(0.5))
    assert not report.significant(m["delta"])
    c = by[("code", "math")]
    # on code: expert 1, 0.5 (0.75); pair 0.5, 0 (0.25); differences -0.5, -0.5: the interval is the point
    assert c["delta"]["value"] == pytest.approx(-0.5) and c["delta"]["lo"] == c["delta"]["hi"] == pytest.approx(-0.5)
    assert report.significant(c["delta"])
    # the neighbourhood cells: KL(expert a || expert b) on a's own trajectories, kl_fwd[a][a][b]
    assert m["kl"] == 0.1 and c["kl"] == 0.7
    md = report.pairwise_markdown(rows, "ties")
    assert "| math+code | math | code | 3 | 0.500 [" in md and "+0.333 [+0.000, +0.500] n.s. | 0.1 |" in md
    assert "| math+code | code | math | 2 |" in md and "-0.500 [-0.500, -0.500] sig | 0.7 |" in md
    assert "does not name the operator" in md
    plots.plot_pairwise(rows, tmp_path / "pairwise.png")
    assert (tmp_path / "pairwise.png").stat().st_size > 1000


def test_pairwise_without_kl_and_unpaired_names():
    main = [rec("math", "math", "p1", [1])]
    pairs = [rec("math+code", "math", "p1", [0]), rec("merge-ties", "math", "p1", [1])]
    rows = report.pairwise_rows([main], [pairs], {"math": "math"}, None, n_boot=100, seed=0)
    assert [(r["a"], r["b"], r["kl"]) for r in rows] == [("math", "code", None)]   # code has no expert here
    assert report.pair_members("merge-ties") is None and report.pair_members("a+b") == ("a", "b")


def write_eval_log(path, lines):
    path.mkdir(parents=True)
    (path / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_train_eval_curves_and_change_hand_computed(tmp_path):
    problems = lambda math, code: [  # noqa: E731
        {"id": f"m{i}", "domain": "math", "rewards": r} for i, r in enumerate(math)] + [
        {"id": f"c{i}", "domain": "code", "rewards": r} for i, r in enumerate(code)]
    write_eval_log(tmp_path / "math", [
        {"step": 0, "eval_s": 1.0, "problems": problems([[0, 0], [1, 0]], [[1, 1], [0, 0]])},
        {"step": 5, "eval_s": 2.0, "problems": problems([[1, 1], [1, 0]], [[1, 1], [0, 0]])}])
    runs = [{"math": {"dir": str(tmp_path / "math"), "run": {"eval_s": 3.0}, "kind": "expert", "domains": ["math"]},
             "code": {"dir": str(tmp_path / "code"), "run": {}, "kind": "expert", "domains": ["code"]}}]   # no log
    res = report.train_eval_curves(runs, n_boot=2000, seed=0)
    assert list(res["curves"]) == ["math"]
    math = res["curves"]["math"]["math"]
    assert [(p["step"], p["value"], p["n"]) for p in math] == [(0, 0.25, 2), (5, 0.75, 2)]
    assert [p["value"] for p in res["curves"]["math"]["code"]] == [0.5, 0.5]
    # per-problem change on math: m0 0 -> 1, m1 0.5 -> 0.5, so 1 and 0, mean 0.5; the resampled means are 0,
    # 0.5 and 1, with chances 1/4, 1/2, 1/4: the interval is [0, 1]
    change = res["change"]["math"]["math"]
    assert change["value"] == pytest.approx(0.5) and (change["lo"], change["hi"]) == (0.0, 1.0)
    assert res["change"]["math"]["code"]["value"] == 0.0 and res["eval_s"]["math"] == [3.0]
    md = report.train_eval_markdown(res, runs[0])
    assert "math (expert, trained on math; eval s 3)" in md
    assert "| 5 | 0.750 [" in md and "+0.500 [+0.000, +1.000] n.s." in md
    plots.plot_train_eval(res["curves"], tmp_path / "train_eval.png")
    assert json.loads((tmp_path / "train_eval.json").read_text())["math"]["math"][1]["value"] == 0.75
