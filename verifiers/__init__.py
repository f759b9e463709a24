"""Verifiable rewards for the four domains: one pure function per domain, looked up by row["domain"].

    from verifiers import VERIFIERS, verify_batch
    reward = VERIFIERS[row["domain"]](completion, row)             # float in [0, 1]
    results = verify_batch(completions, rows, workers=4)           # [{"reward", "error", ...}, ...]

    python bench/verifiers.py                                      # checks/s per domain
    python bench/agreement.py                                      # agreement with reference implementations

Each `verify(completion, row, *, think=True, grader="lenient") -> float` returns 0.0 or 1.0, never
raises and prints nothing. think=True (the default, for reasoning models) requires a `<think>` block
to be closed and grades only the text after the last `</think>`; pass think=False to grade the whole
completion. grader="paper" follows the graders the paper trains with (DeepScaleR's boxed math answer,
the GPQA "Answer: X" rule (or a boxed letter), pass-all on at most 20 tests, IFEvalG all-or-nothing, and no reward without
`</think>`); train.py and analyze.py use it by default, since the embedded world's completions have that
form. grader="lenient" (this function's default) also reads unboxed answers and completions without a
reasoning block, for models that were not trained to write them (a base model, another chat template).
Each domain's docstring has the table of what each grader accepts.
SCORERS holds the same domains' `score` functions, which return the reward together with the reason
for a 0 ("error") and domain extras (code and if: "passed"/"total"); verify_batch uses them.
"""

from concurrent.futures import ThreadPoolExecutor

from verifiers import code, ifeval, math, science
from verifiers.common import GRADERS

VERIFIERS = {"math": math.verify, "code": code.verify, "science": science.verify, "if": ifeval.verify}

SCORERS = {"math": math.score, "code": code.score, "science": science.score, "if": ifeval.score}


def verify_batch(completions: list[str], rows: list[dict], *, think: bool = True, workers: int = 4,
                 grader: str = "lenient") -> list[dict]:
    """Score completions[i] against rows[i] on a pool of `workers` threads, results in input order.

    Each result is {"reward": float, "error": str | None, ...domain extras}; error is None when the
    answer was graded (right or wrong) and names the problem otherwise (no answer found, timeout,
    unclosed <think>, malformed row). Threads suffice: code tests and math-verify run in child
    processes, so `workers` bounds how many of those run at once; the other domains take
    microseconds to milliseconds per check. A completion repeated for the same row object (a GRPO
    group often samples the same answer several times) is scored once and its result copied.
    Raises ValueError before any work if the lists differ in length, a row's domain is not in
    VERIFIERS, or grader is not one of GRADERS.
    """
    if len(completions) != len(rows):
        raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
    if grader not in GRADERS:
        raise ValueError(f"grader {grader!r} is not one of {', '.join(GRADERS)}")
    for i, row in enumerate(rows):
        if row.get("domain") not in SCORERS:
            raise ValueError(f"rows[{i}] (id {row.get('id')!r}): domain {row.get('domain')!r} is not one of "
                             f"{sorted(SCORERS)}")
    first = {}  # (completion, id(row)) -> index of its first occurrence; rows outlive this call
    for i, key in enumerate(zip(completions, map(id, rows))):
        first.setdefault(key, i)
    todo = sorted(set(first.values()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(todo, pool.map(lambda i: SCORERS[rows[i]["domain"]](completions[i], rows[i], think=think,
                                                                            grader=grader), todo)))
    return [dict(done[first[key]]) for key in zip(completions, map(id, rows))]
