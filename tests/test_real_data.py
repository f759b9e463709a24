"""The paper's benchmarks and the RL blend as they are hosted: each fixture under tests/fixtures/real/ has the
real schema of its source (a few rows written here from the public schema), and each test loads it through
data.load and grades a right and a wrong completion with the paper's graders (issue 21)."""

import os
import re
import subprocess
import sys
import warnings

import pytest

import data
from data import loaders
from verifiers import SCORERS, VERIFIERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(os.path.dirname(__file__), "fixtures", "real")


def real(name):
    return os.path.join(REAL, name)


def load(name, domains=data.DOMAINS, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load(real(name), list(domains), "eval", **kw)


def grade(completion, row, grader="paper"):
    return VERIFIERS[row["domain"]](completion, row, grader=grader)


def think(answer):
    return f"<think>working</think>{answer}"


# ----------------------------------------------------------------------------- math: AIME, HLE, Skywork

def test_aime24_takes_the_answer_from_the_solutions_last_box():
    """math-ai/aime24 (id, problem, solution, url) has the answer only as \\boxed{} in `solution`."""
    rows = load("aime24.jsonl")
    assert [(r["id"], r["domain"], r["answer"], r["source"]) for r in rows] == \
        [("60", "math", "16", "aime"), ("61", "math", "11", "aime")]   # the last box, not an earlier one
    assert "\\boxed{}" in rows[0]["prompt"][0]["content"] and "2024" in rows[0]["prompt"][0]["content"]
    assert grade(think("\\boxed{16}"), rows[0]) == 1.0 and grade(think("\\boxed{15}"), rows[0]) == 0.0


def test_hle_is_text_only_multiple_choice_to_science_exact_match_to_math():
    with pytest.warns(UserWarning, match="skipped 1 HLE rows that need their image"):
        rows = data.load(real("hle.jsonl"), list(data.DOMAINS), "eval")
    mc, exact = rows
    assert (mc["domain"], mc["answer"], mc["source"]) == ("science", "B", "hle")
    assert (exact["domain"], exact["answer"], exact["source"]) == ("math", "101", "hle")
    assert "Answer Choices:" in mc["prompt"][0]["content"] and "Answer: X" in mc["prompt"][0]["content"]
    assert grade(think("Answer: B"), mc) == 1.0 and grade(think("Answer: A"), mc) == 0.0
    assert grade(think("\\boxed{101}"), exact) == 1.0 and grade(think("\\boxed{103}"), exact) == 0.0
    assert [r["id"] for r in load("hle.jsonl", ["math"])] == ["66e8784d70625d8c7700315a"]


def test_skywork_keeps_every_accepted_form():
    rows = {r["id"]: r for r in load("nemotron_blend.jsonl", ["math"])}
    assert rows["sky-a1"]["answers"] == ["3", "x=3"] and rows["sky-a1"]["answer"] == "3"
    angle = rows["sky-a2"]
    assert angle["answers"] == ["60^\\circ", "\\frac{\\pi}{3}"]
    assert grade(think("\\boxed{\\frac{\\pi}{3}}"), angle) == 1.0   # the second form: 0 when only the first was kept
    assert grade(think("\\boxed{60^\\circ}"), angle) == 1.0
    assert grade(think("\\boxed{\\frac{\\pi}{4}}"), angle) == 0.0


# ----------------------------------------------------------------------------- code: LiveCodeBench, blend

LCB_TUPLE = """```python
class Solution:
    def minMax(self, nums: List[int]) -> List[int]:
        return min(nums), max(nums)
```"""
LCB_PAIRS = """```python
class Solution:
    def countPairs(self, nums: List[int], target: int) -> int:
        return sum(a + b == target for a, b in combinations(nums, 2))
```"""


def test_livecodebench_snapshot_folder_keeps_contest_dates_and_windows():
    """The Hub repository as downloaded: its loading script (ignored) and test*.jsonl files."""
    rows = load("code_generation_lite")
    assert [(r["id"], r["contest_date"][:10]) for r in rows] == \
        [("abc999_a", "2024-07-20"), ("3401", "2024-08-10"), ("3500", "2025-03-01")]
    assert [r["id"] for r in data.date_window(rows, "2024-08-01")] == ["3401", "3500"]
    assert [r["id"] for r in data.date_window(rows, "2024-08-01", "2025-02-01")] == ["3401"]   # v5's window


def test_livecodebench_functional_is_graded_as_lcb_grades_it():
    """A tuple where a list is expected passes, and List / combinations need no import (LCB's prelude)."""
    _, min_max, pairs = load("code_generation_lite")
    assert min_max["tests"]["prelude"] == "livecodebench"
    res = SCORERS["code"](think(LCB_TUPLE), min_max, grader="paper")
    assert res["reward"] == 1.0, res
    assert grade(think(LCB_TUPLE.replace("min(nums), max(nums)", "max(nums), min(nums)")), min_max) == 0.0
    assert grade(think(LCB_PAIRS), pairs) == 1.0
    assert grade(think(LCB_PAIRS.replace("== target", "!= target")), pairs) == 0.0


def test_livecodebench_stdin_problem_right_and_wrong():
    stdin_row = load("code_generation_lite")[0]
    assert stdin_row["tests"]["inputs"] == ["123\n", "9\n"]   # public + the decoded private test
    right = "```python\nprint(sum(map(int, input().strip())))\n```"
    assert grade(think(right), stdin_row) == 1.0
    assert grade(think(right.replace("sum(", "max(")), stdin_row) == 0.0


def test_livecodebench_hub_id_fails_with_one_line(monkeypatch):
    """datasets >= 4 refuses the Hub repository's loading script with a RuntimeError; here it is one line saying
    what to pass instead. (No network here: the refusal is raised as datasets 5.2.0 raises it.)"""
    import datasets

    def refuse(path, name=None, **kw):
        raise RuntimeError(f"Dataset scripts are no longer supported, but found code_generation_lite.py")
    monkeypatch.setattr(datasets, "load_dataset_builder", refuse)
    with pytest.raises(ValueError) as e:
        data.load("livecodebench/code_generation_lite", ["code"], "eval")
    assert "\n" not in str(e.value) and "dataset-script repository" in str(e.value) and "--local-dir" in str(e.value)


def test_blend_code_rows_take_their_hash_id():
    (code,) = load("nemotron_blend.jsonl", ["code"])
    assert code["id"] == "5f3a9c0e2b7d4e18"
    assert grade(think("```python\nprint(2 * int(input()))\n```"), code) == 1.0
    assert grade(think("```python\nprint(2 + int(input()))\n```"), code) == 0.0


# ----------------------------------------------------------------------------- science: blend, GPQA, MMLU-Redux

def test_blend_science_rows_are_graded_by_their_own_answer_format():
    rows = {r["id"]: r for r in load("nemotron_blend.jsonl", ["science"])}
    boxed, option = rows["mcqa-a1"], rows["mcqa-a2"]
    assert option["output_regex"] == "Option Selected:\\s*([A-Za-z])\\s*"
    assert grade(think("Answer: \\boxed{B}"), boxed) == 1.0 and grade(think("\\boxed{B}"), boxed) == 1.0
    assert grade(think("Answer: \\boxed{A}"), boxed) == 0.0
    assert grade(think("Option Selected: C"), option) == 1.0 and grade(think("Option Selected: D"), option) == 0.0
    # without a row regex the paper grader takes a boxed letter as the paper authors' reward does
    plain = {k: v for k, v in boxed.items() if k != "output_regex"}
    assert grade(think("Answer: \\boxed{B}"), plain) == 1.0 and grade(think("\\boxed{D}"), plain) == 0.0


def test_blend_rows_without_a_dataset_field_get_their_domain_from_their_fields():
    with_ds, without = load("nemotron_blend.jsonl"), load("nemotron_no_dataset.jsonl")
    assert [r["domain"] for r in without] == ["math", "math", "science", "science", "code", "if"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source"} for r in rows]
    assert strip(without) == strip(with_ds)
    assert {r["source"] for r in without} == {"nemotron/math", "nemotron/science", "nemotron/code", "nemotron/if"}
    if_row = next(r for r in without if r["domain"] == "if")
    assert grade(think("apple pear plum"), if_row) == 1.0 and grade(think("apple, pear, plum"), if_row) == 0.0


GPQA_CSV = os.path.join(REAL, "gpqa")


def test_gpqa_hub_csv_builder_keeps_answers_pandas_reads_as_na():
    """A Hub id that is a csv dataset goes through datasets' csv builder, as a folder given to load_dataset does.
    With pandas' defaults the answers "None", "NA", "N/A" come back null; load_dataset_as_text keeps them."""
    import datasets
    raw = datasets.load_dataset(GPQA_CSV, split="train")
    assert raw[0]["Correct Answer"] is None and raw[1]["Incorrect Answer 2"] is None   # the failure it fixes
    records = loaders.load_dataset_as_text(GPQA_CSV, None, "train", False)
    rows = [data.convert_gpqa(loaders._drop_nulls(r), f"gpqa row {n}") for n, r in enumerate(records, 1)]
    first = dict(re.findall(r"^([A-D])\. (.+)$", rows[0]["prompt"][0]["content"], re.M))
    assert first[rows[0]["answer"]] == "None"
    second = dict(re.findall(r"^([A-D])\. (.+)$", rows[1]["prompt"][0]["content"], re.M))
    assert sorted(second.values()) == ["0", "1", "N/A", "NA"] and second[rows[1]["answer"]] == "0"
    wrong = next(letter for letter in "ABCD" if letter != rows[0]["answer"])
    assert grade(think(f"Answer: {rows[0]['answer']}"), rows[0]) == 1.0
    assert grade(think(f"Answer: {wrong}"), rows[0]) == 0.0
    # the folder (and its csv file) read here directly give the same rows
    assert load("gpqa") == load("gpqa/gpqa_diamond.csv") == rows


def test_mmlu_redux_snapshot_folder_keeps_every_question_with_corrected_answers():
    """The Hub snapshot: one folder per subject and a README of per-subject configs; the folder is all subjects."""
    rows = load("mmlu-redux-2.0")
    assert len(rows) == 3 and {r["domain"] for r in rows} == {"science"}
    planet, star, virus = rows
    assert planet["answer"] == "C" and star["answer"] == "A"   # wrong_groundtruth: the annotators' correct_answer
    assert virus["answer"] == "B"                              # a flagged row is kept with its answer
    assert grade(think("Answer: A"), star) == 1.0 and grade(think("Answer: B"), star) == 0.0
    assert [r["id"] for r in load("mmlu-redux-2.0/virology")] == [virus["id"]]


# ----------------------------------------------------------------------------- errors and entry points

def test_unknown_record_format_is_one_line_naming_file_keys_and_formats(tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"text": "hello", "label": 3}\n')
    with pytest.raises(ValueError) as e:
        data.load(str(tmp_path / "odd.jsonl"), ["math"], "train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("odd.jsonl line 1: unknown record format")
    assert "keys found: label, text" in msg
    for fmt in ("rows", "nemotron", "livecodebench", "gpqa", "ifeval", "mmlu_redux", "hle", "aime"):
        assert fmt in msg


def test_train_py_reads_blend_rows_without_a_dataset_field(tmp_path):
    """Before the fix: 'skipped ... None (6)', then 'no training rows'. Parsed and loaded, then stopped at the
    model (a path that does not exist), so no model work is done."""
    r = subprocess.run([sys.executable, "train.py", "--data", real("nemotron_no_dataset.jsonl"), "--domains",
                        "math,code,science,if", "--model", str(tmp_path / "no-model"), "--out-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no training rows" not in r.stderr and "skipped" not in r.stderr, r.stderr[-2000:]
    assert "no-model" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("spec", ["stream:{REAL}/aime24.jsonl", "{REAL}/code_generation_lite",
                                  "stream:{REAL}/mmlu-redux-2.0"])
def test_analyze_eval_takes_every_form_train_py_takes(spec, tmp_path):
    import analyze
    spec = spec.format(REAL=REAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benches = analyze.load_benchmarks([f"b={spec}"], list(data.DOMAINS), None, 0)
    assert benches["b"] == load(spec.replace("stream:", "").removeprefix(REAL + "/"))
    # a saved dataset with @split, a form parse_spec resolves before any file check
    import datasets
    datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}]).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": datasets.load_from_disk(str(tmp_path / "saved"))}).save_to_disk(str(tmp_path / "dd"))
    assert [r["answer"] for r in analyze.load_benchmarks([f"{tmp_path}/dd@test"], ["math"], None, 0)["dd@test"]] == ["2"]


def test_analyze_eval_sends_a_hub_id_to_the_loader(monkeypatch):
    """A Hub id is no longer refused as 'no file': it reaches datasets (offline here, so its error is shown)."""
    import analyze
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(analyze.UserError) as e:
        analyze.load_benchmarks(["aime=fakeorg/absent-aime"], ["math"], None, 0)
    assert "no file" not in str(e.value) and "not in the local HF cache" in str(e.value)


# ----------------------------------------------------------------------------- data/README.md's table

def readme_benchmarks():
    text = open(os.path.join(ROOT, "data", "README.md")).read()
    table = text[text.index("## The paper's benchmarks and the blend"):].split("\n## ")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_data_readme_lists_the_nine_benchmarks_and_the_blend():
    assert len(readme_benchmarks()) == 10


@pytest.mark.parametrize("line", readme_benchmarks(), ids=lambda line: line[0])
def test_data_readme_specs(line):
    """Each line's spec has the form it says, and its fixture (the source's real schema) loads as the line says:
    the domains, and for LiveCodeBench the date window."""
    benchmark, spec, _, domains, _, fixture = line
    first = re.search(r"`([^`]+)`", spec)[1]
    name, _, source = first.rpartition("=") if "=" in first and not first.startswith("--") else ("", "", first)
    if source.startswith("--data "):
        source = source.removeprefix("--data ")
    path, config, split, _ = loaders.parse_spec(source)
    if source.startswith("DIR"):
        assert "DIR" in spec and "hf download" in spec or benchmark.startswith("Nemotron"), line
    else:   # a Hub id: org/name[:config][@split]
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", path) and (config, split) == (
            re.search(r":(\w+)", source)[1] if ":" in source else None, source.split("@")[1] if "@" in source else None)
    rows = load(os.path.normpath(fixture.strip("`")))
    want = set(re.findall(r"\b(math|code|science|if)\b", domains))
    assert {r["domain"] for r in rows} == want, (line, rows)
    if window := re.search(r"--since (\S+) --until ([\d-]+)", spec):
        kept = data.date_window(rows, window[1], window[2])
        assert kept and len(kept) < len(rows)
        assert all(window[1] <= r["contest_date"][:10] < window[2] for r in kept)
