import base64
import contextlib
import csv
import gzip
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
import zlib
from fractions import Fraction

import pytest

import data
from data.embedded import IF_IDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GENERATED = ["math", "science", "if"]  # code eval is HumanEval + generated, tested on its own


def fixture(name):
    return os.path.join(FIXTURES, name)


def _text(row):
    return row["prompt"][-1]["content"]


# ----------------------------------------------------------------------------- embedded rows

@pytest.mark.parametrize("domain", data.DOMAINS)
def test_embedded_is_deterministic_and_seeded(domain):
    a = data.embedded(domain, "train", seed=0)
    assert a == data.embedded(domain, "train", seed=0)
    assert [r["id"] for r in a] != [r["id"] for r in data.embedded(domain, "train", seed=1)]


@pytest.mark.parametrize("domain,difficulty", [("math", 0), ("math", 1), ("math", 2), ("math", 3),
                                               ("code", 1), ("science", 1), ("if", 1)])
def test_train_and_eval_never_share_a_problem(domain, difficulty):
    eval_texts = {_text(r) for s in (0, 1) for r in data.embedded(domain, "eval", seed=s, difficulty=difficulty)}
    for seed in (0, 1, 2):
        train = data.embedded(domain, "train", seed=seed, difficulty=difficulty)
        assert not eval_texts & {_text(r) for r in train}


@pytest.mark.parametrize("domain", data.DOMAINS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_embedded_row_follows_the_schema(domain, split):
    rows = data.embedded(domain, split)
    assert len(rows) == {"train": 300, "eval": 200 if domain == "code" else 100}[split]
    assert len({r["id"] for r in rows}) == len(rows) and len({_text(r) for r in rows}) == len(rows)
    for r in rows:
        assert data.validate_row(r, "embedded") is r
        assert r["domain"] == domain and isinstance(r["reference"], str) and r["reference"]
        assert r["source"] in ("embedded/" + domain, "humaneval")


def test_sizes_follow_n():
    assert len(data.embedded("science", "eval", n=7)) == 7
    assert len(data.embedded("code", "eval", n=20)) == 20
    assert len(data.embedded("code", "eval", n=170)) == 170
    assert data.embedded("math", "train", n=5) == data.embedded("math", "train", n=10)[:5]


def test_math_difficulty_0_is_single_digit_arithmetic():
    train, evals = data.embedded("math", "train", difficulty=0), data.embedded("math", "eval", difficulty=0)
    assert len(train) + len(evals) == 110  # every a+b and a-b with single-digit operands and result
    for r in train + evals:
        m = re.fullmatch(r"(\d)([+-])(\d)=", _text(r))
        assert m, _text(r)
        a, op, b = int(m[1]), m[2], int(m[3])
        assert r["answer"] == r["reference"] == str(a + b if op == "+" else a - b)
        assert len(r["answer"]) == 1


def test_math_answers_are_right():
    """Recompute every answer whose question is plain arithmetic or a linear equation."""
    checked = 0
    for difficulty in (1, 2, 3):
        for r in data.embedded("math", "train", difficulty=difficulty) + data.embedded("math", "eval", difficulty=difficulty):
            q = _text(r)
            assert r["reference"].endswith(f"\\boxed{{{r['answer']}}}.")
            if m := re.match(r"What is ([\d+\-*/() ]+)\?", q):
                expr = re.sub(r"(\d+)/(\d+)", r"Fraction(\1, \2)", m[1])
                assert eval(expr, {"Fraction": Fraction}) == Fraction(r["answer"]), q
            elif m := re.match(r"Solve for x: (\d+)x ([+-]) (\d+) = (-?\d+)", q):
                a, sign, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                assert a * int(r["answer"]) + (b if sign == "+" else -b) == c, q
            elif m := re.match(r"What is (\d+) times (\d+)\?", q):
                assert int(m[1]) * int(m[2]) == int(r["answer"])
            elif m := re.match(r"What is the remainder when (\d+) is divided by (\d+)\?", q):
                assert int(m[1]) % int(m[2]) == int(r["answer"])
            else:
                continue
            checked += 1
    assert checked > 300


def test_math_difficulty_out_of_range():
    with pytest.raises(ValueError, match="difficulty must be 0..3"):
        data.embedded("math", "train", difficulty=4)


def _run_program(program: str, stdin: str) -> str:
    out, old_stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            exec(program, {"__name__": "__main__"})
    finally:
        sys.stdin = old_stdin
    return out.getvalue()


def test_code_references_pass_their_tests():
    """Run every reference (generated ones and all 164 HumanEval canonical solutions) against its tests,
    in this process: a cross-check of the generator, independent of the sandboxed verifier."""
    rows = data.embedded("code", "train") + data.embedded("code", "eval")
    assert sum(r["source"] == "humaneval" for r in rows) == 164
    kinds = set()
    for r in rows:
        program = re.fullmatch(r"```python\n(.*)\n```", r["reference"], re.S)[1]
        tests = r["tests"]
        kinds.add(tests["kind"])
        if tests["kind"] == "stdio":
            for stdin, expected in zip(tests["inputs"], tests["outputs"]):
                assert _run_program(program, stdin) == expected, (r["id"], stdin)
        else:
            exec(program + "\n" + tests["code"] + f"\ncheck({tests['entry_point']})\n", {})
    assert kinds == {"stdio", "assert"}
    # A wrong program fails: the tests do constrain the answer.
    r = next(r for r in rows if r["tests"]["kind"] == "stdio")
    assert any(_run_program("print(0)", s) != o for s, o in zip(r["tests"]["inputs"], r["tests"]["outputs"]))


ELEMENT_SYMBOLS = {"Sodium": "Na", "Iron": "Fe", "Gold": "Au", "Potassium": "K", "Chlorine": "Cl", "Lead": "Pb"}


def test_science_rows_are_well_formed_mcqs():
    rows = data.embedded("science", "train") + data.embedded("science", "eval")
    letters = []
    for r in rows:
        options = re.findall(r"^([A-D])\. (.+)$", _text(r), re.M)
        assert [o[0] for o in options] == list("ABCD")
        assert len({o[1] for o in options}) == 4
        assert r["reference"] == f"Answer: {r['answer']}"
        letters.append(r["answer"])
        chosen = dict(options)[r["answer"]]
        if m := re.match(r"What is the chemical symbol of (\w+)\?", r["prompt"][0]["content"].split("\n\n")[1]):
            if m[1] in ELEMENT_SYMBOLS:
                assert chosen == ELEMENT_SYMBOLS[m[1]]
        if m := re.search(r"How many (\w+) are in ([\d.,]+) (\w+)\?", _text(r)):
            to_base = {"km": 1000, "m": 1, "cm": 0.01, "mm": 0.001, "kg": 1000, "g": 1, "mg": 0.001,
                       "h": 3600, "min": 60, "s": 1, "L": 1000, "mL": 1}
            expected = float(m[2].replace(",", "")) * to_base[m[3]] / to_base[m[1]]
            assert float(chosen.replace(",", "")) == pytest.approx(expected, rel=1e-3)
        if m := re.search(r"force gives a (\d+) kg mass an acceleration of (\d+) m/s", _text(r)):
            assert chosen == f"{int(m[1]) * int(m[2]):,} N"
    for letter in "ABCD":  # the shuffle spreads the right answer over the letters
        assert letters.count(letter) > len(letters) / 8


def test_if_references_satisfy_their_instructions():
    """Independent spot checks of the instructions whose meaning is unambiguous."""
    rows = data.embedded("if", "train") + data.embedded("if", "eval")
    seen = set()
    for r in rows:
        ref = r["reference"]
        assert r["instruction_id_list"] and set(r["instruction_id_list"]) <= set(IF_IDS)
        assert len(set(r["instruction_id_list"])) == len(r["instruction_id_list"])
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            seen.add(iid)
            if iid == "punctuation:no_comma":
                assert "," not in ref
            elif iid == "keywords:existence":
                assert all(k in ref.lower() for k in kw["keywords"])
            elif iid == "keywords:forbidden_words":
                assert not any(re.search(rf"\b{w}\b", ref, re.I) for w in kw["forbidden_words"])
            elif iid == "keywords:frequency":
                assert ref.lower().count(kw["keyword"]) >= kw["frequency"]
            elif iid == "startend:end_checker":
                assert ref.rstrip('"').endswith(kw["end_phrase"])
            elif iid == "detectable_format:json_format":
                json.loads(ref)
            elif iid == "change_case:english_lowercase":
                assert ref == ref.lower()
            elif iid == "combination:repeat_prompt":
                assert ref.startswith(kw["prompt_to_repeat"]) and _text(r).startswith(kw["prompt_to_repeat"])
            elif iid == "detectable_format:title":
                assert re.search(r"<<[^\n]+>>", ref)
            elif iid == "detectable_format:number_bullet_lists":
                assert len(re.findall(r"^\* ", ref, re.M)) == kw["num_bullets"]
            elif iid == "length_constraints:number_words":
                n = len(re.findall(r"\w+", ref))
                assert n >= kw["num_words"] if kw["relation"] == "at least" else n < kw["num_words"]
            elif iid == "startend:quotation":
                assert ref.startswith('"') and ref.endswith('"')
            elif iid == "combination:two_responses":
                a, b = ref.split("******")
                assert a.strip() and b.strip() and a.strip() != b.strip()
            elif iid == "length_constraints:number_paragraphs":
                assert len(ref.split("\n***\n")) == kw["num_paragraphs"]
    assert seen == set(IF_IDS)  # every instruction id is used somewhere


# ----------------------------------------------------------------------------- load()

def test_load_embedded_and_bad_arguments():
    rows = data.load("embedded", ["math", "code"], "train", difficulty=0)
    assert {r["domain"] for r in rows} == {"math", "code"}
    assert rows[:90] == data.embedded("math", "train", difficulty=0)
    with pytest.raises(ValueError, match="unknown domain.*'maths'.*valid domains: math, code, science, if"):
        data.load("embedded", ["maths"], "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.load("embedded", ["math"], "test")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load("nope.jsonl", ["math"], "train")


def test_row_schema_files_jsonl_gz_and_domain_filter(tmp_path):
    rows = data.load(fixture("rows.jsonl"), list(data.DOMAINS), "train")
    assert [r["id"] for r in rows] == ["m1", "s1", "c1", "i1"]
    assert [r["id"] for r in data.load(fixture("rows.jsonl"), ["code", "if"], "eval")] == ["c1", "i1"]
    gz = tmp_path / "rows.jsonl.gz"
    with open(fixture("rows.jsonl"), "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    assert data.read_jsonl(str(gz)) == rows


@pytest.mark.parametrize("line,message", [
    ('{"id": "x", "domain": "math", "prompt": "2+2", "answer": "4", "source": "s"}',
     "field 'prompt' must be a list of chat messages"),
    ('{"id": "x", "domain": "math", "prompt": [{"role": "bot", "content": "hi"}], "answer": "4", "source": "s"}',
     "field 'prompt' must be a list of chat messages"),
    ('{"id": "x", "domain": "maths", "prompt": [{"role": "user", "content": "hi"}], "source": "s"}',
     "field 'domain' must be one of math, code, science, if"),
    ('{"id": "x", "domain": "math", "prompt": [{"role": "user", "content": "hi"}], "source": "s"}',
     "field 'answer' must be a non-empty string"),
    ('{"id": "x", "domain": "science", "prompt": [{"role": "user", "content": "hi"}], "answer": "AB", "source": "s"}',
     "field 'answer' must be one capital letter"),
    ('{"id": "x", "domain": "code", "prompt": [{"role": "user", "content": "hi"}], "tests": {"kind": "stdio", '
     '"inputs": ["1"], "outputs": []}, "source": "s"}', "field 'tests' of kind stdio"),
    ('{"id": "x", "domain": "if", "prompt": [{"role": "user", "content": "hi"}], "instruction_id_list": ["a:b"], '
     '"kwargs": [], "source": "s"}', "field 'kwargs' must be a list of dicts, one per instruction id"),
    ('{"domain": "math", "prompt": [{"role": "user", "content": "hi"}], "answer": "4", "source": "s"}',
     "field 'id' must be a non-empty string"),
    ('{"id": "x", "domain": "math", "prompt": [', "invalid JSON"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bench.jsonl"
    good = open(fixture("rows.jsonl")).readline()
    path.write_text(good + "\n" + good + line + "\n")  # the blank line still counts: the bad row is line 4
    with pytest.raises(ValueError, match=re.escape(f"bench.jsonl line 4: ") + ".*" + re.escape(message)):
        data.load(str(path), list(data.DOMAINS), "train")


def test_unknown_file_type_and_format(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load(str(tmp_path / "rows.txt"), ["math"], "train")
    (tmp_path / "odd.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match="odd.jsonl line 1: unknown record format"):
        data.load(str(tmp_path / "odd.jsonl"), ["math"], "train")


# ----------------------------------------------------------------------------- the `datasets` path

def hand_records(path):
    """The hand-written reader data/loaders.py had before it read through `datasets`: (number, record) pairs,
    one JSON record per line (blank lines counted) or one csv.DictReader row per record (the header is line 1)."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(enumerate(csv.DictReader(f), 2))
    with open(path, encoding="utf-8") as f:
        return [(n, json.loads(line)) for n, line in enumerate(f, 1) if line.strip()]


def hand_rows(path, domains, seed=0):
    records, name = hand_records(path), os.path.basename(path)
    fmt = data.detect_format(records[0][1])
    if fmt == "nemotron":
        return data.convert_nemotron(records, domains, name)
    rows = [data.validate_row(r, name) if fmt == "rows" else data.CONVERTERS[fmt](r, name, seed=seed)
            for _, r in records]
    return [r for r in rows if r is not None and r["domain"] in domains]


@pytest.mark.parametrize("name", ["rows.jsonl", "nemotron_blend.jsonl", "aime.jsonl", "gpqa_diamond.csv",
                                  "ifeval.jsonl", "livecodebench.jsonl", "mmlu_redux.jsonl"])
def test_datasets_reader_gives_the_rows_of_the_hand_written_one(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the blend's skipped datasets, MMLU-Redux's flagged rows
        want = hand_rows(fixture(name), list(data.DOMAINS), seed=3)
        got = data.load(fixture(name), list(data.DOMAINS), "eval", seed=3)
    assert got == want and len(got) >= 2


def arrow_table(path):
    """A jsonl file as one Arrow table, every row with every key (datasets' json builder; Dataset.from_list
    would take the keys of the first row only)."""
    import datasets
    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_every_local_form_gives_the_same_rows(tmp_path):
    """The row-schema fixture, whose rows have different keys per domain, as parquet, arrow, a saved dataset
    (one split, and several with @split), a directory of jsonl files, gzip, and streamed: always the same rows.
    The Arrow forms hold every key in every row (None where a row had none); the reader drops them again."""
    import datasets
    want = data.load(fixture("rows.jsonl"), list(data.DOMAINS), "train")
    table = arrow_table(fixture("rows.jsonl"))
    assert table[0]["tests"] is None   # what the reader has to undo
    table.to_parquet(str(tmp_path / "rows.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    os.makedirs(tmp_path / "folder")
    shutil.copy(fixture("rows.jsonl"), tmp_path / "folder" / "train.jsonl")
    with open(fixture("rows.jsonl"), "rb") as f, gzip.open(tmp_path / "rows.jsonl.gz", "wb") as g:
        g.write(f.read())
    arrow = next(f for f in os.listdir(tmp_path / "saved") if f.endswith(".arrow"))
    shutil.copy(tmp_path / "saved" / arrow, tmp_path / "rows.arrow")
    for spec in ["rows.parquet", "rows.arrow", "saved", "saved_dict@train", "folder", "rows.jsonl.gz",
                 "stream:rows.jsonl.gz", "stream:rows.parquet", "stream:folder"]:
        path = spec.replace("stream:", "stream:" + str(tmp_path) + os.sep) if spec.startswith("stream:") \
            else str(tmp_path / spec)
        assert data.load(path, list(data.DOMAINS), "train") == want, spec
    assert [r["id"] for r in data.load(str(tmp_path / "saved_dict@test"), list(data.DOMAINS), "eval")] == ["m1"]
    with pytest.raises(ValueError, match="has splits train, test: choose one, e.g. .*saved_dict@train"):
        data.load(str(tmp_path / "saved_dict"), ["math"], "train")


def test_malformed_row_in_a_parquet_file_names_the_row_and_field(tmp_path):
    rows = [json.loads(line) for line in open(fixture("rows.jsonl"))]
    rows[2]["tests"] = {"kind": "stdio", "inputs": ["1"], "outputs": []}
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    arrow_table(tmp_path / "bad.jsonl").to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match=re.escape("bad.parquet row 3: field 'tests' of kind stdio")):
        data.load(str(tmp_path / "bad.parquet"), list(data.DOMAINS), "train")


@pytest.mark.parametrize("spec,parsed", [
    ("nvidia/Nemotron-3-Nano-RL-Training-Blend", ("nvidia/Nemotron-3-Nano-RL-Training-Blend", None, None, False)),
    ("edinburgh-dawg/mmlu-redux-2.0:astronomy@test", ("edinburgh-dawg/mmlu-redux-2.0", "astronomy", "test", False)),
    ("stream:google/IFEval@train", ("google/IFEval", None, "train", True)),
    ("out/blend.jsonl", ("out/blend.jsonl", None, None, False)),      # a file that does not exist is still a file
    ("./org/name", ("./org/name", None, None, False)),
    ("blend.parquet", ("blend.parquet", None, None, False)),
])
def test_parse_spec(spec, parsed):
    assert data.loaders.parse_spec(spec) == parsed


def _run_data_load(spec, env):
    code = f"import data, json; print(json.dumps(data.load({spec!r}, ['math', 'code', 'science', 'if'], 'train')))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_hub_id_offline_loads_from_the_hf_cache(tmp_path):
    """A Hub dataset loaded once is read back offline from the HF cache. The cache entry is made here as
    datasets 5.2.0 (pinned) leaves one for a Hub dataset: <cache>/<org>___<name>/<config>/<version>/<hash>/ with
    <name>-<split>.arrow and dataset_info.json, which is where its offline lookup finds it."""
    import datasets
    arrow_table(fixture("rows.jsonl")).to_parquet(str(tmp_path / "rows.parquet"))
    builder = datasets.load_dataset_builder("parquet", data_files={"train": str(tmp_path / "rows.parquet")},
                                            cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    prepared = builder.cache_dir   # .../parquet/<config>/<version>/<hash>
    config_dir = os.path.dirname(os.path.dirname(prepared))
    target = tmp_path / "cache" / "fakeorg___rows" / "default"
    shutil.copytree(config_dir, target)
    entry = target / os.path.relpath(prepared, config_dir)
    os.rename(entry / "parquet-train.arrow", entry / "rows-train.arrow")
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = _run_data_load("fakeorg/rows", env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == data.load(fixture("rows.jsonl"), list(data.DOMAINS), "train")


def test_hub_id_not_in_the_cache_fails_offline_with_one_clear_line(tmp_path):
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "train.py", "--domains", "math", "--data", "fakeorg/absent",
                        "--out-dir", str(tmp_path)], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: --data fakeorg/absent: not in the local HF cache") and \
        "HF_DATASETS_OFFLINE=1" in last, r.stderr[-2000:]
    assert not (tmp_path / "math").exists()


# ----------------------------------------------------------------------------- Nemotron RL blend

def test_nemotron_blend_converter():
    with pytest.warns(UserWarning, match=r"skipped .*structured_outputs \(1\), nano_v3_sft_profiled_workbench \(1\)"):
        rows = data.load(fixture("nemotron_blend.jsonl"), list(data.DOMAINS), "train")
    by_id = {r["id"]: r for r in rows}
    assert [r["domain"] for r in rows] == ["math"] * 3 + ["science"] * 2 + ["if"] * 2 + ["code"] * 2
    assert by_id["dapo-0001"]["answer"] == "5" and by_id["dapo-0001"]["source"] == "nemotron/dapo17k"
    assert by_id["dapo-0002"]["prompt"][0] == {"role": "system", "content": "You are a careful mathematician."}
    assert by_id["sky-0001"]["answer"] == "\\frac{1}{3}"  # a JSON list of answers: the first one
    assert by_id["mcqa-0001"]["answer"] == "B" and by_id["mcqa-0002"]["answer"] == "E"
    assert by_id["mcqa-0002"]["prompt"][0]["role"] == "system"  # "developer" is the Responses API's system
    assert by_id["if-0001"]["kwargs"] == [{}, {}]  # null kwargs and null values dropped
    assert by_id["if-0002"]["kwargs"] == [{"relation": "at least", "num_words": 40}, {"keywords": ["moss", "fern"]}]
    assert by_id["if-0002"]["prompt"] == [{"role": "user", "content": "Describe a forest in at least 40 words and "
                                                                      "include the keywords moss and fern."}]
    assert by_id["cc-0001"]["tests"] == {"kind": "stdio", "inputs": ["2 3\n", "-4 5\n"], "outputs": ["6\n", "-20\n"]}
    assert _run_program("a, b = map(int, input().split())\nprint(a * b)", "-4 5\n") == "-20\n"
    with pytest.warns(UserWarning):
        only_code = data.load(fixture("nemotron_blend.jsonl"), ["code"], "train")
    assert [r["id"] for r in only_code] == ["cc-0001", "cc-0002"]


def test_nemotron_placeholder_and_malformed_rows(tmp_path):
    placeholder = {"dataset": "nano_v3_sft_profiled_dapo17k", "_hf_placeholder": {"row": 3, "question_template": {}}}
    path = tmp_path / "blend.jsonl"
    path.write_text(json.dumps(placeholder) + "\n")
    with pytest.raises(ValueError, match="blend.jsonl line 1: .*placeholder.*create_nanov3_jsonl.py"):
        data.load(str(path), ["math"], "train")
    assert data.load(str(path), ["code"], "train") == []  # math rows are not read when math is not asked for
    bad = {"dataset": "nano_v3_sft_profiled_comp_coding_50tests", "responses_create_params": {"input": [{"role": "user"}]},
           "verifier_metadata": {"unit_tests": {"inputs": ["1"], "outputs": ["1"]}}}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="line 1: field 'responses_create_params.input' must be a list of chat"):
        data.load(str(path), ["code"], "train")
    bad.update(responses_create_params={"input": "hi"}, verifier_metadata={})
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="line 1: field 'verifier_metadata.unit_tests'"):
        data.load(str(path), ["code"], "train")


# ----------------------------------------------------------------------------- eval benchmarks

def test_aime():
    rows = data.load(fixture("aime.jsonl"), ["math"], "eval")
    assert [(r["id"], r["answer"], r["source"]) for r in rows] == [("2024-I-1", "24", "aime"), ("2024-I-2", "9", "aime")]
    assert _text(rows[0]).startswith("Find the remainder when 2^{10}") and "\\boxed{}" in _text(rows[0])


def test_gpqa_shuffles_with_the_seed_and_points_at_the_correct_answer():
    orders = set()
    for seed in range(6):
        rows = data.load(fixture("gpqa_diamond.csv"), ["science"], "eval", seed=seed)
        assert rows == data.load(fixture("gpqa_diamond.csv"), ["science"], "eval", seed=seed)
        for r, correct in zip(rows, ["newton", "DNA"]):
            options = dict(re.findall(r"^([A-D])\. (.+)$", _text(r), re.M))
            assert options[r["answer"]] == correct and len(options) == 4
        orders.add(rows[0]["answer"])
    assert len(orders) > 1
    assert "including humans?" in _text(rows[1])  # a multi-line csv cell survives
    assert rows[0]["id"] == "rec1"


def test_ifeval():
    rows = data.load(fixture("ifeval.jsonl"), ["if"], "eval")
    assert rows[0]["id"] == "1000" and rows[0]["kwargs"] == [{}, {"num_highlights": 3},
                                                            {"relation": "at least", "num_words": 300}]
    assert rows[1]["instruction_id_list"] == ["startend:end_checker"]
    assert rows[1]["kwargs"] == [{"end_phrase": "Any other questions?"}]


def test_mmlu_redux_maps_index_to_letter_and_skips_flagged_rows():
    with pytest.warns(UserWarning, match="skipped 1 MMLU-Redux rows"):
        rows = data.load(fixture("mmlu_redux.jsonl"), ["science"], "eval")
    assert [r["answer"] for r in rows] == ["B", "C"]
    assert "B. mitochondrion" in _text(rows[0])


def test_livecodebench_stdin_and_functional():
    stdin_row, func_row = data.load(fixture("livecodebench.jsonl"), ["code"], "eval")
    # public + decoded private (base64, zlib, pickle of a JSON string) tests
    assert stdin_row["tests"] == {"kind": "stdio", "inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]}
    assert func_row["tests"]["kind"] == "assert" and func_row["tests"]["entry_point"] == "Solution"
    good = ("from typing import List\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
            "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
            "                return [seen[target - x], i]\n            seen[x] = i\n")
    exec(good + func_row["tests"]["code"] + "\ncheck(Solution)\n", {})
    wrong = good.replace("[seen[target - x], i]", "[i, seen[target - x]]")
    with pytest.raises(AssertionError):
        exec(wrong + func_row["tests"]["code"] + "\ncheck(Solution)\n", {})


def test_livecodebench_refuses_a_malicious_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    record = json.loads(open(fixture("livecodebench.jsonl")).readline())
    record["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    path = tmp_path / "lcb.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="lcb.jsonl line 1: field 'private_test_cases' could not be decoded"):
        data.load(str(path), ["code"], "eval")
