"""Helpers shared by the four verifiers: the reasoning-block gate and the result dict.

Every domain module exposes two functions with the same arguments:

    score(completion, row, *, think=True) -> {"reward": float, "error": str | None, ...extras}
    verify(completion, row, *, think=True) -> float      # == score(...)["reward"]

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
