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
    a = data.embedded(domain, "train", n=200, seed=0)
    assert a == data.embedded(domain, "train", n=200, seed=0)
    assert [r["id"] for r in a] != [r["id"] for r in data.embedded(domain, "train", n=200, seed=1)]


@pytest.mark.parametrize("domain", data.DOMAINS)
def test_train_and_eval_never_share_a_problem(domain):
    eval_texts = {_text(r) for s in (0, 1) for r in data.embedded(domain, "eval", seed=s)}
    for seed in (0, 1, 2):
        assert not eval_texts & {_text(r) for r in data.embedded(domain, "train", seed=seed)}
    # nor do the SFT demonstrations (sft.py trains on them)
    assert not eval_texts & {_text(e) for e in data.sft_examples(domain, 2000, seed=0)}


@pytest.mark.parametrize("domain", data.DOMAINS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_embedded_row_follows_the_schema(domain, split):
    rows = data.embedded(domain, split)
    assert len(rows) == {"train": 800, "eval": 200}[split]
    assert len({r["id"] for r in rows}) == len(rows) and len({_text(r) for r in rows}) == len(rows)
    for r in rows:
        assert data.validate_row(r, "embedded") is r
        assert r["domain"] == domain and r["source"] == "embedded/" + domain
        assert re.fullmatch(r"<think>[^<]+</think>.+", r["reference"], re.S), r["reference"]


def test_sizes_follow_n():
    assert len(data.embedded("science", "eval", n=7)) == 7
    assert data.embedded("math", "train", n=5) == data.embedded("math", "train", n=10)[:5]
    assert len(data.humaneval_rows()) == 164


def _steps(plan: str) -> list[tuple[str, int]]:
    return [(e, int(v)) for e, v in re.findall(r"([\d+\-*/]+)=(\d+)", plan)]


def test_math_answers_and_plans_are_right():
    """Recompute every answer from the question's own numbers (one formula per template, written here), and
    check the plan's arithmetic step by step with Python's."""
    formulas = [
        (r"has (\d+) \w+, gets (\d+) more and gives away (\d+)", lambda a, b, c: a + b - c),
        (r"buys (\d+) boxes of (\d+) \w+ and gives away (\d+)", lambda a, b, c: a * b - c),
        (r"has (\d+) \w+\. \w+ has (\d+) more than", lambda a, b: a + (a + b)),
        (r"shares (\d+) \w+ equally among (\d+) friends, and each friend gives away (\d+)", lambda p, b, c: p // b - c),
        (r"has (\d+) \w+\. It sells (\d+) in the morning and (\d+)", lambda a, b, c: a - b - c),
        (r"What is (\d+) \+ (\d+) \* (\d+)\?", lambda a, b, c: a + b * c),
        (r"What is \((\d+) \+ (\d+)\) \* (\d+)\?", lambda a, b, c: (a + b) * c),
    ]
    seen = set()
    for r in data.embedded("math", "train") + data.embedded("math", "eval"):
        q = _text(r)
        assert q.endswith("Put the final answer in \\boxed{}.")
        hits = [(i, f(*map(int, m.groups()))) for i, (pattern, f) in enumerate(formulas) if (m := re.search(pattern, q))]
        assert len(hits) == 1, q
        seen.add(hits[0][0])
        assert int(r["answer"]) == hits[0][1] >= 0, q
        plan, answer = re.fullmatch(r"<think>(.*)</think>\\boxed\{(\d+)\}", r["reference"]).groups()
        steps = _steps(plan)
        assert len(steps) == 2 and all(eval(e) == v for e, v in steps) and steps[-1][1] == int(answer), r["reference"]
    assert seen == set(range(len(formulas)))


def test_code_references_pass_their_tests_and_the_bugs_fail_them():
    """Run each reference in this process (independent of the sandboxed verifier), and each family's bug (the
    hasty teacher's program) against the same asserts: the tests must tell them apart."""
    families = set()
    for r in data.embedded("code", "train", n=300) + data.embedded("code", "eval"):
        program = re.fullmatch(r"<think>.*</think>```python\n(.*)```", r["reference"], re.S)[1]
        assert r["tests"]["kind"] == "assert" and r["tests"]["entry_point"] == "f"
        exec(program + r["tests"]["code"] + "check(f)\n", {})
        families.add(re.sub(r"\d+|'\w'", "_", _text(r).split(" that ")[1])[:30])
    assert len(families) == 8
    hasty = [e for e in data.sft_examples("code", 300, seed=0) if e["teacher"] == "hasty"]
    assert len(hasty) > 100
    for e in hasty:
        bug = re.fullmatch(r"<think></think>```python\n(.*)```", e["completion"], re.S)[1]
        with pytest.raises(AssertionError):
            exec(bug + e["row"]["tests"]["code"] + "check(f)\n", {})


def test_science_answers_point_at_the_right_option():
    """Facts checked against a table written here (from the periodic table); physics answers recomputed from
    the question and placed in their range."""
    facts = {"Hydrogen": ("H", "nonmetal", "gas", "1"), "Helium": ("He", "noble gas", "gas", "1"),
             "Sodium": ("Na", "metal", "solid", "3"), "Silicon": ("Si", "metalloid", "solid", "3"),
             "Chlorine": ("Cl", "nonmetal", "gas", "3"), "Bromine": ("Br", "nonmetal", "liquid", "4"),
             "Iron": ("Fe", "metal", "solid", "4"), "Krypton": ("Kr", "noble gas", "gas", "4")}
    by_symbol = {v[0]: k for k, v in facts.items()}
    physics = {r"travels (\d+) km in (\d+) hours": lambda d, t: d / t, r"gives a (\d+) kg mass an acceleration of (\d+)":
               lambda m, a: m * a, r"mass of (\d+) g and a volume of (\d+) cm": lambda m, v: m / v,
               r"current of (\d+) A flows through a (\d+) ohm": lambda i, r: i * r, r"draws (\d+) A at (\d+) V": lambda i, v: i * v,
               r"frequency of (\d+) Hz and a wavelength of (\d+) m": lambda f, w: f * w}
    rows = data.embedded("science", "train") + data.embedded("science", "eval")
    assert len(data.embedded("science", "eval")) >= 100
    checked, letters = {"fact": 0, "physics": 0}, []
    for r in rows:
        question, options = _text(r).split("\n\n")[1], dict(re.findall(r"^([A-D])\. (.+)$", _text(r), re.M))
        assert list(options) == list("ABCD") and len(set(options.values())) == 4
        assert r["reference"].endswith(f"Answer: {r['answer']}")
        chosen = options[r["answer"]]
        letters.append(r["answer"])
        element = next((e for e in facts if re.search(rf"\b{e}\b", question)), None)
        if m := re.search(r"symbol (\w+)", question):
            element = by_symbol.get(m[1])
        if element:
            kind = 1 if "kind" in question or "class" in question or "metal" in question else \
                2 if "room temperature" in question else 3
            assert chosen == facts[element][kind], (question, chosen)
            checked["fact"] += 1
        for pattern, f in physics.items():
            if m := re.search(pattern, question):
                value = f(*map(int, m.groups()))
                if m := re.match(r"under (\d+) ", chosen):
                    assert value < int(m[1]), (question, chosen)
                elif m := re.match(r"(\d+) or more ", chosen):
                    assert value >= int(m[1]), (question, chosen)
                else:
                    low, high = map(int, re.match(r"(\d+) (?:to|or) (\d+) ", chosen).groups())
                    assert low <= value <= high, (question, chosen)
                checked["physics"] += 1
    assert checked["fact"] > 100 and checked["physics"] > 200
    for letter in "ABCD":   # every option is right for some question
        assert letters.count(letter) > len(letters) / 20


def test_if_references_satisfy_their_instructions():
    """Independent spot checks of each instruction the embedded rows use."""
    seen = set()
    for r in data.embedded("if", "train") + data.embedded("if", "eval"):
        ref = r["reference"].split("</think>")[1]
        assert set(r["instruction_id_list"]) <= set(IF_IDS) and len(set(r["instruction_id_list"])) == len(r["kwargs"])
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            seen.add(iid)
            check = {
                "punctuation:no_comma": lambda: "," not in ref,
                "startend:end_checker": lambda: ref.rstrip('"').endswith(kw["end_phrase"]),
                "startend:quotation": lambda: ref.startswith('"') and ref.endswith('"'),
                "detectable_format:title": lambda: re.search(r"<<[^\n]+>>", ref),
                "keywords:existence": lambda: all(k in ref.lower() for k in kw["keywords"]),
                "keywords:forbidden_words": lambda: not any(re.search(rf"\b{w}\b", ref, re.I) for w in kw["forbidden_words"]),
                "detectable_content:postscript": lambda: "P.S." in ref,
                "change_case:capital_word_frequency": lambda: sum(w.isupper() for w in re.findall(r"\b[A-Za-z]+\b", ref)) >= 2,
                "length_constraints:number_words": lambda: len(re.findall(r"\w+", ref)) < kw["num_words"],
                "detectable_format:number_highlighted_sections": lambda: re.search(r"\*[^*\n]+\*", ref),
            }[iid]
            assert check(), (iid, ref)
    assert seen == set(IF_IDS)


@pytest.mark.parametrize("domain", data.DOMAINS)
def test_sft_teachers_careful_right_slip_and_hasty_wrong(domain):
    """The three SFT teachers in their shares; the verifier scores the careful one 1 and the other two 0, and
    only the hasty one skips the plan."""
    from data.embedded import P_HASTY, P_SLIP
    from verifiers import verify_batch
    examples = data.sft_examples(domain, 400, seed=3)
    assert examples == data.sft_examples(domain, 400, seed=3)
    results = verify_batch([e["completion"] for e in examples], [e["row"] for e in examples])
    for e, res in zip(examples, results):
        assert res["reward"] == (1.0 if e["teacher"] == "careful" else 0.0), (e, res)
        assert e["completion"].startswith("<think></think>") == (e["teacher"] == "hasty")
        assert e["prompt"] == e["row"]["prompt"]
        if e["teacher"] == "careful":
            assert e["completion"] == e["row"]["reference"]
    share = {t: sum(e["teacher"] == t for e in examples) / len(examples) for t in ("careful", "slip", "hasty")}
    assert share["hasty"] == pytest.approx(P_HASTY, abs=0.08)
    assert share["slip"] == pytest.approx((1 - P_HASTY) * P_SLIP, abs=0.08)


def _run_program(program: str, stdin: str) -> str:
    out, old_stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            exec(program, {"__name__": "__main__"})
    finally:
        sys.stdin = old_stdin
    return out.getvalue()


# ----------------------------------------------------------------------------- load()

def test_load_embedded_and_bad_arguments():
    rows = data.load("embedded", ["math", "code"], "train")
    assert {r["domain"] for r in rows} == {"math", "code"}
    assert rows[:800] == data.embedded("math", "train")
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
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert last.startswith("train.py: error: --data fakeorg/absent: not in the local HF cache") and \
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


def test_mmlu_redux_maps_index_to_letter_and_keeps_flagged_rows_with_their_corrected_answer():
    rows = data.load(fixture("mmlu_redux.jsonl"), ["science"], "eval")
    assert [r["answer"] for r in rows] == ["B", "C", "A"]   # the third: wrong_groundtruth, correct_answer "A"
    assert "B. mitochondrion" in _text(rows[0])


def test_livecodebench_stdin_and_functional():
    stdin_row, func_row = data.load(fixture("livecodebench.jsonl"), ["code"], "eval")
    # public + decoded private (base64, zlib, pickle of a JSON string) tests
    assert stdin_row["tests"] == {"kind": "stdio", "inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"],
                                  "prelude": "livecodebench"}
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
