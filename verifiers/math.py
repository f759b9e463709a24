"""Math verifier: extract the final answer, compare it with row["answer"]; binary reward.

    from verifiers import math
    math.verify("... so the total is \\boxed{\\frac{1}{2}}", {"answer": "0.5"})                  # 1.0
    math.verify("<think>...</think>Answer: \\boxed{7}", {"answer": "7"}, grader="paper")       # 1.0

Two graders (grader=...), both on the text after the reasoning block:
  lenient (default)  the first of these forms that is present gives the answer:
      1. the \\boxed{...} answers (nested braces kept whole). Several boxes holding different
         answers are read together as one list ("2, 3"), which a list-valued reference can equal and a
         single-valued one cannot: boxing every candidate never pays;
      2. the last answer statement: "Answer: 42", "The final answer is $x^2$.", "#### 42" (GSM8K); it
         also wins over boxes written before it. In prose, the value after the last "is", "are" or
         "=" is taken ("Final Answer: The largest $n$ is 34." gives 34), else the statement's only
         number or math span ("Answer: she left 3 hours ago" gives 3);
      3. fallbacks: the whole text when it is one expression ("7", "\\frac{10}{9}"); else the last
         math span ("... so $x \\geq 5$ holds"); else the last number, only when it stands alone:
         "the sum is 42" gives 42, but the 2 of "5^2", of "10 - 2" or of "[0,2)" is no answer at all,
         and neither is the 4 of "3 or 4" or of "$3$ or $4$" (hedging). These fallbacks are lenient
         on purpose: the tiny CPU model that emits just "7" earns its reward, which is the embedded
         run's learning signal. They also pay a stray correct number at the end of a wrong
         derivation; turn them off with last_number=False to measure how much that matters.
  paper  DeepScaleR's grader, which the paper trains with: the text after `</think>` (none: 0), then
      after the last "Answer:" when there is one; a \\boxed{} answer is required (none: 0). Two
      deviations: boxes holding different answers are read as a list as above (DeepScaleR grades the
      last box only), and equivalence is the comparison below (DeepScaleR: mathd normalisation, then
      sympy), of which math-verify's symbolic check is a maintained superset.

Accepted and refused forms (reference -> completion: reward), each one a test in tests/test_verifiers.py:

    | reference | completion                                   | lenient | paper | why                                |
    |-----------|----------------------------------------------|---------|-------|------------------------------------|
    | 0.5       | so it is \\boxed{\\frac{1}{2}}                | 1       | 0     | paper: no </think>                 |
    | 4         | <think>..</think>\\boxed{3} or \\boxed{4}      | 0       | 0     | two different final answers         |
    | 2, 3      | \\boxed{2} and \\boxed{3}                      | 1       | 1*    | several boxes read as a list        |
    | 4         | The answer is 3 or 4                          | 0       | 0     | hedging is not an answer            |
    | 2         | $\\frac{1+\\sqrt{5}}{2}$                        | 0       | 0     | the 2 is inside an expression       |
    | 32349     | \\boxed{32, 349}                               | 0       | 0*    | a list, not a thousands separator   |
    | 34        | Final Answer: The largest $n$ is 34.          | 1       | 0     | paper: no box                       |
    | E         | The answer is $E$.                            | 1       | 0     | text answers are compared as text   |
    | 1/12      | \\boxed{0.0833333333333333}                    | 1       | 1*    | 6+ decimal places: rounding allowed |
    | 0.111     | The answer is 0,111                           | 1       | 0     | decimal comma                       |
    | 1000      | #### 1,000                                    | 1       | 0     | thousands separator                 |
    (* with a closed reasoning block before it)

Comparison, cheapest first:
  1. string equality after normalisation (spaces, $, \\left/\\right, \\dfrac, \\text, trailing ".", ...);
  2. exact rational equality when both sides are plain numbers ("0.5" == "1/2" == "\\frac{1}{2}"); a
     decimal of 6 or more places also equals a fraction it rounds or truncates (0.0833333 == 1/12),
     while "0.333" != 1/3; "1,000" is a thousand, "0,111" a decimal comma, "32, 349" a list;
  3. symbolic equivalence with math-verify 0.9.0 (sets, intervals, matrices, x=3 vs 3, 10\\% vs 10...).
Step 3 runs in a helper process, never in the caller: sympy can hang in C code that no signal can
interrupt (e.g. parsing 9^{9^{9}} builds a 370-million-digit integer), and math-verify's own timeouts
use signal.alarm, which only works on a process's main thread. The helper process is spawned once
and reused; it arms math-verify's alarms on its own main thread, caps its own memory and CPU time,
and the caller kills it when `timeout_s` passes without a reply (the check then scores 0 with error
"timeout" and a fresh helper is spawned for the next check). So `verify` is safe to call from any
thread, e.g. verify_batch's pool.
"""

import atexit
import json
import math as _pymath
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

from verifiers.common import boxed_contents, graded_text, result

MAX_ANSWER_CHARS = 1000  # longer extracted answers are not sent to sympy: they are never a final answer

# --- answer extraction -----------------------------------------------------------------------------

# "answer" must be followed by "is" or ":"/"=" to be a statement: "to answer this, ..." is not one.
_STATEMENT = re.compile(r"(?:(?i:answer)\s*(?:(?i:is)\s*[:=]?|[:=])|^\s*####)[ \t]*(.+)$", re.MULTILINE)
# Thousands grouped by "," or a space ("1,000", "1 000"), a decimal point or comma ("2.5", "2,74").
_LAST_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:[, ]\d{3})+(?!\d)|\d+)(?:[.,]\d+)?(?:/\d+)?|[-+]?\.\d+")
_OPERATORS = set("+-*/^_{}\\|×·÷<>=")  # a number next to one of these is part of a larger expression
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _unwrap(text: str) -> str:
    """'$x$' -> 'x', '\\(x\\)' -> 'x', '**12**' -> '12'."""
    text = text.strip().strip("*_ ").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left):len(text) - len(right)]
    return text.strip()


def _clean_statement(text: str) -> str:
    """'$\\frac{1}{2}$. Thus we are done' -> '\\frac{1}{2}'; 'The largest $n$ is 34.' -> '34'."""
    text = text.strip()
    masked = _MATH_SPAN.sub(lambda m: "x" * len(m.group()), text)  # a ", " inside $...$ ends nothing
    end = re.search(r"\.\s|\.$|,\s|;\s", masked)
    text = _unwrap(text[:end.start()] if end else text)
    prose = _MATH_SPAN.sub(" ", text)
    prose = re.sub(r"\\[A-Za-z]+", " ", prose)  # LaTeX commands are not words
    if not re.search(r"[A-Za-z]{2,}", prose):
        return text  # an expression, not prose
    outside = _MATH_SPAN.sub(lambda m: "x" * len(m.group()), text)  # an "=" inside $...$ is no link
    links = list(re.finditer(r"(?:\b(?:is|are|equals|was)\b|=)\s*", outside))
    if links:
        return _unwrap(text[links[-1].end():])
    values = [m.group() for m in _MATH_SPAN.finditer(text)] or _LAST_NUMBER.findall(text)
    return _unwrap(values[0]) if len(values) == 1 else text  # "Sphere started 3 hours ago" -> "3"


def _distinct(answers: list[str]) -> str | None:
    """One answer, or several different ones joined as a list; None for none."""
    unique = list({normalize(a): a for a in reversed(answers) if a.strip()}.values())[::-1]
    return ", ".join(a.strip() for a in unique) if unique else None


def _prose(text: str) -> bool:
    """True if the text has a word of 2+ letters outside math spans and LaTeX commands."""
    return re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", _MATH_SPAN.sub(" ", text))) is not None


def _hedged(text: str, start: int) -> bool:
    """True if what stands before text[start:] is another value and "or", "and", "," or "/": "3 or 4"."""
    return re.search(r"(?:\d|\$|\\\)|\\\]|\})\s*(?:\bor\b|\band\b|,|/)\s*(?:\$|\\\(|\\\[)?\s*$",
                     text[:start]) is not None


def _standalone(text: str, start: int, end: int) -> bool:
    """True if text[start:end] is not part of a larger expression (no operator or letter next to it)."""
    before, after = text[:start].rstrip(), text[end:].lstrip()
    touching = (text[start - 1] if start else " ") + (text[end] if end < len(text) else " ")
    if any(c in ",([" for c in touching):
        return False  # the 1 of [0,1), the 4 of 4(x + 1)
    # A single letter glued to the number is a variable (5x, x5, 2a); a longer run is a word that the
    # tiny model's digits stick to ("Input9"), not algebra.
    if re.search(r"(?:^|[^A-Za-z])[A-Za-z]$", text[:start]) or re.match(r"[A-Za-z](?:[^A-Za-z]|$)", text[end:]):
        return False
    if (before[-1:] in _OPERATORS and before[-1:] != "=") or after[:1] in _OPERATORS:
        return False  # "= 5" is an equation's value; "10 - 2", "5^2", "{2}" are parts of expressions
    return not (after[:1] == "." and after[1:2].isdigit())


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    """The final answer written in `text` by the lenient grader's rules (module docstring), or None."""
    statements = [(m.start(), _clean_statement(m.group(1))) for m in _STATEMENT.finditer(text)]
    statements = [(start, s) for start, s in statements if s]
    boxed = _distinct(boxed_contents(text))
    last_box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if boxed and not (statements and statements[-1][0] > last_box):  # a statement after the boxes wins
        return boxed
    if statements:
        return statements[-1][1]
    if not last_number or not text.strip():
        return None
    if not _prose(text) and len(text) <= MAX_ANSWER_CHARS and re.fullmatch(r"[\w\s\\{}()\[\]^+\-*/=.,<>|!$]+", text, re.ASCII):
        return _unwrap(text)  # the whole text is one expression: "7", "\\frac{10}{9}", "$x=3$"
    spans = list(_MATH_SPAN.finditer(text))
    numbers = list(_LAST_NUMBER.finditer(text))
    if spans and (not numbers or numbers[-1].start() < spans[-1].end()):  # the last value is a math span
        content = next(g for g in spans[-1].groups() if g is not None).strip()
        return None if _hedged(text, spans[-1].start()) or not content else content
    if not numbers or not _standalone(text, numbers[-1].start(), numbers[-1].end()) \
            or _hedged(text, numbers[-1].start()):
        return None  # a number inside an expression is never graded, nor an earlier one instead
    return numbers[-1].group()


def extract_boxed_answer(text: str) -> str | None:
    """The paper grader's answer: the boxes after the last "Answer:" (or anywhere when there is none)."""
    cut = [m.end() for m in re.finditer(r"(?i:answer)\s*:", text)]
    return _distinct(boxed_contents(text[cut[-1]:] if cut else text))


# --- cheap comparisons -----------------------------------------------------------------------------


def normalize(answer: str) -> str:
    """A canonical string for the fast path: same string after this means the same answer."""
    s = answer.strip().replace("$", "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]", "", s)  # LaTeX spacing commands
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    if re.fullmatch(r"[-+]?\d{1,3}(?:\s\d{3})+(?:[.,]\d+)?", s):
        s = re.sub(r"\s", "", s)  # "1 000" is a thousand
    s = re.sub(r"(?<=\d)\s+(?=\d)", "~", s)  # but "1 2" is two numbers, not 12
    s = re.sub(r"\s+", "", s).rstrip(".")
    return re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # "(E)" is the choice E


def as_number(answer: str) -> Fraction | None:
    """The exact value of a plain number ('-3', '1,000', '0,5', '2.5', '3/4', '\\frac{3}{4}'), else None.

    A comma followed by a space separates list items ("32, 349" is no number); commas grouping digits
    by three are thousands separators ("1,000"), unless the number starts "0," ; any other single
    comma is a decimal comma ("0,111", "2,5").
    """
    if re.search(r",\s", answer):
        return None
    s = normalize(answer)
    if re.fullmatch(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    elif re.fullmatch(r"[-+]?\d+,\d+", s):
        s = s.replace(",", ".")
    s = re.sub(r"^([-+]?)\\frac\{(\d+)\}\{(\d+)\}$", r"\1\2/\3", s)
    s = re.sub(r"^([-+]?)\\frac(\d)(\d)$", r"\1\2/\3", s)  # \frac12
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except ZeroDivisionError:
        return None


def numbers_equal(gold: str, pred: str) -> bool | None:
    """Equal exact values, or a decimal of 6+ places within one unit of its last place of the gold
    value (0.0833333333333333 for 1/12); None when either side is not a plain number."""
    gold_number, pred_number = as_number(gold), as_number(pred)
    if gold_number is None or pred_number is None:
        return None
    if gold_number == pred_number:
        return True
    places = re.fullmatch(r"[-+]?\d*[.,](\d+)", normalize(pred))
    return bool(places) and len(places.group(1)) >= 6 and \
        abs(pred_number - gold_number) < Fraction(1, 10 ** len(places.group(1)))


# --- symbolic comparison in a helper process ---------------------------------------------------------

_HELPER_MEMORY_BYTES = 4 << 30  # sympy may build huge integers; past this it gets MemoryError


def _serve() -> None:
    """Helper-process loop: one JSON request per stdin line -> one JSON reply per stdout line.

    Request {"gold": str, "pred": str, "timeout_s": float}; reply {"equal": bool, "error": str | None}.
    Runs on this process's main thread, so math-verify's signal.alarm timeouts work here.
    """
    import logging
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_HELPER_MEMORY_BYTES, _HELPER_MEMORY_BYTES))
    logging.disable(logging.CRITICAL)  # math-verify logs each timeout; the reply already says so
    from math_verify import parse
    from math_verify import verify as mv_verify
    from math_verify.errors import TimeoutException

    for line in sys.stdin:
        request = json.loads(line)
        alarm_s = max(1, int(request["timeout_s"]))  # signal.alarm takes whole seconds
        # A hang in C code ignores the alarm, so also cap this request's CPU time: the kernel then
        # kills this process even if the caller that should kill it has died.
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_limit = _pymath.ceil(used.ru_utime + used.ru_stime) + 3 * alarm_s + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, resource.RLIM_INFINITY))
        try:
            gold = parse(f"${request['gold']}$", parsing_timeout=alarm_s)
            pred = parse(f"${request['pred']}$", parsing_timeout=alarm_s)
            if not gold:
                reply = {"equal": False, "error": "math-verify could not parse the reference answer"}
            elif not pred:
                reply = {"equal": False, "error": "math-verify could not parse the answer"}
            else:
                reply = {"equal": bool(mv_verify(gold, pred, timeout_seconds=alarm_s)), "error": None}
        except TimeoutException:  # a BaseException: `except Exception` would let it kill the helper
            reply = {"equal": False, "error": "timeout"}
        except (MemoryError, RecursionError) as e:
            reply = {"equal": False, "error": f"math-verify {type(e).__name__}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class _Helper:
    """One helper process running `_serve`, spoken to over its stdin/stdout pipes."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from verifiers.math import _serve; _serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)

    def ask(self, request: dict, timeout_s: float) -> dict:
        """Send one request and wait at most timeout_s for the reply; TimeoutError or EOFError if not."""
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        deadline, reply, fd = time.monotonic() + timeout_s, b"", self.proc.stdout.fileno()
        while not reply.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            reply += chunk
        return json.loads(reply)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


_idle_helpers: list[_Helper] = []  # one per concurrent caller at most; reused across checks
_helpers_lock = threading.Lock()


@atexit.register
def _kill_idle_helpers() -> None:
    with _helpers_lock:
        while _idle_helpers:
            _idle_helpers.pop().kill()


def symbolic_equal(gold: str, pred: str, *, timeout_s: float = 5.0) -> tuple[bool, str | None]:
    """(equal, error) from math-verify in a helper process, killed if it takes over `timeout_s`."""
    with _helpers_lock:
        helper = _idle_helpers.pop() if _idle_helpers else None
    if helper is None:
        helper = _Helper()
    try:
        reply = helper.ask({"gold": gold, "pred": pred, "timeout_s": timeout_s}, timeout_s)
    except TimeoutError:
        helper.kill()
        return False, "timeout"
    except (EOFError, BrokenPipeError, json.JSONDecodeError):
        helper.kill()  # it died, e.g. out of memory or past its CPU limit
        return False, "math-verify helper process died"
    with _helpers_lock:
        _idle_helpers.append(helper)
    return reply["equal"], reply["error"]


# --- the verifier ------------------------------------------------------------------------------------


def score(completion: str, row: dict, *, think: bool = True, grader: str = "lenient",
          last_number: bool = True, timeout_s: float = 5.0) -> dict:
    """{"reward", "error", "answer"}: reward 1.0 when the extracted answer equals row["answer"], or any of
    row["answers"] when the row lists several accepted forms (Skywork's ["3", "x=3"], data/loaders.py)."""
    answers = row.get("answers")
    if isinstance(answers, list) and len(answers) > 1:
        first = None
        for a in answers:   # the first form that the answer equals; else the verdict on the main form
            res = score(completion, {**row, "answer": a, "answers": None}, think=think, grader=grader,
                        last_number=last_number, timeout_s=timeout_s)
            if res["reward"] == 1.0:
                return res
            first = first or res
        return first
    gold = row.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        return result(0.0, f"row {row.get('id')!r}: 'answer' must be a non-empty string", answer=None)
    text, error = graded_text(completion, think, grader)
    if text is None:
        return result(0.0, error, answer=None)
    if grader == "paper":
        pred = extract_boxed_answer(text)
        if pred is None:
            return result(0.0, "no \\boxed{} answer", answer=None)
    else:
        pred = extract_answer(text, last_number=last_number)
        if pred is None:
            return result(0.0, "no answer found", answer=None)
    if normalize(pred) == normalize(gold):
        return result(1.0, answer=pred)
    equal = numbers_equal(gold, pred)
    if equal is not None:
        return result(float(equal), answer=pred)
    if len(pred) > MAX_ANSWER_CHARS:
        return result(0.0, f"answer longer than {MAX_ANSWER_CHARS} characters", answer=pred[:100])
    equal, error = symbolic_equal(gold, pred, timeout_s=timeout_s)
    return result(float(equal), error, answer=pred)


def verify(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> float:
    """1.0 if the completion's final answer equals row["answer"] (see module docstring), else 0.0."""
    return score(completion, row, think=think, grader=grader)["reward"]
