"""Helpers shared by the four verifiers: the reasoning-block gate and the result dict.

Every domain module exposes two functions with the same arguments:

    score(completion, row, *, think=True, grader="lenient") -> {"reward": float, "error": str | None, ...extras}
    verify(completion, row, *, think=True, grader="lenient") -> float      # == score(...)["reward"]

`verify` is the reward train.py uses; `score` also says why a completion got 0 (`error` is None for a
well-formed answer that is simply wrong, and names the problem otherwise), which is how training and
eval count malformed completions and verifier failures.
"""

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_think(completion: str, think: bool = True) -> str | None:
    """The part of `completion` to grade, or None when a reasoning block was opened and never closed.

    With think=True (the paper's reward for reasoning models) a completion that opens `<think>` must
    close it with `</think>`; only the text after the last `</think>` is graded. A completion with a
    `</think>` but no `<think>` is accepted too, because chat templates of reasoning models often put
    the opening tag in the prompt. With think=False the whole completion is graded as is.
    """
    if not think:
        return completion
    last_close = completion.rfind(THINK_CLOSE)
    if completion.rfind(THINK_OPEN) > last_close:  # an opening tag after the last close (or no close)
        return None
    return completion if last_close < 0 else completion[last_close + len(THINK_CLOSE):]


def result(reward: float, error: str | None = None, **extras) -> dict:
    """The dict every `score` returns: reward in [0, 1], error (None when the answer was graded), extras."""
    return {"reward": float(reward), "error": error, **extras}


UNCLOSED_THINK = "unclosed <think> block"
NO_THINK = "no </think>: the paper grader needs a closed reasoning block"

GRADERS = ("lenient", "paper")
"""lenient: the project's graders, which give the tiny CPU model a learning signal (math's last-number
fallback, no box needed, a completion without a reasoning block still graded). paper: the graders the
paper trains with (each domain's docstring says how they differ)."""


def graded_text(completion: str, think: bool, grader: str) -> tuple[str | None, str | None]:
    """(text to grade, None), or (None, why there is none) for an unknown grader or a bad reasoning block.

    Both graders refuse a <think> left open. With think=True the paper grader also refuses a
    completion without `</think>`: the paper's rewards grade only what follows the reasoning, so a
    completion that skipped it has no graded part.
    """
    if grader not in GRADERS:
        return None, f"unknown grader {grader!r} (expected one of {', '.join(GRADERS)})"
    text = strip_think(completion, think)
    if text is None:
        return None, UNCLOSED_THINK
    if think and grader == "paper" and THINK_CLOSE not in completion:
        return None, NO_THINK
    return text, None


def boxed_contents(text: str) -> list[str]:
    """The contents of every \\boxed{...} (and \\fbox{...}) in order of appearance, nested braces kept.

    A regex cannot match nested braces, so one pass over the braces keeps a stack; a box left open
    (the completion was cut off inside its answer) is dropped. Linear time, so a completion made of
    thousands of unclosed boxes cannot stall the verifier.
    """
    box_starts = {m.end() - 1: m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)}
    found, stack = [], []
    for brace in re.finditer(r"[{}]", text):
        i = brace.start()
        if text[i] == "{":
            stack.append(box_starts.get(i))  # content start for a box, None for any other brace
        elif stack:
            start = stack.pop()
            if start is not None:
                found.append((start, text[start:i]))
    return [content for _, content in sorted(found)]
