"""Math verifier: extract the final answer, compare it with row["answer"]; binary reward.

    from verifiers import math
    math.verify("... so the total is \\boxed{\\frac{1}{2}}", {"answer": "0.5"})   # 1.0

Answer extraction (first that applies, on the text after the reasoning block):
  1. the last \\boxed{...} (nested braces kept whole);
  2. the last answer statement: "Answer: 42", "The final answer is $x^2$.", "#### 42" (GSM8K);
  3. the last number in the text ("-3", "1,000", "2.5", "3/4"). This fallback is deliberately lenient:
     a tiny model that emits just "42" (or "the sum is 42") still earns its reward, which gives the
     embedded CPU run a learning signal. It also rewards a stray correct number at the end of a wrong
     derivation; turn it off with last_number=False to measure how much that matters.

Comparison, cheapest first:
  1. string equality after normalisation (spaces, $, \\left/\\right, \\dfrac, trailing ".", ...);
  2. exact rational equality when both sides are plain numbers ("0.5" == "1/2" == "\\frac{1}{2}");
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

from verifiers.common import UNCLOSED_THINK, boxed_contents, result, strip_think

MAX_ANSWER_CHARS = 1000  # longer extracted answers are not sent to sympy: they are never a final answer

# --- answer extraction -----------------------------------------------------------------------------

_STATEMENT = re.compile(r"(?:(?i:answer)\s*(?i:is)?\s*[:=]?|^\s*####)[ \t]*(.+)$", re.MULTILINE)
_LAST_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


def _clean_statement(text: str) -> str:
    """'$\\frac{1}{2}$. Thus we are done' -> '\\frac{1}{2}': cut the sentence, drop markdown and $."""
    text = re.split(r"\.\s|\.$|,\s|;\s", text.strip(), maxsplit=1)[0]
    text = text.strip().strip("*_ ").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left):len(text) - len(right)]
    return text.strip()


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    """The final answer written in `text` (see the module docstring for the forms), or None."""
    boxed = [b.strip() for b in boxed_contents(text) if b.strip()]
    if boxed:
        return boxed[-1]
    statements = [s for s in (_clean_statement(m.group(1)) for m in _STATEMENT.finditer(text)) if s]
    if statements:
        return statements[-1]
    numbers = _LAST_NUMBER.findall(text) if last_number else []
    return numbers[-1] if numbers else None


# --- cheap comparisons -----------------------------------------------------------------------------


def normalize(answer: str) -> str:
    """A canonical string for the fast path: same string after this means the same answer."""
    s = answer.strip().replace("$", "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]", "", s)  # LaTeX spacing commands
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees
    s = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def as_number(answer: str) -> Fraction | None:
    """The exact value of a plain number ('-3', '1,000', '2.5', '3/4', '\\frac{3}{4}'), else None."""
    s = normalize(answer)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^([-+]?)\\frac\{(\d+)\}\{(\d+)\}$", r"\1\2/\3", s)
    s = re.sub(r"^([-+]?)\\frac(\d)(\d)$", r"\1\2/\3", s)  # \frac12
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except ZeroDivisionError:
        return None


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


def score(completion: str, row: dict, *, think: bool = True, last_number: bool = True,
          timeout_s: float = 5.0) -> dict:
    """{"reward", "error", "answer"}: reward 1.0 when the extracted answer equals row["answer"]."""
    gold = row.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        return result(0.0, f"row {row.get('id')!r}: 'answer' must be a non-empty string", answer=None)
    text = strip_think(completion, think)
    if text is None:
        return result(0.0, UNCLOSED_THINK, answer=None)
    pred = extract_answer(text, last_number=last_number)
    if pred is None:
        return result(0.0, "no answer found", answer=None)
    if normalize(pred) == normalize(gold):
        return result(1.0, answer=pred)
    gold_number, pred_number = as_number(gold), as_number(pred)
    if gold_number is not None and pred_number is not None:
        return result(float(gold_number == pred_number), answer=pred)
    if len(pred) > MAX_ANSWER_CHARS:
        return result(0.0, f"answer longer than {MAX_ANSWER_CHARS} characters", answer=pred[:100])
    equal, error = symbolic_equal(gold, pred, timeout_s=timeout_s)
    return result(float(equal), error, answer=pred)


def verify(completion: str, row: dict, *, think: bool = True) -> float:
    """1.0 if the completion's final answer equals row["answer"] (see module docstring), else 0.0."""
    return score(completion, row, think=think)["reward"]
