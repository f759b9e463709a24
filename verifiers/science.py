"""Multiple-choice verifier: extract the chosen letter, exact match against row["answer"].

    from verifiers import science
    science.verify("... so the answer is (C).", {"answer": "C"})                      # 1.0
    science.verify("<think>...</think>Answer: C", {"answer": "C"}, grader="paper")   # 1.0

Two graders (grader=...), both on the text after the reasoning block; only capital letters count, so
the article "a" is never read as option A:
  lenient (default)  the first of these forms present in the text decides:
      1. \\boxed{C}, \\boxed{\\text{(C)}}
      2. an answer statement: "Answer: C", "The answer is (C)", "answer is option **C**",
         "The correct option is D.", "The answer is \\(C\\)."
      3. a parenthesised letter "(C)" anywhere
      4. the last line: a lone letter ("C", "C.", "**C**") or an option as listed ("D) 12.8 m/s")
  paper  the GPQA rule the paper evaluates with: "Answer: X" (any case, "$X$", "(X)" and "**X**"
      allowed), or, with no such line, a boxed letter "\\boxed{X}" (also "Answer: \\boxed{X}"), which
      the paper authors' science reward (NeMo Gym's mcqa server, strict_single_letter_boxed) takes and
      some of the blend's templates ask for; nothing else counts, so a completion without either scores
      0, and so does one without `</think>` when think=True.
A row that states its own answer format (row["output_regex"], the blend's template_metadata.output_regex,
e.g. "Option Selected:\\s*([A-Za-z])") is graded by it under both graders: the letter of its last
match decides (one letter, any case); with no match, the grader's usual forms apply.
A completion that names two different letters scores 0 under both: in the deciding form ("Answer: A
... Answer: B", "(A) (B)"), or in one statement ("The answer is (D) or (B).", "Answer: A and C",
"A/C"). Under RL a policy would otherwise learn to list several options.

Accepted and refused forms (reference C unless said), each one a test in tests/test_verifiers.py:

    | completion                                | lenient | paper | why                              |
    |-------------------------------------------|---------|-------|----------------------------------|
    | <think>..</think>Answer: C                 | 1       | 1     |                                  |
    | The answer is (C).                         | 1       | 0     | paper: no "Answer:" line, no think|
    | The correct option is C.                   | 1       | 0     |                                  |
    | The answer is \\(C\\).                       | 1       | 0     |                                  |
    | reasoning, then a last line "C) 12.8 m/s"  | 1       | 0     |                                  |
    | The answer is (C) or (B).                  | 0       | 0     | two letters                      |
    | Answer: A and C                            | 0       | 0     | two letters                      |
    | (A) (B) (C) (D)                            | 0       | 0     | two letters                      |
    | a dog                                      | 0       | 0     | lowercase "a" is not option A    |
    | Answer: \\boxed{C}                           | 1       | 1     | the paper authors' boxed letter  |
    | \\boxed{C}                                   | 1       | 1     |                                  |
    | Option Selected: C (row's output_regex)    | 1       | 1     | the row's own format             |
"""

import re

from verifiers.common import boxed_contents, graded_text, result

_BOXED_LETTER = re.compile(r"^\s*(?:\\(?:text|textbf|mathrm|mathbf)\s*\{)?\s*\(?\s*([A-Z])\b")
_OPEN = r"[*_\s]*(?:\\\(|\$|\\text(?:bf)?\{)?\s*[(\[]?\s*"  # markup that may stand before the letter
_LETTER = r"([A-Z])\b(?![-'])"
_STATEMENT = re.compile(
    r"(?:(?i:answer)\s*(?i:is)?|(?i:correct|right|best|final)\s+(?i:option|choice|answer)\s*(?i:is)?)"
    r"\s*[:=\-]?\s*(?i:option|choice)?\s*[:\-]?" + _OPEN + _LETTER)
_PAPER_STATEMENT = re.compile(r"(?i:answer)[ \t]*:" + _OPEN + _LETTER)
# What follows a statement's letter when it names a second one: "(D) or (B)", "A and C", "A/C", "A, C".
_SECOND_LETTER = re.compile(r"\s*[)\]]?\s*(?:\\\)|\$|\})?[*_]*\s*(?:,|/|&|\bor\b|\band\b)\s*(?i:option\s*)?"
                            r"[(\[]?\s*(?!I\s+[a-z])[A-Z]\b(?![-'])")  # not "A and I think"
_PARENS = re.compile(r"\(([A-Z])\)")
_LONE = re.compile(r"^[*_\s]*[(\[]?([A-Z])[)\].:]?[*_\s]*$")
_LISTED_OPTION = re.compile(r"^[*_\s]*\(?([A-Z])\)\s+\S")  # "D) 12.8 m/s", "(D) 12.8 m/s"


def _statement_letters(pattern: re.Pattern, text: str) -> set[str] | None:
    """The letters that statements name, or None if one statement names two letters."""
    letters = set()
    for m in pattern.finditer(text):
        if _SECOND_LETTER.match(text, m.end()):
            return None
        letters.add(m.group(1))
    return letters


def row_format_choice(text: str, output_regex) -> str | None:
    """The letter of the last match of a row's own answer regex (its group 1, else the whole match), or None
    when there is no regex, it does not compile or nothing matches."""
    if not isinstance(output_regex, str) or not output_regex:
        return None
    try:
        matches = list(re.finditer(output_regex, text))
    except re.error:
        return None
    if not matches:
        return None
    letter = (matches[-1].group(1) if matches[-1].re.groups else matches[-1].group(0)).strip()
    return letter.upper() if len(letter) == 1 and letter.isalpha() else None


def extract_choice(text: str, grader: str = "lenient") -> str | None:
    """The single capital letter the text commits to, or None if there is none or it is ambiguous."""
    boxed = {m.group(1) for content in boxed_contents(text) if (m := _BOXED_LETTER.match(content))}
    if grader == "paper":
        letters = _statement_letters(_PAPER_STATEMENT, text)
        if letters is not None and not letters:   # no "Answer: X" line: a boxed letter, as the authors' reward
            letters = boxed
        return letters.pop() if letters and len(letters) == 1 else None
    statements = _statement_letters(_STATEMENT, text)
    if statements is None:
        return None
    for letters in (boxed, statements, set(_PARENS.findall(text))):
        if letters:
            return letters.pop() if len(letters) == 1 else None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = (_LONE.match(lines[-1]) or _LISTED_OPTION.match(lines[-1])) if lines else None
    return match.group(1) if match else None


def score(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> dict:
    """{"reward", "error", "choice"}: reward 1.0 when the extracted letter equals row["answer"]."""
    gold = row.get("answer")
    if not isinstance(gold, str) or not re.fullmatch(r"\s*[A-Za-z]\s*", gold):
        return result(0.0, f"row {row.get('id')!r}: 'answer' must be one letter, got {gold!r}", choice=None)
    text, error = graded_text(completion, think, grader)
    if text is None:
        return result(0.0, error, choice=None)
    choice = row_format_choice(text, row.get("output_regex")) or extract_choice(text, grader)
    if choice is None:
        return result(0.0, "no single answer letter found", choice=None)
    return result(float(choice == gold.strip().upper()), choice=choice)


def verify(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> float:
    """1.0 if the completion's chosen letter equals row["answer"], else 0.0. Never raises."""
    return score(completion, row, think=think, grader=grader)["reward"]
