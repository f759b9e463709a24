"""The embedded small world (data/embedded.py): item kinds that exercise the skills they claim, content held out of
every training source, rows that follow the schema, references recomputed independently, and the SFT teachers."""

import importlib
import random
import re
from collections import Counter

import pytest

import data
world = importlib.import_module("data.embedded")   # data.embedded is also the function
from verifiers import verify_batch


def _text(row):
    return row["prompt"][-1]["content"]


# ----------------------------------------------------------------------------- rows, sizes, determinism

@pytest.mark.parametrize("domain", data.DOMAINS)
def test_embedded_is_deterministic_and_seeded(domain):
    a = data.embedded(domain, "train", n=120, seed=0)
    assert a == data.embedded(domain, "train", n=120, seed=0)
    assert [r["id"] for r in a] != [r["id"] for r in data.embedded(domain, "train", n=120, seed=1)]


@pytest.mark.parametrize("domain", data.DOMAINS)
def test_eval_split_has_200_distinct_problems_at_the_eval_shares(domain):
    rows = data.embedded(domain, "eval")
    assert len(rows) == 200 and len({_text(r) for r in rows}) == 200 and len({r["id"] for r in rows}) == 200
    for n in (7, 50, 200):   # every prefix holds the eval shares, to within one row per kind
        got = Counter(r["kind"] for r in rows[:n])
        assert all(abs(got[k] - n * w) < 1 for k, w in world.EVAL_KINDS[domain].items()), (n, got)
    assert data.embedded(domain, "eval", n=50) == rows[:50]
    for r in rows:
        assert data.validate_row(r, "embedded") is r and r["domain"] == domain
        assert re.fullmatch(r"<think>[^<]*</think>.+", r["reference"], re.S), r["reference"]


def test_kinds_knob_sets_the_pool_and_refuses_composite():
    rows = data.load("embedded", ["math", "if"], "train", kinds="shared=1,conflict=3")
    for d in ("math", "if"):
        assert Counter(r["kind"] for r in rows if r["domain"] == d) == {"shared": 200, "conflict": 600}, d
    assert world.parse_kinds("specific=2,conflict=2") == {"specific": 0.5, "conflict": 0.5}
    for bad in ("composite=1", "shared=x", "shared=0", "plan=1", ""):
        with pytest.raises(ValueError):
            world.parse_kinds(bad)
    # the RL default holds no composite item: those are for eval and SFT only
    assert "composite" not in {r["kind"] for d in data.DOMAINS for r in data.embedded(d, "train", n=100)}


# ----------------------------------------------------------------------------- content held out

def _independent_key(row) -> str:
    """What a problem asks, read from its prompt alone (not data/embedded.py's content_key): the question with the
    names, the items and the "Be brief." cue taken out (math, science, code, if composites), the instruction set,
    its arguments and the topic (if)."""
    text = _text(row).replace(world.CUE, "")
    if row["domain"] == "if" and row["kind"] != "composite":   # a composite item is about its word problem
        ids = tuple(sorted(row["instruction_id_list"]))
        return repr((ids, [sorted(k.items()) for k in row["kwargs"]], text.split(".")[0]))
    for word in world.NAMES + world.ITEMS:
        text = re.sub(rf"\b{word}\b", "_", text)
    return text


@pytest.mark.parametrize("domain", data.DOMAINS)
def test_eval_content_never_occurs_in_sft_or_rl(domain):
    """No eval problem's content (its computation, function or instruction set) is in the SFT demonstrations or in
    any RL pool, of any seed and any kind mix: by data/embedded.py's content keys and by an independent reading
    of the prompts."""
    evals = [r for s in (0, 1) for r in data.embedded(domain, "eval", n=300, seed=s)]
    train = [r for s in (0, 1) for kinds in (None, {"conflict": 1.0}, {"specific": 1.0})
             for r in data.embedded(domain, "train", n=400, seed=s, kinds=kinds)]
    train += [e["row"] for e in data.sft_examples(domain, 1500, seed=0)]
    for key in (world.content_key, _independent_key):
        assert not {key(r) for r in evals} & {key(r) for r in train}, key.__name__
    assert not {_text(r) for r in evals} & {_text(r) for r in train}


# ----------------------------------------------------------------------------- skills: a scripted policy

SKILLS = ("plan", "specific", "brief", "compose")


def scripted(kind: str, domain: str, variants: dict, skills: set, brief_everywhere: bool = False) -> str:
    """The completion of a policy with `skills`: plan (plan before answering), specific (the domain's own skill),
    brief (skip the plan when told "Be brief." in IF; with brief_everywhere, in every domain), compose (carry a word
    problem's answer into another domain's answer)."""
    if kind == "shared":
        return variants["careful" if "plan" in skills else "hasty"]
    if kind == "specific":
        return variants["careful" if "specific" in skills else "confused"]
    if kind == "conflict":
        terse = "brief" in skills and (domain == "if" or brief_everywhere) or "plan" not in skills
        return variants["terse" if terse else "full"]
    if "plan" not in skills:
        return variants["hasty"]
    return variants["careful" if "compose" in skills else "slip"]


def _items(domain: str, n: int = 12):
    for kind, gen in world.PROBLEMS[domain].items():
        rng = random.Random(f"test-{domain}-{kind}")
        for _ in range(n):
            yield kind, *gen(rng)


# Which kinds of each domain need a skill (the module docstring's claims), written out by hand.
NEEDS = {
    "plan": {"math": {"shared", "conflict"}, "science": {"shared", "conflict"}, "code": {"shared", "conflict", "composite"},
             "if": {"shared", "composite"}},
    "specific": {d: {"specific"} for d in data.DOMAINS},
    "brief": {"math": set(), "science": set(), "code": set(), "if": {"conflict"}},
    "compose": {"math": set(), "science": set(), "code": {"composite"}, "if": {"composite"}},
}


@pytest.mark.parametrize("domain", data.DOMAINS)
def test_a_policy_without_one_skill_loses_exactly_the_items_that_need_it(domain):
    items = list(_items(domain))
    rows = [row for _, row, _ in items]

    def rewards(skills, **kw):
        done = [scripted(kind, domain, variants, skills, **kw) for kind, _, variants in items]
        return [r["reward"] for r in verify_batch(done, rows, grader="paper")]

    assert rewards(set(SKILLS)) == [1.0] * len(items)
    for skill in SKILLS:
        lost = {kind for (kind, _, _), r in zip(items, rewards(set(SKILLS) - {skill})) if r == 0.0}
        kept = {kind for (kind, _, _), r in zip(items, rewards(set(SKILLS) - {skill})) if r == 1.0}
        assert lost == NEEDS[skill][domain] and not lost & kept, (skill, lost, kept)
    # the conflict: skipping the plan whenever told to be brief (the IF lesson applied everywhere) loses the
    # reasoning domains' conflict items, and only those
    lost = {kind for (kind, _, _), r in zip(items, rewards(set(SKILLS), brief_everywhere=True)) if r == 0.0}
    assert lost == (set() if domain == "if" else {"conflict"})


def test_specific_items_use_cues_no_other_domain_has():
    """A domain-specific skill is keyed to words that no other domain's prompts contain, so no other reward can
    reach it."""
    cues = {"math": [v for v, _, _, _ in world.MATH_VERBS], "science": [f"{a} are there in" for _, a, _, _ in world.CONVERSIONS],
            "code": ["characters of s", "rounded down", "remainder", "to the power", "without its first"],
            "if": ["Start your answer with the word", "End your answer with the word", "at least twice"]}
    texts = {d: [_text(r) for r in data.embedded(d, "train", n=400) + data.embedded(d, "eval")] for d in data.DOMAINS}
    for d, words in cues.items():
        for w in words:
            assert any(w in t for t in texts[d]), (d, w)
            assert not any(w in t for o in data.DOMAINS if o != d for t in texts[o]), (d, w)


# ----------------------------------------------------------------------------- references, recomputed

def test_math_answers_recomputed_from_the_question():
    formulas = [
        (r"has (\d+) \w+, gets (\d+) more and gives away (\d+)", lambda a, b, c: a + b - c),
        (r"buys (\d+) boxes of (\d+) \w+ and gives away (\d+)", lambda a, b, c: a * b - c),
        (r"has (\d+) \w+\. \w+ has (\d+) more than", lambda a, b: a + (a + b)),
        (r"shares (\d+) \w+ equally among (\d+) friends, and each friend gives away (\d+)", lambda p, b, c: p // b - c),
        (r"has (\d+) \w+\. It sells (\d+) in the morning and (\d+)", lambda a, b, c: a - b - c),
        (r"What is (\d+) \+ (\d+) \* (\d+)\?", lambda a, b, c: a + b * c),
        (r"What is \((\d+) \+ (\d+)\) \* (\d+)\?", lambda a, b, c: (a + b) * c),
        (r"has (\d+) \w+\. The number of \w+ doubles, then \w+ gives away (\d+)", lambda a, c: 2 * a - c),
        (r"has (\d+) \w+\. The number of \w+ triples, then \w+ gives away (\d+)", lambda a, c: 3 * a - c),
        (r"has (\d+) \w+\. The number of \w+ quadruples, then \w+ gives away (\d+)", lambda a, c: 4 * a - c),
        (r"has (\d+) \w+\. The number of \w+ is halved, then \w+ gives away (\d+)", lambda a, c: a // 2 - c),
        (r"has (\d+) \w+\. The number of \w+ is cut to a third, then \w+ gives away (\d+)", lambda a, c: a // 3 - c),
    ]
    seen = set()
    for r in data.embedded("math", "train", n=600) + data.embedded("math", "eval"):
        q = _text(r)
        hits = [(i, f(*map(int, m.groups()))) for i, (p, f) in enumerate(formulas) if (m := re.search(p, q))]
        assert len(hits) == 1, q
        seen.add(hits[0][0])
        assert int(r["answer"]) == hits[0][1] >= 0, q
        plan, answer = re.fullmatch(r"<think>(.*)</think>\\boxed\{(\d+)\}", r["reference"]).groups()
        steps = [(e, int(v)) for e, v in re.findall(r"([\d+\-*/]+)=(\d+)", plan)]
        assert len(steps) == 2 and all(eval(e) == v for e, v in steps) and steps[-1][1] == int(answer), r["reference"]
    assert seen == set(range(len(formulas)))


def test_code_references_pass_and_every_wrong_variant_fails_in_process():
    """Run each program in this process (independent of the sandboxed verifier)."""
    for kind, row, variants in _items("code", n=40):
        for name, completion in variants.items():
            program = re.fullmatch(r"<think>.*</think>```python\n(.*)```", completion, re.S)[1]
            right = name in ("careful", "full")
            try:
                exec(program + row["tests"]["code"] + "check(f)\n", {})
                passed = True
            except (AssertionError, TypeError):
                passed = False
            assert passed == right, (kind, name, completion)


def test_science_answers_recomputed_from_the_question():
    physics = {r"travels (\d+) km in (\d+) hours": lambda d, t: d / t, r"gives a (\d+) kg mass an acceleration of (\d+)":
               lambda m, a: m * a, r"mass of (\d+) g and a volume of (\d+) cm": lambda m, v: m / v,
               r"current of (\d+) A flows through a (\d+) ohm": lambda i, r: i * r, r"draws (\d+) A at (\d+) V": lambda i, v: i * v,
               r"frequency of (\d+) Hz and a wavelength of (\d+) m": lambda f, w: f * w}
    factors = {("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("hours", "minutes"): 60,
               ("minutes", "seconds"): 60, ("kg", "g"): 1000, ("L", "mL"): 1000}
    letters = Counter()
    for r in data.embedded("science", "train", n=600) + data.embedded("science", "eval"):
        question, options = _text(r).split("\n\n")[1], dict(re.findall(r"^([A-D])\. (.+)$", _text(r), re.M))
        assert list(options) == list("ABCD") and len(set(options.values())) == 4
        chosen = options[r["answer"]]
        letters[r["answer"]] += 1
        if m := re.match(r"How many (\w+) are there in (\d+) (\w+)\?", question):
            assert int(chosen) == int(m[2]) * factors[(m[3], m[1])], question
            continue
        value = next(f(*map(int, m.groups())) for p, f in physics.items() if (m := re.search(p, question)))
        if m := re.match(r"under (\d+) ", chosen):
            assert value < int(m[1]), (question, chosen)
        elif m := re.match(r"(\d+) or more ", chosen):
            assert value >= int(m[1]), (question, chosen)
        else:
            low, high = map(int, re.match(r"(\d+) (?:to|or) (\d+) ", chosen).groups())
            assert low <= value <= high, (question, chosen)
    assert all(letters[x] > sum(letters.values()) / 20 for x in "ABCD")


def test_if_references_satisfy_their_instructions():
    """Independent spot checks of every instruction the rows use."""
    seen = set()
    for r in data.embedded("if", "train", n=600) + data.embedded("if", "eval"):
        ref = r["reference"].split("</think>")[1]
        words = re.findall(r"\w+", ref)
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            seen.add(iid)
            check = {
                "punctuation:no_comma": lambda: "," not in ref,
                "startend:end_checker": lambda: ref.rstrip('"').endswith(kw["end_phrase"]),
                "startend:quotation": lambda: ref.startswith('"') and ref.endswith('"'),
                "detectable_format:title": lambda: re.search(r"<<[^\n]+>>", ref),
                "keywords:existence": lambda: all(k in ref.lower() for k in kw["keywords"]),
                "keywords:forbidden_words": lambda: not any(re.search(rf"\b{w}\b", ref, re.I) for w in kw["forbidden_words"]),
                "detectable_content:postscript": lambda: "P.S." in ref,
                "change_case:capital_word_frequency": lambda: sum(w.isupper() for w in re.findall(r"\b[A-Za-z]+\b", ref)) >= 2,
                "length_constraints:number_words": lambda: len(words) < kw["num_words"],
                "detectable_format:number_highlighted_sections": lambda: re.search(r"\*[^*\n]+\*", ref),
                "first_word:first_word_answer": lambda: words[0].lower() == kw["first_word"],
                "last_word:last_word_answer": lambda: words[-1].lower() == kw["last_word"],
                "keywords:frequency": lambda: len(re.findall(kw["keyword"], ref, re.I)) >= kw["frequency"],
            }[iid]
            assert check(), (iid, ref)
    assert seen == set(world.IF_IDS) | {"first_word:first_word_answer", "last_word:last_word_answer", "keywords:frequency"}


# ----------------------------------------------------------------------------- the SFT teachers

@pytest.mark.parametrize("domain", data.DOMAINS)
def test_sft_teachers_in_their_shares_and_graded_as_claimed(domain):
    examples = data.sft_examples(domain, 400, seed=3)
    assert examples == data.sft_examples(domain, 400, seed=3)
    assert Counter(e["kind"] for e in examples) == world.kind_counts(400, world.SFT_KINDS[domain])
    results = verify_batch([e["completion"] for e in examples], [e["row"] for e in examples], grader="paper")
    for e, res in zip(examples, results):
        right = e["teacher"] in ("careful", "full") if not (domain == "if" and e["kind"] == "conflict") else e["teacher"] == "terse"
        assert res["reward"] == float(right) == float(e["right"]), (e, res)
        assert e["completion"].startswith("<think></think>") == (e["teacher"] in ("hasty", "terse")), e
        if right:
            assert e["completion"] == e["row"]["reference"]
    for kind, teachers in world.TEACHERS.items():
        mine = [e["teacher"] for e in examples if e["kind"] == kind]
        for teacher, p in teachers if mine else ():
            assert mine.count(teacher) / len(mine) == pytest.approx(p, abs=0.15), (kind, teacher)
