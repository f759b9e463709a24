"""Self-verification: the prompts that make a model judge a response, and the parsing of its verdict.

    from data.judge import judge_prompt, parse_verdict, judge_examples
    messages = judge_prompt(question, completion, "outcome")   # chat messages asking for "Verdict: yes|no"
    verdict = parse_verdict(judged_text)                       # True, False, or None (unparseable)
    demos = judge_examples("math", 100, seed=0)                # judging demonstrations for sft.py

The paper (M2RL, arXiv 2602.12566, Section 3.6, Table 7) uses each RL-trained model as a generative judge of
trajectories of its own domain, in two modes:
  outcome  the judge sees the problem and the final answer only (here: the text after the last </think>);
  process  the judge sees the whole response, reasoning included.
Judge accuracy is agreement with the rule verifier's label. The authors publish neither their judge prompts nor
their verdict parsing, so everything in this file is a reconstruction: the wording below, the "Verdict: yes" /
"Verdict: no" form, and the parsing rules of `parse_verdict`.

On the small world, sft.py mixes judging demonstrations (`judge_examples`) into the SFT data, so that the base
has a judge to measure at all. Each demonstration judges one SFT response (careful, slip or hasty teacher, so
both labels occur), in one of the two modes, and its target is `<think>PLAN</think>Verdict: yes|no`, where PLAN
is the careful solution of the problem: the judge solves, then compares. The label is the paper grader's
verdict on the response. They never enter an RL pool (data.embedded gives RL rows only).
"""

import random
import re

MODES = ("outcome", "process")

_ASK = {
    "outcome": "Here is a problem and the final answer someone gave.",
    "process": "Here is a problem and someone's whole response, reasoning included.",
}
_SHOWN = {"outcome": "Final answer", "process": "Response"}


def shown_response(completion: str, mode: str) -> str:
    """What the judge sees of a completion: its final answer (outcome: the text after the last </think>, or
    the whole text when there is none) or all of it (process)."""
    if mode not in MODES:
        raise ValueError(f"unknown judge mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode == "outcome":
        return completion.rsplit("</think>", 1)[-1].strip()
    return completion.strip()


def question_text(row: dict) -> str:
    """The problem as the solver saw it: the last user message of the row's prompt."""
    return [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]


def judge_prompt(question: str, completion: str, mode: str) -> list[dict]:
    """Chat messages asking the model to judge `completion` to `question` in `mode`."""
    shown = shown_response(completion, mode)
    text = (f"{_ASK[mode]} Is it correct?\n\nProblem:\n{question}\n\n{_SHOWN[mode]}:\n{shown}\n\n"
            "Reply with Verdict: yes or Verdict: no.")
    return [{"role": "user", "content": text}]


def verdict_text(correct: bool) -> str:
    return "Verdict: yes" if correct else "Verdict: no"


_VERDICT = re.compile(r"\bverdict\s*:\s*\**\s*(yes|no|correct|incorrect|right|wrong)\b", re.IGNORECASE)
_YES = {"yes", "correct", "right"}


def parse_verdict(text: str) -> bool | None:
    """True (judged correct), False (judged wrong) or None (no verdict to read).

    Read after the last </think> when the text has one; a <think> left open gives None. Accepted: one or more
    "Verdict: X" (any case, optional ** bold) with X in yes/correct/right (True) or no/incorrect/wrong (False),
    all agreeing. Refused (None): no "Verdict:" at all, a verdict word outside that list ("Verdict: maybe"),
    verdicts that disagree ("Verdict: yes ... Verdict: no").

    | text                                   | result |
    |----------------------------------------|--------|
    | "<think>7+5=12</think>Verdict: yes"    | True   |
    | "verdict: NO."                         | False  |
    | "**Verdict:** correct"                 | True   |
    | "Verdict: yes. Verdict: yes"           | True   |
    | "<think>Verdict: no</think>Verdict: yes" | True (only the text after </think>) |
    | "<think>still thinking"                | None   |
    | "Verdict: maybe"                       | None   |
    | "Verdict: yes, Verdict: no"            | None   |
    | "yes"                                  | None   |
    """
    if "<think>" in text and "</think>" not in text:
        return None
    tail = text.rsplit("</think>", 1)[-1]
    words = {m.group(1).lower() in _YES for m in _VERDICT.finditer(tail.replace("**", ""))}
    return words.pop() if len(words) == 1 else None


def plan_of(completion: str) -> str:
    """The text inside the first <think>...</think> block ("" when there is none)."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    return m.group(1) if m else ""


def judge_examples(domain: str, n: int, *, seed: int = 0) -> list[dict]:
    """n judging demonstrations of `domain` for sft.py: {"prompt", "completion", "teacher": "judge", "mode",
    "label"}. Each judges a response of data.embedded.sft_examples (so careful, slip and hasty responses, right
    and wrong), labelled with the paper grader's verdict; the mode alternates at random."""
    from data.embedded import sft_examples

    rng = random.Random(f"judge-{domain}-{seed}")
    out = []
    for demo in sft_examples(domain, n, seed=10_000 + seed):
        row, response = demo["row"], demo["completion"]
        correct = demo["right"]   # the paper grader's verdict, known from the teacher (no sandbox run per demo)
        mode = rng.choice(MODES)
        completion = f"<think>{plan_of(row['reference'])}</think>{verdict_text(correct)}"
        out.append({"prompt": judge_prompt(question_text(row), response, mode), "completion": completion,
                    "teacher": "judge", "mode": mode, "label": correct})
    return out
