"""Multiple-choice verifier: extract the chosen letter, exact match against row["answer"].

    from verifiers import science
    science.verify("... so the answer is (C).", {"answer": "C"})   # 1.0

Forms recognised, most explicit first; the first form present in the graded text decides:
  1. \\boxed{C}, \\boxed{\\text{(C)}}
  2. an answer statement: "Answer: C", "The answer is (C)", "answer is option **C**"
  3. a parenthesised letter "(C)" anywhere
  4. a lone letter as the whole text or its last line: "C", "C.", "**C**"
Only capital letters count, so the article "a" is never read as option A. If the deciding form names
two different letters ("Answer: A ... Answer: B", or "(A) or (B)") the completion is ambiguous and
scores 0: listing every option must not be rewarded.
"""

import re

from verifiers.common import UNCLOSED_THINK, boxed_contents, result, strip_think

_BOXED_LETTER = re.compile(r"^\s*(?:\\(?:text|textbf|mathrm|mathbf)\s*\{)?\s*\(?\s*([A-Z])\b")
_STATEMENT = re.compile(
    r"(?i:answer)\s*(?i:is)?\s*[:=\-]?\s*(?i:option|choice)?\s*[:\-]?\s*[*_]*\s*[(\[]?\s*([A-Z])\b(?![-'])")
_PARENS = re.compile(r"\(([A-Z])\)")
_LONE = re.compile(r"^[*_\s]*[(\[]?([A-Z])[)\].:]?[*_\s]*$")


def extract_choice(text: str) -> str | None:
    """The single capital letter the text commits to, or None if there is none or it is ambiguous."""
    boxed = {m.group(1) for content in boxed_contents(text) if (m := _BOXED_LETTER.match(content))}
    for letters in (boxed, set(_STATEMENT.findall(text)), set(_PARENS.findall(text))):
        if letters:
            return letters.pop() if len(letters) == 1 else None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _LONE.match(lines[-1]) if lines else None
    return match.group(1) if match else None


def score(completion: str, row: dict, *, think: bool = True) -> dict:
    """{"reward", "error", "choice"}: reward 1.0 when the extracted letter equals row["answer"]."""
    gold = row.get("answer")
    if not isinstance(gold, str) or not re.fullmatch(r"\s*[A-Za-z]\s*", gold):
        return result(0.0, f"row {row.get('id')!r}: 'answer' must be one letter, got {gold!r}", choice=None)
    text = strip_think(completion, think)
    if text is None:
        return result(0.0, UNCLOSED_THINK, choice=None)
    choice = extract_choice(text)
    if choice is None:
        return result(0.0, "no single answer letter found", choice=None)
    return result(float(choice == gold.strip().upper()), choice=choice)


def verify(completion: str, row: dict, *, think: bool = True) -> float:
    """1.0 if the completion's chosen letter equals row["answer"], else 0.0. Never raises."""
    return score(completion, row, think=think)["reward"]
