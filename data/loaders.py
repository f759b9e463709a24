"""The row schema, its validation, and readers that turn data files into rows.

    from data.loaders import load_file, validate_row
    rows = load_file("train.jsonl", ["math", "code"])       # row schema or Nemotron RL blend
    rows = load_file("gpqa_diamond.csv", ["science"])       # a benchmark file, auto-detected

Formats, detected from the keys of each file's first record (see `detect_format`):
  rows        the row schema itself (data/README.md)
  nemotron    Nemotron-3-Nano RL training blend: `dataset`, `responses_create_params.input`, ...
  aime        problem/question + answer
  gpqa        Question, Correct Answer, Incorrect Answer 1..3 (the GPQA csv columns)
  ifeval      key, prompt, instruction_id_list, kwargs (IFEval; IFBench uses the same shape)
  livecodebench  question_content, public_test_cases, private_test_cases, metadata
  mmlu_redux  question, choices, answer (an index)
File types: .jsonl, .jsonl.gz, .json (a list), .csv, and .parquet when pyarrow is installed.
A file is used whole, whatever split it is loaded for; rows of domains not asked for are dropped.
"""

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import random
import string
import warnings
import zlib

DOMAINS = ("math", "code", "science", "if")
ROLES = ("system", "user", "assistant")

# The Nemotron blend's `dataset` values this project can score. Others (workbench, structured outputs)
# need environments or checkers it does not have: they are skipped and counted in a warning.
NEMOTRON_DOMAINS = {
    "nano_v3_sft_profiled_dapo17k": "math",
    "nano_v3_sft_profiled_skywork_no_omni": "math",
    "nano_v3_sft_profiled_stem_mcqa": "science",
    "nano_v3_sft_profiled_instruction_following": "if",
    "nano_v3_sft_profiled_comp_coding_50tests": "code",
}

MATH_SUFFIX = "\n\nPut the final answer in \\boxed{}."
MCQ_INSTRUCTION = "Answer the following multiple choice question. End with a line of the form 'Answer: X'."


# ----------------------------------------------------------------------------- schema

def validate_row(row, where: str) -> dict:
    """Return `row` if it follows the schema, else raise ValueError naming `where` and the field."""
    def bad(field, problem):
        raise ValueError(f"{where}: field {field!r} {problem}")

    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for field in ("id", "source"):
        if not isinstance(row.get(field), str) or not row[field]:
            bad(field, "must be a non-empty string")
    domain = row.get("domain")
    if domain not in DOMAINS:
        bad("domain", f"must be one of {', '.join(DOMAINS)}, got {domain!r}")
    prompt = row.get("prompt")
    if not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt)):
        bad("prompt", "must be a list of chat messages {'role': 'system'|'user'|'assistant', 'content': str}")
    if domain in ("math", "science"):
        if not isinstance(row.get("answer"), str) or not row["answer"].strip():
            bad("answer", f"must be a non-empty string for a {domain} row")
    if domain == "science" and (len(row["answer"]) != 1 or row["answer"] not in string.ascii_uppercase):
        bad("answer", f"must be one capital letter A-Z for a science row, got {row['answer']!r}")
    if domain == "code":
        _validate_tests(row.get("tests"), bad)
    if domain == "if":
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            bad("instruction_id_list", "must be a non-empty list of strings for an if row")
        if not (isinstance(kwargs, list) and len(kwargs) == len(ids) and all(isinstance(k, dict) for k in kwargs)):
            bad("kwargs", "must be a list of dicts, one per instruction id")
    return row


def _validate_tests(tests, bad) -> None:
    if not isinstance(tests, dict) or tests.get("kind") not in ("stdio", "assert"):
        bad("tests", "must be {'kind': 'stdio', 'inputs', 'outputs'} or {'kind': 'assert', 'code', 'entry_point'}")
    if tests["kind"] == "stdio":
        ins, outs = tests.get("inputs"), tests.get("outputs")
        if not (isinstance(ins, list) and isinstance(outs, list) and ins and len(ins) == len(outs)
                and all(isinstance(s, str) for s in ins + outs)):
            bad("tests", "of kind stdio needs 'inputs' and 'outputs': equal-length non-empty lists of strings")
    elif not (isinstance(tests.get("code"), str) and isinstance(tests.get("entry_point"), str)
              and tests["entry_point"]):
        bad("tests", "of kind assert needs 'code' (str) and 'entry_point' (non-empty str)")


# ----------------------------------------------------------------------------- reading files

def read_records(path: str) -> list[tuple[int, dict]]:
    """(line or row number, record) pairs from a .jsonl[.gz] / .json / .csv / .parquet file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    name = os.path.basename(path)
    if path.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if path.endswith(".gz") else open
        records = []
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append((line_no, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} line {line_no}: invalid JSON ({e.msg})") from None
        return records
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{name}: a .json data file must hold a list of records")
        return list(enumerate(data, 1))
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:  # line numbers count the header as line 1
            return [(i, dict(r)) for i, r in enumerate(csv.DictReader(f), 2)]
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"{name}: reading .parquet needs pyarrow (pip install pyarrow)") from None
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    raise ValueError(f"{name}: unsupported file type; use .jsonl, .jsonl.gz, .json, .csv or .parquet")


def read_jsonl(path: str) -> list[dict]:
    """Rows of a file in the row schema, each validated (errors name the file, line and field)."""
    name = os.path.basename(path)
    return [validate_row(r, f"{name} line {n}") for n, r in read_records(path)]


def detect_format(record: dict) -> str:
    """Which of the formats in the module docstring a record is in, from its keys."""
    keys = set(record) if isinstance(record, dict) else set()
    if {"domain", "prompt"} <= keys:
        return "rows"
    if "responses_create_params" in keys or record.get("dataset") in NEMOTRON_DOMAINS:
        return "nemotron"
    if "question_content" in keys:
        return "livecodebench"
    if {"Question", "Correct Answer"} <= keys:
        return "gpqa"
    if {"prompt", "instruction_id_list", "kwargs"} <= keys:
        return "ifeval"
    if {"question", "choices", "answer"} <= keys:
        return "mmlu_redux"
    if keys & {"problem", "Problem", "question", "Question"} and keys & {"answer", "Answer"}:
        return "aime"
    raise ValueError(f"unknown record format with keys {sorted(keys)[:12]}; see data/README.md")


def load_file(path: str, domains: list[str], *, seed: int = 0) -> list[dict]:
    """Rows of the requested domains from any supported file (see the module docstring)."""
    name = os.path.basename(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"{name}: no records")
    try:
        fmt = detect_format(records[0][1])
    except ValueError as e:
        raise ValueError(f"{name} line {records[0][0]}: {e}") from None
    if fmt == "nemotron":
        return convert_nemotron(records, domains, name)
    rows = []
    for n, record in records:
        where = f"{name} line {n}"
        if fmt == "rows":
            row = validate_row(record, where)
        else:
            row = CONVERTERS[fmt](record, where, seed=seed)
            if row is None:
                continue
        if row["domain"] in domains:
            rows.append(validate_row(row, where))
    skipped = len(records) - len(rows)
    if fmt == "mmlu_redux" and skipped and "science" in domains:
        warnings.warn(f"{name}: skipped {skipped} MMLU-Redux rows whose error_type is not 'ok'")
    return rows


def _field(record: dict, where: str, *names, kind=str):
    """The first of `names` present in `record` (of type `kind`), else a ValueError naming the field."""
    for n in names:
        if n in record and record[n] is not None:
            if not isinstance(record[n], kind):
                kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                raise ValueError(f"{where}: field {n!r} must be {kinds}, got {type(record[n]).__name__}")
            return record[n]
    raise ValueError(f"{where}: missing field {names[0]!r}")


def _row_id(*parts) -> str:
    return hashlib.sha1("\x00".join(map(str, parts)).encode()).hexdigest()[:12]


def mcq_prompt(question: str, options: list[str], letters: str = string.ascii_uppercase) -> str:
    """The multiple-choice prompt used for every science row this project builds."""
    lines = [f"{letter}. {text}" for letter, text in zip(letters, options)]
    return f"{MCQ_INSTRUCTION}\n\n{question.strip()}\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- Nemotron RL blend

def convert_nemotron(records: list[tuple[int, dict]], domains: list[str], name: str) -> list[dict]:
    """Rows from the Nemotron-3-Nano RL blend (train.jsonl after its create_nanov3_jsonl.py has filled
    the math placeholders). Field layout per `dataset`:
      all        responses_create_params.input: the chat messages (a string is one user message)
      math       expected_answer (a string or a JSON list whose first item is the answer)
      science    expected_answer: the letter; the options are already in the prompt
      if         instruction_id_list, kwargs (IFEval ids; null kwargs and null values are dropped)
      code       verifier_metadata.unit_tests = {"inputs": [...], "outputs": [...]} (stdin/stdout)
    Rows of other datasets are skipped and counted in a warning."""
    rows, skipped = [], {}
    for n, record in records:
        where = f"{name} line {n}"
        dataset = record.get("dataset") if isinstance(record, dict) else None
        domain = NEMOTRON_DOMAINS.get(dataset)
        if domain is None:
            skipped[str(dataset)] = skipped.get(str(dataset), 0) + 1
            continue
        if domain not in domains:
            continue
        if "_hf_placeholder" in record and "responses_create_params" not in record:
            raise ValueError(f"{where}: {dataset} row is an unfilled placeholder (_hf_placeholder); run the "
                             "blend's create_nanov3_jsonl.py first to fetch its prompt and answer")
        row = {"id": str(record.get("uuid") or record.get("id") or f"{name}:{n}"), "domain": domain,
               "prompt": _chat_messages(record, where),
               "source": "nemotron/" + dataset.removeprefix("nano_v3_sft_profiled_")}
        if domain == "math":
            row["answer"] = _math_answer(record.get("expected_answer"), where)
        elif domain == "science":
            row["answer"] = str(_field(record, where, "expected_answer")).strip().upper()
        elif domain == "if":
            row["instruction_id_list"] = _field(record, where, "instruction_id_list", kind=list)
            row["kwargs"] = [{k: v for k, v in (kw or {}).items() if v is not None}
                             for kw in _field(record, where, "kwargs", kind=list)]
        else:
            tests = (record.get("verifier_metadata") or {}).get("unit_tests")
            if not isinstance(tests, dict):
                raise ValueError(f"{where}: field 'verifier_metadata.unit_tests' must be an object "
                                 "with 'inputs' and 'outputs'")
            row["tests"] = {"kind": "stdio", "inputs": tests.get("inputs"), "outputs": tests.get("outputs")}
        rows.append(validate_row(row, where))
    if skipped:
        counts = ", ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
        warnings.warn(f"{name}: skipped rows of datasets no verifier here scores: {counts}")
    return rows


def _chat_messages(record: dict, where: str) -> list[dict]:
    messages = (record.get("responses_create_params") or {}).get("input")
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        raise ValueError(f"{where}: field 'responses_create_params.input' must be a list of chat messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: field 'responses_create_params.input' must be a list of chat messages")
        role = "system" if m.get("role") == "developer" else m.get("role")  # Responses API name for system
        out.append({"role": role, "content": m["content"]})
    return out


def _math_answer(raw, where: str) -> str:
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            pass
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    if raw is None or not str(raw).strip():
        raise ValueError(f"{where}: field 'expected_answer' must be a non-empty answer for a math row")
    return str(raw).strip()


# ----------------------------------------------------------------------------- eval benchmarks
# One function each: (record, where, *, seed) -> row, or None to skip the record.

def convert_aime(record: dict, where: str, *, seed: int = 0) -> dict:
    """AIME (or any problem + answer set): {"problem"|"question", "answer"}."""
    problem = _field(record, where, "problem", "Problem", "question", "Question")
    answer = str(_field(record, where, "answer", "Answer", kind=(str, int, float))).strip()
    return {"id": str(record.get("id", record.get("ID", _row_id(problem)))), "domain": "math",
            "prompt": [{"role": "user", "content": problem.strip() + MATH_SUFFIX}],
            "answer": answer, "source": "aime"}


def convert_gpqa(record: dict, where: str, *, seed: int = 0) -> dict:
    """GPQA (Diamond) csv row: the correct and three incorrect answers, shuffled by (seed, question)."""
    question = _field(record, where, "Question")
    correct = _field(record, where, "Correct Answer").strip()
    options = [correct] + [_field(record, where, f"Incorrect Answer {i}").strip() for i in (1, 2, 3)]
    random.Random(f"{seed}-{question}").shuffle(options)
    return {"id": str(record.get("Record ID") or _row_id(question)), "domain": "science",
            "prompt": [{"role": "user", "content": mcq_prompt(question, options)}],
            "answer": "ABCD"[options.index(correct)], "source": "gpqa"}


def convert_ifeval(record: dict, where: str, *, seed: int = 0) -> dict:
    """IFEval / IFBench: {"key", "prompt", "instruction_id_list", "kwargs"}; null kwarg values dropped."""
    prompt = _field(record, where, "prompt")
    kwargs = _field(record, where, "kwargs", kind=list)
    return {"id": str(record.get("key", _row_id(prompt))), "domain": "if",
            "prompt": [{"role": "user", "content": prompt}],
            "instruction_id_list": _field(record, where, "instruction_id_list", kind=list),
            "kwargs": [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs],
            "source": "ifeval"}


def convert_mmlu_redux(record: dict, where: str, *, seed: int = 0) -> dict | None:
    """MMLU-Redux: {"question", "choices", "answer": index, "error_type"}; rows whose error_type is not
    'ok' (wrong or ambiguous ground truth, as the Redux annotators marked them) are skipped."""
    if record.get("error_type", "ok") != "ok":
        return None
    question = _field(record, where, "question")
    choices = [str(c) for c in _field(record, where, "choices", kind=list)]
    answer = _field(record, where, "answer", kind=(int, str))
    index = int(answer) if str(answer).isdigit() else string.ascii_uppercase.find(str(answer).strip())
    if not 0 <= index < len(choices):
        raise ValueError(f"{where}: field 'answer' must index one of the {len(choices)} choices, got {answer!r}")
    return {"id": str(record.get("id", _row_id(question, *choices))), "domain": "science",
            "prompt": [{"role": "user", "content": mcq_prompt(question, choices)}],
            "answer": string.ascii_uppercase[index], "source": "mmlu_redux"}


def convert_livecodebench(record: dict, where: str, *, seed: int = 0) -> dict:
    """LiveCodeBench code generation: stdin problems become stdio tests; functional (LeetCode-style)
    problems become an assert check calling Solution().<func_name>(*args) from the starter code."""
    question = _field(record, where, "question_content")
    tests = _lcb_tests(record.get("public_test_cases"), where) + _lcb_tests(record.get("private_test_cases"), where)
    if not tests:
        raise ValueError(f"{where}: field 'public_test_cases' holds no tests")
    starter = record.get("starter_code") or ""
    row_id = str(record.get("question_id") or _row_id(question))
    if tests[0].get("testtype") == "functional":
        metadata = record.get("metadata") or {}
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        func = metadata.get("func_name")
        if not func:
            raise ValueError(f"{where}: field 'metadata' needs 'func_name' for functional tests")
        lines = ["def check(candidate):", "    solution = candidate()"]
        for t in tests:
            args = [json.loads(a) for a in t["input"].split("\n") if a.strip()]
            lines.append(f"    assert solution.{func}(*{args!r}) == {json.loads(t['output'])!r}")
        code_tests = {"kind": "assert", "code": "\n".join(lines) + "\n", "entry_point": "Solution"}
        ask = (f"Complete this starter code, with the imports it needs (e.g. from typing import List):\n"
               f"```python\n{starter}\n```")
    else:
        code_tests = {"kind": "stdio", "inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]}
        ask = "Read the input from standard input and write the answer to standard output."
    content = f"{question.strip()}\n\n{ask}\nReply with the complete Python program in a ```python code block."
    return {"id": row_id, "domain": "code", "prompt": [{"role": "user", "content": content}],
            "tests": code_tests, "source": "livecodebench"}


class _PlainUnpickler(pickle.Unpickler):
    """LiveCodeBench stores private tests as base64(zlib(pickle(json string))). A pickle can run code
    when loaded, so this one refuses every global: only plain strings, lists and dicts come through."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case pickle")


def _lcb_tests(raw, where: str) -> list[dict]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            try:
                payload = zlib.decompress(base64.b64decode(raw))
                raw = json.loads(_PlainUnpickler(io.BytesIO(payload)).load())
            except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
                raise ValueError(f"{where}: field 'private_test_cases' could not be decoded ({e})") from None
    if not (isinstance(raw, list) and all(isinstance(t, dict) and isinstance(t.get("input"), str)
                                          and isinstance(t.get("output"), str) for t in raw)):
        raise ValueError(f"{where}: test cases must be a list of {{'input': str, 'output': str, 'testtype'}}")
    return raw


CONVERTERS = {"aime": convert_aime, "gpqa": convert_gpqa, "ifeval": convert_ifeval,
              "mmlu_redux": convert_mmlu_redux, "livecodebench": convert_livecodebench}
