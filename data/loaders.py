"""The row schema, its validation, and readers that turn data files and datasets into rows.

    from data.loaders import load_file, validate_row
    rows = load_file("train.jsonl", ["math", "code"])       # row schema or Nemotron RL blend
    rows = load_file("gpqa_diamond.csv", ["science"])       # a benchmark file, auto-detected
    rows = load_file("nvidia/Nemotron-3-Nano-RL-Training-Blend", ["math"])   # a Hub dataset (or the HF cache)

Every source is read with the `datasets` library (read_records), so the HF cache, HF_DATASETS_CACHE and offline
mode (HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1) apply as they do to any load_dataset call. A spec is:
  a file        .jsonl, .jsonl.gz, .json (a list), .csv, .parquet, .arrow
  a directory   a dataset saved with save_to_disk (dir@split picks a split), or a folder of data files (every
                data file under it, each read as a file: a Hub snapshot's scripts and READMEs are ignored)
  a Hub id      org/name, org/name:config, org/name@split, org/name:config@split
  stream:SPEC   the same, streamed (IterableDataset: no Arrow copy in the cache; rows still end up in memory)
Formats, detected from the keys of the first record (see `detect_format`):
  rows        the row schema itself (data/README.md)
  nemotron    Nemotron-3-Nano RL training blend: `dataset`, `responses_create_params.input`, ...
  hle         Humanity's Last Exam: question, answer, answer_type, image (rows with an image are skipped)
  aime        problem/question + answer (or + solution, whose last \\boxed{} is the answer: math-ai/aime24)
  gpqa        Question, Correct Answer, Incorrect Answer 1..3 (the GPQA csv columns)
  ifeval      key, prompt, instruction_id_list, kwargs (IFEval; IFBench uses the same shape)
  livecodebench  question_content, public_test_cases, private_test_cases, metadata
  mmlu_redux  question, choices, answer (an index), correct_answer where the annotators corrected it
A source is used whole, whatever split it is loaded for; rows of domains not asked for are dropped. Errors name
the file (or Hub id), the line (row for Arrow sources) and the field.
"""

import base64
import csv
import functools
import hashlib
import io
import itertools
import json
import os
import pickle
import random
import string
import typing
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
    answers = row.get("answers")
    if answers is not None and not (domain == "math" and isinstance(answers, list) and answers
                                    and all(isinstance(a, str) and a.strip() for a in answers)):
        bad("answers", "must be a non-empty list of non-empty strings (math rows only: accepted forms of the answer)")
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
    if tests.get("prelude") not in (None, "livecodebench"):
        bad("tests", "'prelude' must be 'livecodebench' (the imports LiveCodeBench runs programs after) or absent")
    if tests["kind"] == "stdio":
        ins, outs = tests.get("inputs"), tests.get("outputs")
        if not (isinstance(ins, list) and isinstance(outs, list) and ins and len(ins) == len(outs)
                and all(isinstance(s, str) for s in ins + outs)):
            bad("tests", "of kind stdio needs 'inputs' and 'outputs': equal-length non-empty lists of strings")
    elif not (isinstance(tests.get("code"), str) and isinstance(tests.get("entry_point"), str)
              and tests["entry_point"]):
        bad("tests", "of kind assert needs 'code' (str) and 'entry_point' (non-empty str)")


# ----------------------------------------------------------------------------- reading: through `datasets`

ARROW_FILES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
JSON_FILES = (".jsonl", ".jsonl.gz", ".json")


def parse_spec(spec: str) -> tuple[str, str | None, str | None, bool]:
    """--data SPEC -> (path or hub id, config, split, streaming). A leading "stream:" asks for streaming; a hub id
    may end in :CONFIG and @SPLIT (org/name:config@split), a dataset directory in @SPLIT; a path that exists is
    taken whole."""
    streaming = spec.startswith("stream:")
    spec = spec.removeprefix("stream:")
    if os.path.exists(spec):
        return spec, None, None, streaming
    head, at, split = spec.rpartition("@")
    if at and os.path.isdir(head):
        return head, None, split or None, streaming
    if spec.endswith(JSON_FILES + tuple(ARROW_FILES)) or spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        return spec, None, None, streaming   # a path, even one that does not exist: the reader says so
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    return name, config or None, split or None, streaming


def _drop_nulls(x):
    """Arrow gives every record every column of its table, so keys a record did not have come back as None:
    drop None values from dicts (recursively), so that absent keys are absent again. Lists are kept as they are."""
    if isinstance(x, dict):
        return {k: _drop_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_nulls(v) for v in x]
    return x


def _one_split(ds, label: str, split: str | None):
    """The split asked for, or the only one there is."""
    if not hasattr(ds, "keys"):   # a Dataset or IterableDataset: load_dataset already took the split
        return ds
    if split is None:
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise ValueError(f"{label} has splits {', '.join(ds)}: choose one, e.g. {label}@{next(iter(ds))}")
    if split not in ds:
        raise ValueError(f"{label} has no split {split!r}; its splits: {', '.join(ds)}")
    return ds[split]


def read_records(spec: str, name: str | None = None) -> tuple[str, str, typing.Iterator[tuple[int, dict]]]:
    """(name, unit, records) of a data spec, read with `datasets` (so the HF cache and offline mode apply):
    records yields (number, record) lazily; errors name `name` and `unit` ("line" or "row") and the number.
      .jsonl, .jsonl.gz   the "text" builder, one JSON record per line (numbers are line numbers, blank lines
                          counted); .json: the whole file as one text, a list of records. Each record is parsed
                          here, so it keeps exactly the keys and types of the file: the "json" builder would give
                          every record the columns of all of them, change "9" to 9 in a column that mixes
                          strings and numbers, and skip blank lines.
      .parquet, .arrow    the "parquet" / "arrow" builders; .csv the "csv" one, every cell a string, empty
                          cells "" (row numbers; in a .csv the header is line 1, so the first record is 2)
      a directory         datasets.load_from_disk if it holds a saved dataset, else load_dataset(dir)
      org/name[:config][@split]   load_dataset from the Hub or the HF cache; split: the only one, or @split
    Records that come through Arrow tables (all but .jsonl/.json) have None values dropped (see _drop_nulls)."""
    import datasets

    path, config, split, streaming = parse_spec(spec)
    name = name or os.path.basename(path.rstrip("/")) or path
    load = functools.partial(datasets.load_dataset, streaming=streaming)
    if os.path.isfile(path) or path.endswith(JSON_FILES + tuple(ARROW_FILES)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path!r} does not exist")
        if path.endswith((".jsonl", ".jsonl.gz")):
            lines = load("text", data_files=path, split="train")
            return name, "line", _json_lines(lines, name)
        if path.endswith(".json"):
            doc = "".join(r["text"] for r in load("text", data_files=path, split="train", sample_by="document"))
            try:
                data = json.loads(doc)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}: invalid JSON ({e})") from None
            if not isinstance(data, list):
                raise ValueError(f"{name}: a .json data file must hold a list of records")
            return name, "line", enumerate(data, 1)
        ext = next((e for e in ARROW_FILES if path.endswith(e)), None)
        if ext is None:
            raise ValueError(f"{name}: unsupported file type; use .jsonl, .jsonl.gz, .json, .csv, .parquet, .arrow, "
                             "a dataset directory or a Hub dataset id")
        extra = {}
        if ext == ".csv":   # every column a string and empty cells "", as the file has them (no type guessing)
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            extra = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                     "na_filter": False}
        table = load(ARROW_FILES[ext], data_files=path, split="train", **extra)
        first = 2 if ext == ".csv" else 1
        return name, "line" if ext == ".csv" else "row", ((n, _drop_nulls(r)) for n, r in enumerate(table, first))
    if os.path.isdir(path):
        ds = datasets.load_from_disk(path) if _is_saved_dataset(path) else load(path, name=config)
        return name, "row", ((n, _drop_nulls(r)) for n, r in enumerate(_one_split(ds, path, split), 1))
    if os.path.exists(path) or path.count("/") != 1:
        raise ValueError(f"{path}: unsupported data; use a .jsonl, .jsonl.gz, .json, .csv, .parquet or .arrow "
                         "file, a dataset directory, or a Hub dataset id org/name[:config][@split]")
    try:
        ds = load_dataset_as_text(path, config, split, streaming)
    except (ConnectionError, FileNotFoundError) as e:   # offline or unreachable: datasets raises ConnectionError
        raise FileNotFoundError(
            f"--data {spec}: not in the local HF cache and not loadable from the Hugging Face Hub ({e}). Offline "
            "(HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1) only cached datasets load: load it once with network, or "
            "pass a local file or directory") from None
    return path, "row", ((n, _drop_nulls(r)) for n, r in enumerate(_one_split(ds, path, split), 1))


def load_dataset_as_text(path: str, config: str | None, split: str | None, streaming: bool):
    """datasets.load_dataset(path, name=config, split=split), with two fixes for Hub datasets as they are hosted:
      - a csv dataset (GPQA's Hub id) is read with na_filter=False: pandas' default would turn the cells "None",
        "NA" and "N/A" (real GPQA answers) into nulls, and the row would lose that answer;
      - a repository that holds only a loading script (livecodebench/code_generation_lite) fails in datasets >= 4
        with a RuntimeError; here it is one line saying to download its data files and pass the folder."""
    import datasets
    from datasets.packaged_modules.csv.csv import CsvConfig

    try:
        builder = datasets.load_dataset_builder(path, name=config)
        extra = {"na_filter": False} if isinstance(builder.config, CsvConfig) else {}
        return datasets.load_dataset(path, name=config, split=split, streaming=streaming, **extra)
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        raise ValueError(f"{path} is a dataset-script repository, which datasets {datasets.__version__} no longer "
                         f"runs; download its data files (hf download {path} --repo-type dataset --local-dir DIR) "
                         "and pass DIR, or one of its .jsonl files") from None


def data_files(folder: str) -> list[str]:
    """Every data file under `folder` (sorted, recursively, hidden folders skipped): how a folder that is not a
    saved dataset is read. A Hub snapshot's loading script and README are not data, so they do not count."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(JSON_FILES + tuple(ARROW_FILES))]
    return found


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _json_lines(lines, name: str) -> typing.Iterator[tuple[int, dict]]:
    for line_no, row in enumerate(lines, 1):
        text = row["text"]
        if not text.strip():
            continue
        try:
            yield line_no, json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} line {line_no}: invalid JSON ({e.msg})") from None


def read_jsonl(path: str) -> list[dict]:
    """Rows of a file in the row schema, each validated (errors name the file, line and field)."""
    name, unit, records = read_records(path)
    return [validate_row(r, f"{name} {unit} {n}") for n, r in records]


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
    if {"question", "answer", "answer_type"} <= keys:
        return "hle"
    if keys & {"problem", "Problem", "question", "Question"} and keys & {"answer", "Answer", "solution"}:
        return "aime"
    raise ValueError(f"unknown record format, keys found: {', '.join(sorted(map(str, keys))) or '(none)'}; "
                     f"formats known: {KNOWN_FORMATS} (data/README.md)")


KNOWN_FORMATS = ("rows (domain, prompt), nemotron (responses_create_params), livecodebench (question_content), "
                 "gpqa (Question, Correct Answer), ifeval (prompt, instruction_id_list, kwargs), "
                 "mmlu_redux (question, choices, answer), hle (question, answer, answer_type), "
                 "aime (problem or question, with answer or solution)")
SKIPPED = {"hle": "HLE rows that need their image (this project is text-only)"}


def load_file(spec: str, domains: list[str], *, seed: int = 0, name: str | None = None) -> list[dict]:
    """Rows of the requested domains from any data spec read_records takes (see the module docstring). A folder
    that is not a saved dataset is the rows of each of its data files (`data_files`), each read as a file."""
    path, _, _, streaming = parse_spec(spec)
    if os.path.isdir(path) and not _is_saved_dataset(path):
        files = data_files(path)
        if not files:
            raise ValueError(f"{path}: no data files (.jsonl, .jsonl.gz, .json, .csv, .parquet, .arrow) in this folder")
        prefix = "stream:" if streaming else ""
        return [row for f in files for row in load_file(prefix + f, domains, seed=seed,
                                                        name=os.path.relpath(f, os.path.dirname(path.rstrip("/"))))]
    name, unit, records = read_records(spec, name)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{name}: no records")
    records = itertools.chain([first], records)
    try:
        fmt = detect_format(first[1])
    except ValueError as e:
        raise ValueError(f"{name} {unit} {first[0]}: {e}") from None
    if fmt == "nemotron":
        return convert_nemotron(records, domains, name, unit)
    rows, skipped = [], 0
    for n, record in records:
        where = f"{name} {unit} {n}"
        if fmt == "rows":
            row = validate_row(record, where)
        else:
            row = CONVERTERS[fmt](record, where, seed=seed)
            if row is None:
                skipped += 1
                continue
        if row["domain"] in domains:
            rows.append(validate_row(row, where))
    if skipped:
        warnings.warn(f"{name}: skipped {skipped} {SKIPPED[fmt]}")
    return rows


def date_window(rows: list[dict], since: str | None = None, until: str | None = None) -> list[dict]:
    """The rows whose `contest_date` (LiveCodeBench's, kept by its converter) falls in [since, until), both
    YYYY-MM-DD and optional: how LiveCodeBench's releases (v5: 2024-08-01 to 2025-02-01) are chosen. Rows
    without a contest date (other benchmarks) are kept."""
    def inside(day):
        return (since is None or day >= since) and (until is None or day < until)
    return [r for r in rows if "contest_date" not in r or inside(str(r["contest_date"])[:10])]


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

def convert_nemotron(records: typing.Iterable[tuple[int, dict]], domains: list[str], name: str,
                     unit: str = "line") -> list[dict]:
    """Rows from the Nemotron-3-Nano RL blend (train.jsonl after its create_nanov3_jsonl.py has filled
    the math placeholders). Field layout per `dataset`:
      all        responses_create_params.input: the chat messages (a string is one user message)
      math       expected_answer (a string, or a JSON list of accepted forms: Skywork's ["3", "x=3"] gives
                 answer "3" and answers ["3", "x=3"], any of which scores)
      science    expected_answer: the letter; the options are already in the prompt;
                 template_metadata.output_regex (the answer format the row's template asks for) kept
      if         instruction_id_list, kwargs (IFEval ids; null kwargs and null values are dropped)
      code       verifier_metadata.unit_tests = {"inputs": [...], "outputs": [...]} (stdin/stdout)
    A row without `dataset` (written by another prep script) gets its domain from the fields its verifier
    reads (`_nemotron_domain`). Rows of other datasets are skipped and counted in a warning."""
    rows, skipped = [], {}
    for n, record in records:
        where = f"{name} {unit} {n}"
        dataset = record.get("dataset") if isinstance(record, dict) else None
        domain = _nemotron_domain(record)
        if domain is None:
            skipped[str(dataset)] = skipped.get(str(dataset), 0) + 1
            continue
        if domain not in domains:
            continue
        if "_hf_placeholder" in record and "responses_create_params" not in record:
            raise ValueError(f"{where}: {dataset} row is an unfilled placeholder (_hf_placeholder); run the "
                             "blend's create_nanov3_jsonl.py first to fetch its prompt and answer")
        # the competitive-coding rows carry no uuid, only a hash_id
        row_id = next((record[k] for k in ("uuid", "hash_id", "id") if record.get(k) not in (None, "")), None)
        row = {"id": str(row_id) if row_id is not None else f"{name}:{n}", "domain": domain,
               "prompt": _chat_messages(record, where),
               "source": "nemotron/" + (dataset.removeprefix("nano_v3_sft_profiled_") if dataset else domain)}
        if domain == "math":
            answers = _math_answers(record.get("expected_answer"), where)
            row["answer"] = answers[0]
            if len(answers) > 1:
                row["answers"] = answers
        elif domain == "science":
            row["answer"] = str(_field(record, where, "expected_answer")).strip().upper()
            regex = (record.get("template_metadata") or {}).get("output_regex")
            if isinstance(regex, str) and regex:
                row["output_regex"] = regex
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


def _nemotron_domain(record) -> str | None:
    """The domain of a blend row: from its `dataset`, or, for a row without one, from the fields that domain's
    verifier reads (unit tests: code; instruction ids: if; options or an answer template: science; an
    expected answer: math). None: a row no verifier here scores."""
    if not isinstance(record, dict):
        return None
    if record.get("dataset") is not None:
        return NEMOTRON_DOMAINS.get(record["dataset"])
    if isinstance((record.get("verifier_metadata") or {}).get("unit_tests"), dict):
        return "code"
    if "instruction_id_list" in record:
        return "if"
    agent = str((record.get("agent_ref") or {}).get("name", ""))
    if "options" in record or "template_metadata" in record or "mcqa" in agent:
        return "science"
    if record.get("expected_answer") is not None:
        return "math"
    return None


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


def _math_answers(raw, where: str) -> list[str]:
    """The accepted forms of a math answer, first the main one: a string, or a list (a JSON list in a string)."""
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            pass
    forms = [str(a).strip() for a in (raw if isinstance(raw, list) else [raw]) if a is not None and str(a).strip()]
    if not forms:
        raise ValueError(f"{where}: field 'expected_answer' must be a non-empty answer for a math row")
    return list(dict.fromkeys(forms))


# ----------------------------------------------------------------------------- eval benchmarks
# One function each: (record, where, *, seed) -> row, or None to skip the record.

def convert_aime(record: dict, where: str, *, seed: int = 0) -> dict:
    """AIME (or any problem + answer set): {"problem"|"question", "answer"}, or {"problem", "solution"} with the
    answer only as the solution's last \\boxed{} (math-ai/aime24: id, problem, solution, url)."""
    problem = _field(record, where, "problem", "Problem", "question", "Question")
    if any(record.get(k) is not None for k in ("answer", "Answer")):
        answer = str(_field(record, where, "answer", "Answer", kind=(str, int, float))).strip()
    else:
        from verifiers.common import boxed_contents
        boxes = boxed_contents(_field(record, where, "solution"))
        if not boxes or not boxes[-1].strip():
            raise ValueError(f"{where}: field 'solution' has no \\boxed{{}} answer (and there is no 'answer' field)")
        answer = boxes[-1].strip()
    return {"id": str(record.get("id", record.get("ID", _row_id(problem)))), "domain": "math",
            "prompt": [{"role": "user", "content": problem.strip() + MATH_SUFFIX}],
            "answer": answer, "source": "aime"}


def convert_gpqa(record: dict, where: str, *, seed: int = 0) -> dict:
    """GPQA (Diamond) csv row: the correct and three incorrect answers, shuffled by (seed, question)."""
    question = _field(record, where, "Question")
    text = functools.partial(_field, record, where, kind=(str, int, float))   # a typed csv reader gives 3 for "3"
    correct = str(text("Correct Answer")).strip()
    options = [correct] + [str(text(f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
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


def _choice_index(answer, n: int):
    """An answer given as an index (2, "2") or a letter ("C") -> its index, or None if it names no choice."""
    text = str(answer).strip()
    index = int(text) if text.isdigit() else string.ascii_uppercase.find(text) if len(text) == 1 else -1
    return index if 0 <= index < n else None


def convert_mmlu_redux(record: dict, where: str, *, seed: int = 0) -> dict:
    """MMLU-Redux: {"question", "choices", "answer": index, "error_type", "correct_answer"}. Every question is
    kept, with the annotators' `correct_answer` where they give one (a wrong ground truth they corrected), as
    the Redux maintainers' own evaluation scores it."""
    question = _field(record, where, "question")
    choices = [str(c) for c in _field(record, where, "choices", kind=list)]
    answer = _field(record, where, "answer", kind=(int, str))
    index = _choice_index(answer, len(choices))
    if index is None:
        raise ValueError(f"{where}: field 'answer' must index one of the {len(choices)} choices, got {answer!r}")
    corrected = record.get("correct_answer")
    if corrected not in (None, "") and _choice_index(corrected, len(choices)) is not None:
        index = _choice_index(corrected, len(choices))
    return {"id": str(record.get("id", _row_id(question, *choices))), "domain": "science",
            "prompt": [{"role": "user", "content": mcq_prompt(question, choices)}],
            "answer": string.ascii_uppercase[index], "source": "mmlu_redux"}


def convert_hle(record: dict, where: str, *, seed: int = 0) -> dict | None:
    """Humanity's Last Exam (cais/hle): {"id", "question", "image", "answer", "answer_type", ...}. Text-only:
    a row whose `image` is set is skipped (the question needs it). answer_type "multipleChoice" becomes a
    science row graded by its letter (the question lists the choices); "exactMatch" a math row graded by rule.
    Deviation: HLE grades exact-match answers with a judge model (o3-mini) that accepts equivalent wording;
    here they are graded by the math verifier's rules, so a right answer in other words scores 0."""
    if record.get("image"):
        return None
    question = _field(record, where, "question").strip()
    answer = str(_field(record, where, "answer", kind=(str, int, float))).strip()
    row_id = str(record.get("id") or _row_id(question))
    if record.get("answer_type") == "multipleChoice":
        content = f"{MCQ_INSTRUCTION}\n\n{question}"   # the question lists its choices ("Answer Choices: A. ...")
        return {"id": row_id, "domain": "science", "prompt": [{"role": "user", "content": content}],
                "answer": answer.upper(), "source": "hle"}
    return {"id": row_id, "domain": "math", "prompt": [{"role": "user", "content": question + MATH_SUFFIX}],
            "answer": answer, "source": "hle"}


def convert_livecodebench(record: dict, where: str, *, seed: int = 0) -> dict:
    """LiveCodeBench code generation: stdin problems become stdio tests; functional (LeetCode-style)
    problems become an assert check calling Solution().<func_name>(*args) from the starter code, graded as
    LiveCodeBench's own harness grades them: a tuple result is compared as a list, and the program runs after
    LiveCodeBench's standard imports (tests["prelude"], verifiers/code.py), so `List` needs no import.
    `contest_date` is kept, for choosing a release's date window (`date_window`, analyze.py eval --since)."""
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
        # One argument per input line, each JSON; the result compared with ==, a tuple first made a list.
        lines = ["def check(candidate):", f"    method = getattr(candidate(), {func!r})",
                 "    as_list = lambda x: list(x) if isinstance(x, tuple) else x"]
        for t in tests:
            args = [json.loads(a) for a in t["input"].split("\n") if a.strip()]
            lines.append(f"    assert as_list(method(*{args!r})) == {json.loads(t['output'])!r}")
        code_tests = {"kind": "assert", "code": "\n".join(lines) + "\n", "entry_point": "Solution",
                      "prelude": "livecodebench"}
        ask = f"Complete this starter code:\n```python\n{starter}\n```"
    else:
        code_tests = {"kind": "stdio", "inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests],
                      "prelude": "livecodebench"}
        ask = "Read the input from standard input and write the answer to standard output."
    content = f"{question.strip()}\n\n{ask}\nReply with the complete Python program in a ```python code block."
    row = {"id": row_id, "domain": "code", "prompt": [{"role": "user", "content": content}],
           "tests": code_tests, "source": "livecodebench"}
    if record.get("contest_date"):
        row["contest_date"] = str(record["contest_date"])
    return row


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


CONVERTERS = {"aime": convert_aime, "gpqa": convert_gpqa, "ifeval": convert_ifeval, "hle": convert_hle,
              "mmlu_redux": convert_mmlu_redux, "livecodebench": convert_livecodebench}
