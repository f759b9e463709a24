"""Table-driven tests of the four verifiers: right, wrong, malformed and adversarial completions.

    python -m pytest -q tests/test_verifiers.py

Expected values are worked out by hand from the rules in each verifier's docstring. The code
sandbox's attack list lives in tests/test_sandbox.py.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from verifiers import SCORERS, VERIFIERS, code, ifeval, math, science, verify_batch
from verifiers.common import boxed_contents, strip_think


def test_registry_covers_the_four_domains():
    assert list(VERIFIERS) == list(SCORERS) == ["math", "code", "science", "if"]
    with pytest.raises(KeyError):
        VERIFIERS["maths"]


# --- the reasoning-block gate ----------------------------------------------------------------------

@pytest.mark.parametrize("completion, think, graded", [
    ("plain answer", True, "plain answer"),
    ("<think>reasoning</think>final", True, "final"),
    ("reasoning</think>final", True, "final"),                 # template put <think> in the prompt
    ("<think>a</think>b<think>c</think>d", True, "d"),         # only after the last </think>
    ("<think>never closed", True, None),
    ("<think>a</think>b<think>reopened", True, None),
    ("<think>never closed", False, "<think>never closed"),
])
def test_strip_think(completion, think, graded):
    assert strip_think(completion, think) == graded


@pytest.mark.parametrize("text, contents", [
    (r"\boxed{1} and \boxed{\frac{1}{2}}", ["1", r"\frac{1}{2}"]),
    (r"\boxed{a{b}c} \fbox{d}", ["a{b}c", "d"]),
    (r"\boxed{\boxed{3}", ["3"]),                              # the outer box is never closed
    ("no box", []),
])
def test_boxed_contents(text, contents):
    assert boxed_contents(text) == contents


def test_boxed_contents_is_linear_on_unclosed_boxes():
    assert boxed_contents("\\boxed{" * 50_000) == []


# --- math ------------------------------------------------------------------------------------------

MATH_CASES = [
    # right
    (r"So the result is \boxed{\frac{1}{2}}.", "0.5", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("Final answer: $x^2+2x+1$", "(x+1)^2", 1.0),             # symbolic
    ("#### 1,000", "1000", 1.0),
    ("I think it is 7", "7", 1.0),                             # last-number fallback
    ("7", "7", 1.0),
    (r"\boxed{\{1,2\}}", r"\{2,1\}", 1.0),                     # sets: order does not matter
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", 1.0),
    ("Answer: x = 3", "3", 1.0),
    ("<think>is it 5?</think>The answer is 4.", "4", 1.0),
    (r"\boxed{4} so \boxed{4}", "4", 1.0),                     # the same answer boxed twice
    # wrong
    (r"\boxed{3}", "4", 0.0),
    ("The answer is 41.", "42", 0.0),
    (r"\boxed{x^2}", "x^3", 0.0),
    (r"\boxed{[0,1)}", "[0,1]", 0.0),
    (r"\boxed{-5}", "5", 0.0),
    ("It is 42 not 41", "42", 0.0),                            # the last number is 41
    ("The answer is 3 or 4", "4", 0.0),                        # hedging is not an answer
    (r"\boxed{3} no wait \boxed{4}", "4", 0.0),                # two different final answers
    # malformed
    ("", "4", 0.0),
    ("no numbers here", "4", 0.0),
    (r"<think>\boxed{4}", "4", 0.0),                           # unclosed reasoning block
]


@pytest.mark.parametrize("completion, gold, reward", MATH_CASES)
def test_math(completion, gold, reward):
    assert math.verify(completion, {"answer": gold}) == reward


# (completion, reference, lenient reward, paper reward): the table in verifiers/math.py's docstring and
# every case of issue 12. "T" stands for a closed reasoning block, which the paper grader needs.
T = "<think>reasoning</think>"
MATH_GRADER_CASES = [
    (r"so it is \boxed{\frac{1}{2}}", "0.5", 1.0, 0.0),                       # paper: no </think>
    (T + r"so it is \boxed{\frac{1}{2}}", "0.5", 1.0, 1.0),
    (T + r"\boxed{3} or \boxed{4}", "4", 0.0, 0.0),                          # two different final answers
    (T + r"\boxed{2} and \boxed{3}", "2, 3", 1.0, 1.0),                      # several boxes: one list answer
    (T + r"\boxed{2} and \boxed{3}", r"\{2, 3\}", 1.0, 1.0),
    (T + "The answer is 3 or 4", "4", 0.0, 0.0),
    (T + r"$\frac{1+\sqrt{5}}{2}$", "2", 0.0, 0.0),                          # the 2 is inside an expression
    (T + "so we get 5^2", "2", 0.0, 0.0),
    (T + "it equals 10 - 2", "2", 0.0, 0.0),
    (T + "it equals 10 - 2", "8", 0.0, 0.0),
    (T + r"\boxed{32, 349}", "32349", 0.0, 0.0),                              # a list, not 32,349
    (T + r"\boxed{32,349}", "32349", 1.0, 1.0),                               # thousands separator
    (T + "Final Answer: The largest $n$ is 34.", "34", 1.0, 0.0),             # paper: no box
    (T + r"Final Answer: The largest $n$ is $\boxed{34}$.", "34", 1.0, 1.0),
    (T + "The answer is $E$.", "E", 1.0, 0.0),                                # a text answer
    (T + r"\boxed{\text{(E)}}", "E", 1.0, 1.0),
    (T + r"\boxed{0.0833333333333333}", "1/12", 1.0, 1.0),                    # 6+ places: rounding allowed
    (T + r"\boxed{0.0833}", "1/12", 0.0, 0.0),                                # too few places
    (T + r"\boxed{0.333}", r"\frac{1}{3}", 0.0, 0.0),
    (T + "The answer is 0,111", "0.111", 1.0, 0.0),                           # decimal comma
    (T + r"\boxed{0,111}", "0.111", 1.0, 1.0),
    (T + "#### 1,000", "1000", 1.0, 0.0),
    (T + "x=5", "5", 1.0, 0.0),                                               # an equation's value
    (T + r"\boxed{1 2}", "12", 0.0, 0.0),                                      # two numbers, not 12
    (T + r"\boxed{1 000}", "1000", 1.0, 1.0),                                  # a space groups thousands
    (T + r"Scratch: \boxed{3}. Answer: \boxed{4}", "4", 0.0, 1.0),           # paper: after the last Answer:
    (T + r"Scratch: \boxed{3}. Answer: \boxed{4}", "3", 0.0, 0.0),
    (T + r"Answer: 4", "4", 1.0, 0.0),
    ("I think it is 7", "7", 1.0, 0.0),
]


@pytest.mark.parametrize("completion, gold, lenient, paper", MATH_GRADER_CASES)
def test_math_graders(completion, gold, lenient, paper):
    assert math.verify(completion, {"answer": gold}) == lenient
    assert math.verify(completion, {"answer": gold}, grader="paper") == paper


def test_math_paper_grader_errors():
    assert math.score(T + "Answer: 4", {"answer": "4"}, grader="paper")["error"] == "no \\boxed{} answer"
    assert math.score(r"\boxed{4}", {"answer": "4"}, grader="paper")["error"].startswith("no </think>")
    assert math.score(r"\boxed{4}", {"answer": "4"}, grader="paper", think=False)["reward"] == 1.0
    assert math.score(r"\boxed{4}", {"answer": "4"}, grader="strict")["error"].startswith("unknown grader 'strict'")


@pytest.mark.parametrize("text, answer", [
    (r"thus \boxed{2^{10}} apples", "2^{10}"),
    ("The final answer is $\\frac{1}{2}$. Done.", r"\frac{1}{2}"),
    ("answer: **12**", "12"),
    ("#### 72", "72"),
    ("we get 3/4 of the cake", "3/4"),
    ("total -1,250.5 dollars", "-1,250.5"),
    ("nothing", None),
    ("To answer this, add 2 and 3: the sum is 5.", "5"),                       # "answer this" is no statement
    (r"so $\frac{1+\sqrt{5}}{2}$ it is", r"\frac{1+\sqrt{5}}{2}"),            # the math span, whole
    (r"\frac{10}{9}", r"\frac{10}{9}"),                                        # the text is one expression
    ("so it is 3 or 4", None),                                                 # hedging: no fallback answer
    ("so it is $3$ or $4$", None),
    ("so it is [0,2)", None),
    ("I have 2 apples and 3 pears", "3"),
    ("so it is 2x", None),                                                     # 2 times x
    ("Input9 remove", "9"),                                                    # a word, not a variable
    ("\x01\ufffd9pth", "9"),                                                   # the tiny model's output
    ("Soucis : 2,74 $ a..", "2,74"),
    ("It costs 1 000 dollars", "1 000"),
    ("Final Answer: Jane started growing it 3 hours ago.", "3"),
    ("Final Answer: The final answer is $x-2y+z-1=0$. I hope it is correct.", "x-2y+z-1=0"),
    (r"so \boxed{200} then \boxed{255}. Final Answer: The final answer is $10,455$.", "10,455"),
    ("x is 5 and then 2x", None),
    ("the result is 3.", "3"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("The answer is $\\left(1, 2\\right)$.", r"\left(1, 2\right)"),
])
def test_math_extract_answer(text, answer):
    assert math.extract_answer(text) == answer


@pytest.mark.parametrize("a, b, equal", [("0,5", "0.5", True), ("12,345", "12345", True), ("0,111", "111", False),
                                         ("32, 349", "32349", False), ("1,5", "1.5", True)])
def test_math_commas(a, b, equal):
    assert (math.as_number(a) == math.as_number(b)) is equal


def test_math_last_number_fallback_can_be_turned_off():
    assert math.score("it is 7", {"answer": "7"}, last_number=False)["error"] == "no answer found"


@pytest.mark.parametrize("a, b, equal", [("0.5", r"\frac{1}{2}", True), ("1,000", "1000", True),
                                         ("3/4", "0.75", True), ("-2", "2", False), ("1/3", "0.333", False)])
def test_math_exact_numbers(a, b, equal):
    assert (math.as_number(a) == math.as_number(b)) is equal


def test_math_symbolic_check_is_bounded_and_recovers():
    """sympy hangs in C code on 9^{9^{9}}: the helper is killed at the timeout, the next check works."""
    hang = math.score(r"\boxed{9^{9^{9}}}", {"answer": "1"}, timeout_s=1.0)
    assert hang == {"reward": 0.0, "error": "timeout", "answer": "9^{9^{9}}"}
    assert math.score(r"\boxed{\sqrt{4}}", {"answer": "2"})["reward"] == 1.0


def test_math_works_off_the_main_thread():
    with ThreadPoolExecutor(2) as pool:
        rewards = list(pool.map(lambda g: math.verify(r"\boxed{\sqrt{2}/2}", {"answer": g}),
                                [r"\frac{\sqrt{2}}{2}", r"\frac{1}{2}"]))
    assert rewards == [1.0, 0.0]


@pytest.mark.parametrize("completion, row, error", [
    ("42", {"id": "r1"}, "row 'r1': 'answer' must be a non-empty string"),
    ("42", {"answer": 42}, "row None: 'answer' must be a non-empty string"),
    ("\\boxed{" + "x+" * 600 + "1}", {"answer": "1"}, "answer longer than 1000 characters"),
])
def test_math_malformed_inputs_score_zero_with_an_error(completion, row, error):
    assert math.score(completion, row)["reward"] == 0.0
    assert math.score(completion, row)["error"] == error


# --- science ---------------------------------------------------------------------------------------

SCIENCE_CASES = [
    # right
    ("Answer: C", "C", 1.0),
    ("The answer is (C).", "C", 1.0),
    (r"\boxed{C}", "C", 1.0),
    (r"\boxed{\text{(C)}}", "C", 1.0),
    ("the answer is option **C**", "C", 1.0),
    ("Mitochondria make ATP, so (B) it is.", "B", 1.0),
    ("C", "C", 1.0),
    ("Reasoning first.\n\n**D**", "D", 1.0),
    ("<think>maybe A</think>Answer: B", "B", 1.0),
    # wrong
    ("Answer: B", "C", 0.0),
    (r"\boxed{A}", "C", 0.0),
    # malformed
    ("", "C", 0.0),
    ("I do not know.", "C", 0.0),
    ("Answer: Avogadro", "A", 0.0),                            # a word, not a letter
    ("<think>Answer: C", "C", 0.0),
    # adversarial: listing every option must not pay
    ("(A) (B) (C) (D)", "C", 0.0),
    ("Answer: A. Answer: B. Answer: C. Answer: D.", "C", 0.0),
    (r"\boxed{A} \boxed{C}", "C", 0.0),
    ("a dog", "A", 0.0),                                       # lowercase article is not option A
]


@pytest.mark.parametrize("completion, gold, reward", SCIENCE_CASES)
def test_science(completion, gold, reward):
    assert science.verify(completion, {"answer": gold}) == reward


# (completion, reference, lenient reward, paper reward): the table in verifiers/science.py's docstring
# and every case of issue 12.
SCIENCE_GRADER_CASES = [
    (T + "Answer: C", "C", 1.0, 1.0),
    ("Answer: C", "C", 1.0, 0.0),                                  # paper: no </think>
    (T + "The answer is (C).", "C", 1.0, 0.0),                     # paper: only "Answer: X" counts
    (T + "The correct option is D.", "D", 1.0, 0.0),
    (T + "So the best choice is (B).", "B", 1.0, 0.0),
    (T + "The answer is \\(C\\).", "C", 1.0, 0.0),
    (T + "Answer: $C$", "C", 1.0, 1.0),
    (T + "**Answer:** (C)", "C", 1.0, 1.0),
    (T + "The speed is v = d/t.\nD) 12.8 m/s", "D", 1.0, 0.0),     # the last line names a listed option
    (T + "The answer is (D) or (B).", "D", 0.0, 0.0),              # hedging: two letters
    (T + "The answer is (D) or (B).", "B", 0.0, 0.0),
    (T + "Answer: A and C", "A", 0.0, 0.0),
    (T + "Answer: A and C", "C", 0.0, 0.0),
    (T + "Answer: C/D", "C", 0.0, 0.0),
    (T + "Answer: B, C", "C", 0.0, 0.0),
    (T + "Answer: A\nAnswer: C", "C", 0.0, 0.0),
    (T + "The answer is C and I am sure of it.", "C", 1.0, 0.0),  # "I" the pronoun is not option I
    (T + "option A is wrong. Answer: C", "C", 1.0, 1.0),
]


@pytest.mark.parametrize("completion, gold, lenient, paper", SCIENCE_GRADER_CASES)
def test_science_graders(completion, gold, lenient, paper):
    assert science.verify(completion, {"answer": gold}) == lenient
    assert science.verify(completion, {"answer": gold}, grader="paper") == paper


@pytest.mark.parametrize("row", [{}, {"answer": "CD"}, {"answer": 3}])
def test_science_malformed_row(row):
    result = science.score("Answer: C", row)
    assert result["reward"] == 0.0 and "'answer' must be one letter" in result["error"]


# --- code (in the sandbox; attacks are in test_sandbox.py) ------------------------------------------

@pytest.mark.parametrize("text, program", [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("```py\nprint(1)\n```\nand\n```\nprint(2)\n```", "print(1)\n"),      # python block preferred
    ("```python\nprint(1)\n```\n```python\nprint(2)\n```", "print(2)\n"),  # the last one
    ("```\nprint(3)\n```", "print(3)\n"),
    ("Here:\n```python\nprint(4)", "print(4)"),                           # cut off: runs to the end
    ("print(5)", "print(5)"),
])
def test_extract_program(text, program):
    assert code.extract_program(text) == program


ADD = {"kind": "stdio", "inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7"]}
SQUARE = {"kind": "assert", "code": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n",
          "entry_point": "square"}


@pytest.mark.parametrize("completion, tests, reward, passed", [
    ("```python\na, b = map(int, input().split())\nprint(a + b)\n```", ADD, 1.0, 2),
    ("a, b = map(int, input().split())\nprint(a + b, '  ')\n\n", ADD, 1.0, 2),   # trailing spaces ignored
    ("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)", ADD, 0.0, 1),  # partial: 1 of 2
    ("print(3)\nraise SystemExit(1)", ADD, 0.0, 0),                                # right output, bad exit
    ("a, b = input().split(", ADD, 0.0, 0),                                        # syntax error
    ("```python\ndef square(x):\n    return x * x\n```", SQUARE, 1.0, 1),
    ("def square(x):\n    return x * 3", SQUARE, 0.0, 0),
    ("def cube(x):\n    return x ** 3", SQUARE, 0.0, 0),                          # wrong entry point
])
def test_code(completion, tests, reward, passed):
    result = code.score(completion, {"tests": tests})
    assert (result["reward"], result["passed"], result["total"]) == (reward, passed, len(tests.get("inputs", [0])))


def test_code_stops_after_a_timeout():
    tests = {"kind": "stdio", "inputs": ["1\n"] * 3, "outputs": ["1\n"] * 3}
    result = code.score("while True: pass", {"tests": tests}, timeout_s=1.0)
    assert result == {"reward": 0.0, "error": "timeout", "passed": 0, "total": 3}


@pytest.mark.parametrize("timed_out, exit_code, verdict", [
    (True, -9, "timeout"),                  # the wall clock: the verifier killed it
    (False, -24, "timeout"),                # SIGXCPU at the soft CPU limit, seen by Popen
    (False, 128 + 24, "timeout"),           # the same, reported by bwrap
    (False, -9, "timeout"),                 # SIGKILL at the hard CPU limit (SIGXCPU caught)
    (False, 128 + 9, "timeout"),
    (False, -25, "output limit"),           # SIGXFSZ
    (False, 128 + 25, "output limit"),
    (False, 0, None), (False, 1, None),     # it ended by itself
])
def test_timeout_verdict_does_not_depend_on_which_limit_fired(timed_out, exit_code, verdict):
    """The wall clock and RLIMIT_CPU race on a busy loop; both must read as the same verdict."""
    assert code._verdict({"timed_out": timed_out, "exit_code": exit_code}) == verdict


def test_paper_grader_runs_at_most_20_sampled_tests():
    tests = {"kind": "stdio", "inputs": [f"{i}\n" for i in range(30)], "outputs": [f"{i}\n" for i in range(30)]}
    picked = code.paper_tests(tests, "row-7")
    assert len(picked["inputs"]) == 20 and picked == code.paper_tests(tests, "row-7")   # same tests every time
    assert all(out == inp for inp, out in zip(picked["inputs"], picked["outputs"]))      # pairs stay together
    assert picked["inputs"] == sorted(set(picked["inputs"]), key=tests["inputs"].index)  # no repeats, in order
    assert code.paper_tests(tests, "row-8") != picked
    assert code.paper_tests(ADD, "x") is ADD                                             # 20 or fewer: all
    echo = "```python\nprint(input())\n```"
    result = code.score("<think>t</think>" + echo, {"id": "row-7", "tests": tests}, grader="paper")
    assert (result["reward"], result["passed"], result["total"]) == (1.0, 20, 20)
    assert code.score(echo, {"id": "row-7", "tests": tests}, grader="paper")["error"].startswith("no </think>")


def test_sandbox_status_names_the_sandbox(monkeypatch):
    assert code.sandbox_status().startswith("code sandbox: bubblewrap" if code.bwrap_works() else "code sandbox: FALLBACK")
    monkeypatch.setattr(code, "_bwrap_probe", lambda: (False, "bwrap is not installed"))
    assert code.sandbox_status() == ("code sandbox: FALLBACK to rlimits + audit hook, weaker isolation "
                                     "(bwrap is not installed; apt-get install bubblewrap)")


@pytest.mark.parametrize("completion, row, error", [
    ("print(1)", {}, "'tests' must be a dict"),
    ("print(1)", {"tests": {"kind": "unit"}}, "unknown tests kind 'unit'"),
    ("print(1)", {"tests": {"kind": "stdio", "inputs": ["1"], "outputs": []}}, "equal-length"),
    ("print(1)", {"tests": {"kind": "assert", "code": "", "entry_point": "f; import os"}}, "an identifier"),
    ("<think>print(1)", {"tests": ADD}, "unclosed <think> block"),
    ("```python\n\n```", {"tests": ADD}, "empty program"),
])
def test_code_malformed(completion, row, error):
    result = code.score(completion, row)
    assert result["reward"] == 0.0 and error in result["error"]


def test_program_that_does_not_compile_skips_the_sandbox(monkeypatch):
    def no_sandbox(*a, **k):
        raise AssertionError("the sandbox ran")
    monkeypatch.setattr(code, "run_sandboxed", no_sandbox)
    for text in ("a, b = input().split(", "s2B2 x", "(" * 1000):
        result = code.score(text, {"tests": ADD})
        assert result["reward"] == 0.0 and result["error"].startswith("does not compile"), text
    with pytest.raises(AssertionError, match="the sandbox ran"):   # a program that compiles still runs
        code.score("print(3)", {"tests": ADD})


@pytest.mark.parametrize("actual, expected, match", [
    ("a  \r\nb\t\n\n\n", "a\nb", True),       # trailing spaces, CRLF, trailing blank lines
    (" a", "a", True),                         # lines are stripped on both ends (LiveCodeBench)
    ("2.50\n", "2.5", True),                   # numbers compare as decimals
    ("1 2", "1  2", True),
    ("1e3", "1000", True),
    ("0.333", "0.3333", False),                # exactly: no tolerance
    ("1\n\n2", "1\n2", False),                 # a blank line inside the output counts
    ("x 1", "x 1.0", False),                   # a line with a word compares as text
    ("YES", "yes", False),
    ("", "0", False),
])
def test_outputs_match(actual, expected, match):
    assert code.outputs_match(actual, expected) is match


# --- instruction following -------------------------------------------------------------------------

# (instruction id, kwargs, text, expected): one passing and one failing text per checker, at least.
IF_CASES = [
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "My Cat and dog.", True),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "My cat only.", False),
    ("keywords:frequency", {"keyword": "apple", "frequency": 2, "relation": "at least"}, "Apple pie, apple juice", True),
    ("keywords:frequency", {"keyword": "apple", "frequency": 2, "relation": "at least"}, "one apple", False),
    ("keywords:frequency", {"keyword": "very", "frequency": 2, "relation": "less than"}, "very good", True),
    ("keywords:frequency", {"keyword": "very", "frequency": 2, "relation": "less than"}, "very very good", False),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]}, "A badge is fine.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]}, "That is Bad.", False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zebra zoo", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "zebra", False),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans avec ma famille.", True),
    ("language:response_language", {"language": "fr"}, "Hello, my name is Mary and I live in London with my family.", False),
    ("language:response_language", {"language": "en"}, "12345", False),   # undetectable: fails here
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "Dr. Who came. He left!", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two? Three.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n\n***\nSecond.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Only one.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three, four!", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
     'First para.\n\n"Second, para."', True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
     "First para.\n\nThird para.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
     "First.\n\nSecond.\n\nThird.", False),                                       # three paragraphs
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. See you.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi. PS see you", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. later", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n* a\n* b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b\n- c", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "Yes.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and * *", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, "SECTION 1\na\nSECTION 2\nb", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, "Section 1\na\nSection 2\nb", False),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', True),
    ("detectable_format:json_format", {}, '{"a": 1', False),
    ("detectable_format:title", {}, "<<My Title>>\ntext", True),
    ("detectable_format:title", {}, "<< >> text", False),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Sure! Write a poem.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Done.", False),
    ("startend:quotation", {}, '"Hello there"', True),
    ("startend:quotation", {}, 'Hello "there"', False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "This is VERY IMPORTANT.", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "Only ONE here.", False),
    ("change_case:english_capital", {}, "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER TODAY.", True),
    ("change_case:english_capital", {}, "This is an English sentence about the weather today.", False),
    ("change_case:english_lowercase", {}, "this is an english sentence about the weather today.", True),
    ("change_case:english_lowercase", {}, "This is an English sentence about the weather today.", False),
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "Yes, one.", False),
    # IFEvalG extras
    ("copy:repeat_phrase", {"phrase": "The early bird catches the worm", "small_n": 2},
     "The early cat catches the worm. The early bird eats the worm.", True),
    ("copy:repeat_phrase", {"phrase": "The early bird catches the worm", "small_n": 2}, "The early bird catches the worm.", False),
    ("copy:copy", {"prompt_to_repeat": "Copy me exactly."}, " copy me exactly. ", True),
    ("copy:copy", {"prompt_to_repeat": "Copy me exactly."}, "Copy me exactly. Done.", False),
    ("new:copy_span_idx", {"prompt_to_repeat": "Hello wonderful world", "n_start": 6, "n_end": 15}, "wonderful", True),
    ("new:copy_span_idx", {"prompt_to_repeat": "Hello wonderful world", "n_start": 6, "n_end": 15}, "Hello", False),
    ("detectable_format:sentence_hyphens", {}, "I came.-I saw.-I won.", True),
    ("detectable_format:sentence_hyphens", {}, "I came. - I saw.", False),
    ("keywords:no_adjacent_consecutive", {}, "cat fox dog", True),
    ("keywords:no_adjacent_consecutive", {}, "a big cat", False),
    ("detectable_format:square_brackets", {}, "[Hello] [world]", True),
    ("detectable_format:square_brackets", {}, "[Hello] world", False),
    ("keywords:word_once", {"keyword": "moon"}, "The moon rose.", True),
    ("keywords:word_once", {"keyword": "moon"}, "Moon and moon.", False),
    ("keywords:word_count_different_numbers", {"keyword": "sun", "frequency": 3, "relation": "less than"}, "sun sun", True),
    ("keywords:word_count_different_numbers", {"keyword": "sun", "frequency": 3, "relation": "less than"}, "sun sun sun", False),
    ("keywords:exclude_word_harder", {"keyword": "rain"}, "Rainbows are pretty.", True),
    ("keywords:exclude_word_harder", {"keyword": "rain"}, "No rain.", False),
    ("paragraphs:paragraphs", {}, "A.\n***\nB.", True),
    ("paragraphs:paragraphs", {}, "A.\n***\nB.\n***\nC.", False),
    ("paragraphs:paragraphs2", {}, "A.\n\nB.", True),
    ("paragraphs:paragraphs2", {}, "A.\nB.", False),
    ("first_word:first_word_sent", {"first_word": "then"}, "Then we ate. Then we slept.", True),
    ("first_word:first_word_sent", {"first_word": "then"}, "Then we ate. We slept.", False),
    ("first_word:first_word_answer", {"first_word": "hello"}, "Hello, world.", True),
    ("first_word:first_word_answer", {"first_word": "hello"}, "Well hello.", False),
    ("last_word:last_word_sent", {"last_word": "now"}, "Go now. Stop now!", True),
    ("last_word:last_word_sent", {"last_word": "now"}, "Go now. Stop.", False),
    ("last_word:last_word_answer", {"last_word": "end"}, "This is the end.", True),
    ("last_word:last_word_answer", {"last_word": "end"}, "The end is near.", False),
    ("detectable_format:bigram_wrapping", {}, "<<I am>> <<at home>>", True),
    ("detectable_format:bigram_wrapping", {}, "<<I am>> at home", False),
    ("copy:copying_simple", {"prompt_to_repeat": "Say hi."}, "Say hi.", True),
    ("copy:copying_simple", {"prompt_to_repeat": "Say hi."}, "Hi!", False),
    ("copy:copying_multiple", {"prompt_to_repeat": "Say hi.", "N": 2}, "Say hi.\n******\nSay hi.", True),
    ("copy:copying_multiple", {"prompt_to_repeat": "Say hi.", "N": 2}, "Say hi.", False),
    ("punctuation:punctuation_dot", {}, "No dots here!", True),
    ("punctuation:punctuation_dot", {}, "A dot.", False),
    ("punctuation:punctuation_exclamation", {}, "Calm.", True),
    ("punctuation:punctuation_exclamation", {}, "Wow!", False),
    ("count:lowercase_counting", {"N": 2}, "Only TWO lowercase", True),
    ("count:lowercase_counting", {"N": 2}, "three small words", False),
    ("letters:letter_counting", {"N": 5, "relation": "less than"}, "ab cd", True),
    ("letters:letter_counting", {"N": 5, "relation": "less than"}, "abcde!", False),
    ("letters:letter_counting2", {"letter": "a", "let_frequency": 2, "let_relation": "less than"}, "a b", True),
    ("letters:letter_counting2", {"letter": "a", "let_frequency": 2, "let_relation": "less than"}, "banana", False),
    ("count:counting_composition", {"n_sent": 2, "n_words": 2},
     "Cats sleep. Dogs bark.\n* * *\nBirds sing. Fish swim.\n* * *\nCows moo. Ducks quack.", True),
    ("count:counting_composition", {"n_sent": 2, "n_words": 2},
     "Cats sleep. Dogs bark.\n* * *\nBirds sing. Fish swim.\n* * *\nCows moo. Ducks quack loudly.", False),
    ("count:count_unique", {}, "every word here differs", True),
    ("count:count_unique", {}, "the cat and The dog", False),
    ("count:count_increment_word", {"keyword1": "red", "keyword2": "blue"}, "red blue blue", True),
    ("count:count_increment_word", {"keyword1": "red", "keyword2": "blue"}, "red blue", False),
    ("keywords:palindrome", {}, "We saw a racecar.", True),
    ("keywords:palindrome", {}, "A cat.", False),
    ("keywords:keyword_specific_position", {"keyword": "blue", "n": 2, "m": 3}, "Hello there. The sky blue today.", True),
    ("keywords:keyword_specific_position", {"keyword": "blue", "n": 2, "m": 3}, "Hello there. The blue sky.", False),
    ("keywords:start_end", {}, "Love is all you need, love", True),
    ("keywords:start_end", {}, "Love is all you need, love.", False),
]


@pytest.mark.parametrize("instruction_id, kwargs, text, expected", IF_CASES)
def test_if_checker(instruction_id, kwargs, text, expected):
    assert ifeval.CHECKERS[instruction_id](text, **kwargs) is expected
    row = {"instruction_id_list": [instruction_id], "kwargs": [kwargs]}
    assert ifeval.score(text, row) == {"reward": float(expected), "error": None, "passed": int(expected), "total": 1}


def test_every_if_checker_has_a_passing_and_a_failing_case():
    outcomes = {(i, expected) for i, _, _, expected in IF_CASES}
    assert {i for i, _ in outcomes} == set(ifeval.CHECKERS)
    assert all((i, True) in outcomes and (i, False) in outcomes for i in ifeval.CHECKERS)


IFEVAL_IDS = """keywords:existence keywords:frequency keywords:forbidden_words keywords:letter_frequency
language:response_language length_constraints:number_sentences length_constraints:number_paragraphs
length_constraints:number_words length_constraints:nth_paragraph_first_word detectable_content:number_placeholders
detectable_content:postscript detectable_format:number_bullet_lists detectable_format:constrained_response
detectable_format:number_highlighted_sections detectable_format:multiple_sections detectable_format:json_format
detectable_format:title combination:two_responses combination:repeat_prompt startend:end_checker startend:quotation
change_case:capital_word_frequency change_case:english_capital change_case:english_lowercase punctuation:no_comma""".split()


def test_all_25_ifeval_ids_are_covered():
    assert len(IFEVAL_IDS) == 25 and set(IFEVAL_IDS) <= set(ifeval.CHECKERS)


# Where issue 12 found the checkers differing from Google's IFEval checkers; each verdict is worked
# out from the reference's rule, stated in verifiers/ifeval.py's docstring.
IF_EDGE_CASES = [
    # sentences: Punkt's English model; "no." ends a sentence, "Dr." does not
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "I said no. Then I left.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Dr. Smith said no.", True),
    # bullets: "*item" counts, "+ item" does not, a "---" rule counts, "**bold**" does not
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "*one\n*two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "+ one\n+ two", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two\n---", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "* one\n**Bold** line", True),
    # capital words: NLTK tokens, so "NASA's" gives NASA and "COVID-19" is one upper-case token
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA's view on COVID-19 changed.", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "NASA's view on COVID-19 changed.", False),
    # highlights: *single* and **double** spans counted apart
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "***bold***", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**bold**", False),
    # first word: the first whitespace token without leading quotes, cut at punctuation
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "however"},
     "**However**, it rained.\n\nThen it stopped.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "however"},
     "'However, it rained.\n\nThen it stopped.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "It rained.\n\n\n\nThen it stopped.", False),                       # the 2nd part of the split is empty
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION  1\na\nSECTION  2\nb", False),                                # at most one space before the number
]


@pytest.mark.parametrize("instruction_id, kwargs, text, expected", IF_EDGE_CASES)
def test_if_edge_cases_follow_the_reference(instruction_id, kwargs, text, expected):
    assert ifeval.CHECKERS[instruction_id](text, **kwargs) is expected


@pytest.mark.parametrize("text", ["", "   \n\t"])
@pytest.mark.parametrize("instruction_id, kwargs", [("punctuation:no_comma", {}), ("punctuation:punctuation_dot", {}),
                                                    ("keywords:forbidden_words", {"forbidden_words": ["x"]}),
                                                    ("format:no_whitespace", {})])
def test_if_empty_response_follows_no_instruction(text, instruction_id, kwargs):
    row = {"instruction_id_list": [instruction_id], "kwargs": [kwargs]}
    assert ifeval.score(text, row) == {"reward": 0.0, "error": None, "passed": 0, "total": 1}


def test_if_sentences_split_at_no():
    assert ifeval.sentences("I said no. Then I left.") == ["I said no.", "Then I left."]
    assert ifeval.punkt_sentences("I said no. Then I left.") == ["I said no.", "Then I left."]


# IFBench ids go to AllenAI's checkers (if-verifiable); verdicts worked out from their rules.
IFBENCH_CASES = [
    ("format:no_whitespace", {}, "no-whitespace-here", True),
    ("format:no_whitespace", {}, "one space", False),
    ("count:numbers", {"N": 2}, "I have 3 cats and 4 dogs.", True),
    ("count:numbers", {"N": 2}, "I have 3 cats.", False),
]


@pytest.mark.parametrize("instruction_id, kwargs, text, expected", IFBENCH_CASES)
def test_ifbench_ids_are_scored(instruction_id, kwargs, text, expected):
    row = {"instruction_id_list": [instruction_id], "kwargs": [kwargs], "prompt": [{"role": "user", "content": "?"}]}
    assert ifeval.score(text, row) == {"reward": float(expected), "error": None, "passed": int(expected), "total": 1}


def test_ifbench_ids_match_the_reference_registry():
    assert len(ifeval.IFBENCH_IDS) == 58 and set(ifeval.ifbench_registry()) == ifeval.IFBENCH_IDS
    assert not ifeval.IFBENCH_IDS & set(ifeval.CHECKERS)


@pytest.mark.parametrize("row, error", [
    ({"instruction_id_list": ["count:numbers"], "kwargs": [{}]}, "count:numbers: TypeError: kwargs missing ['N']"),
    ({"instruction_id_list": ["count:numbers"], "kwargs": [{"N": 2, "n": 1}]}, "unexpected ['n']"),
    ({"instruction_id_list": ["ratio:stop_words"], "kwargs": [{"percentage": 50}]}, "needs NLTK data (stopwords)"),
    ({"instruction_id_list": ["words:start_verb"], "kwargs": [{}]}, "needs NLTK data (averaged_perceptron_tagger_eng)"),
])
def test_ifbench_refuses_random_defaults_and_missing_data(row, error):
    result = ifeval.score("Go home and rest now, 2 days.", row)
    assert result["reward"] == 0.0 and error in result["error"]


def test_if_is_strict_and_counts_passes():
    row = {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
           "kwargs": [{}, {"num_words": 10, "relation": "at least"}]}
    assert ifeval.score("Short answer.", row) == {"reward": 0.0, "error": None, "passed": 1, "total": 2}


def test_if_ignores_none_kwargs():
    """The Hugging Face copy of IFEval fills every kwarg slot, with None where unused."""
    row = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None, "relation": None}]}
    assert ifeval.verify("No commas.", row) == 1.0


@pytest.mark.parametrize("row, error", [
    ({"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]}, "unknown instruction id 'punctuation:no_semicolon'"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 3}]}, "relation"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 3, "relation": "more than"}]},
     "relation must be 'less than' or 'at least', got 'more than'"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"bogus": 1}]}, "bogus"),
    ({"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": "cat"}]}, "expected a list of strings"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, "equal length"),
    ({"instruction_id_list": []}, "non-empty lists"),
    ({}, "non-empty lists"),
])
def test_if_malformed_rows(row, error):
    result = ifeval.score("Some text.", row)
    assert result["reward"] == 0.0 and error in result["error"]


def test_if_think_gate():
    row = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert ifeval.verify("<think>a, b, c</think>No commas.", row) == 1.0
    assert ifeval.verify("<think>a, b, c</think>No commas.", row, think=False) == 0.0
    assert ifeval.score("<think>No commas.", row)["error"] == "unclosed <think> block"


def test_language_detection_is_deterministic_across_threads():
    text = "Ciao, come stai? Oggi il tempo è bello e andiamo al mare."
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(ifeval.detect_language, [text] * 16)) == {"it"}


# --- verify_batch ----------------------------------------------------------------------------------

def test_verify_batch_mixes_domains_in_order():
    rows = [{"id": "m", "domain": "math", "answer": "4"},
            {"id": "s", "domain": "science", "answer": "B"},
            {"id": "c", "domain": "code", "tests": ADD},
            {"id": "i", "domain": "if", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"id": "m2", "domain": "math", "answer": "5"}]
    completions = ["The answer is 4.", "Answer: C", "a, b = map(int, input().split())\nprint(a + b)", "Yes, commas.",
                   "<think>unfinished"]
    results = verify_batch(completions, rows, workers=3)
    assert [r["reward"] for r in results] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["error"] for r in results] == [None, None, None, None, "unclosed <think> block"]
    assert (results[2]["passed"], results[2]["total"]) == (2, 2)
    assert [r["reward"] for r in results] == [VERIFIERS[r["domain"]](c, r) for c, r in zip(completions, rows)]


def test_verify_batch_scores_a_repeated_completion_once(monkeypatch):
    calls = []

    def counting(completion, row, **kwargs):
        calls.append(completion)
        return science.score(completion, row, **kwargs)

    monkeypatch.setitem(SCORERS, "science", counting)
    row, other = {"domain": "science", "answer": "B"}, {"domain": "science", "answer": "B"}
    results = verify_batch(["Answer: B", "Answer: C", "Answer: B", "Answer: B"], [row, row, row, other], workers=2)
    assert [r["reward"] for r in results] == [1.0, 0.0, 1.0, 1.0]
    assert sorted(calls) == ["Answer: B", "Answer: B", "Answer: C"]   # once per (completion, row object)
    results[0]["reward"] = 0.5
    assert results[2]["reward"] == 1.0                                  # copies, not one shared dict


def test_verify_batch_grader():
    rows = [{"domain": "math", "answer": "4"}, {"domain": "science", "answer": "C"}]
    completions = ["The answer is 4.", "<think>t</think>The answer is (C)."]
    assert [r["reward"] for r in verify_batch(completions, rows)] == [1.0, 1.0]
    paper = verify_batch(completions, rows, grader="paper")
    assert [r["reward"] for r in paper] == [0.0, 0.0]
    assert paper[0]["error"].startswith("no </think>") and paper[1]["error"] == "no single answer letter found"
    with pytest.raises(ValueError, match="grader 'strict' is not one of lenient, paper"):
        verify_batch(completions, rows, grader="strict")


def test_verify_batch_rejects_bad_input_before_work():
    with pytest.raises(ValueError, match="2 completions for 1 rows"):
        verify_batch(["a", "b"], [{"domain": "math", "answer": "1"}])
    with pytest.raises(ValueError, match=r"rows\[0\] \(id 'x'\): domain 'chemistry'"):
        verify_batch(["a"], [{"id": "x", "domain": "chemistry"}])


VALID_ROWS = {"math": {"answer": "4"}, "code": {"tests": ADD}, "science": {"answer": "C"},
              "if": {"instruction_id_list": ["length_constraints:number_words"],
                     "kwargs": [{"num_words": 2, "relation": "at least"}]}}


@pytest.mark.parametrize("domain", ["math", "code", "science", "if"])
@pytest.mark.parametrize("completion", ["", "\x00\xff" * 100, "<think>" * 1000, "}" * 10_000 + "\\boxed{",
                                        "```python\n" * 100, "\\boxed{" * 1000 + "4"])
def test_verifiers_never_raise_on_garbage(domain, completion):
    assert VERIFIERS[domain](completion, VALID_ROWS[domain]) in (0.0, 1.0)
    result = SCORERS[domain](completion, {"id": "broken"})  # a row missing its fields
    assert result["reward"] == 0.0 and "row 'broken'" in result["error"]


def test_verifiers_are_thread_safe():
    rows = [{"domain": "science", "answer": "AB"[i % 2]} for i in range(64)]
    barrier = threading.Barrier(8)

    def check(i):
        barrier.wait() if i < 8 else None
        return VERIFIERS["science"]("Answer: A", rows[i])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(check, range(64))) == [1.0, 0.0] * 32


# --- the embedded eval data: every reference scores 1.0, a wrong answer 0.0 ------------------------

def _violation(instruction_id: str, kw: dict) -> str:
    """A text that breaks one IFEval instruction, worked out from the instruction's rule."""
    rel = kw.get("relation") or kw.get("let_relation") or kw.get("capital_relation")
    if instruction_id == "keywords:frequency" and rel == "less than":
        return " ".join([kw["keyword"]] * kw["frequency"])
    if instruction_id == "keywords:forbidden_words":
        return " ".join(kw["forbidden_words"])
    if instruction_id == "keywords:letter_frequency" and rel == "less than":
        return kw["letter"] * kw["let_frequency"]
    if instruction_id == "language:response_language":
        return "Das ist ein deutscher Satz über das Wetter und die Berge." if kw["language"] != "de" else "This is English."
    if instruction_id == "length_constraints:number_sentences" and rel == "less than":
        return "Go. " * kw["num_sentences"]
    if instruction_id == "length_constraints:number_words" and rel == "less than":
        return "w " * kw["num_words"]
    if instruction_id == "change_case:capital_word_frequency" and rel == "less than":
        return "WORD " * kw["capital_frequency"]
    if instruction_id == "detectable_format:number_bullet_lists":
        return "* a\n" * (kw["num_bullets"] + 1)
    if instruction_id == "punctuation:no_comma":
        return ","
    return ""  # every other IFEval instruction asks for something an empty text lacks


def wrong_answer(row: dict) -> str:
    """A completion that must score 0.0 on the row (bench/verifiers.py times these too)."""
    if row["domain"] == "math":
        return f"The answer is \\boxed{{{math.as_number(row['answer']) + 1}}}."
    if row["domain"] == "science":
        return "Answer: " + ("B" if row["answer"] != "B" else "A")
    if row["domain"] == "code" and row["tests"]["kind"] == "assert":
        return f"```python\ndef {row['tests']['entry_point']}(*args, **kwargs):\n    return None\n```"
    if row["domain"] == "code":
        return "```python\nprint('m2rl wrong answer')\n```"
    return _violation(row["instruction_id_list"][0], row["kwargs"][0])


@pytest.mark.parametrize("domain", ["math", "code", "science", "if"])
def test_embedded_eval_references_score_one_and_wrong_answers_zero(domain):
    import data
    from data.embedded import humaneval_rows

    rows = data.embedded(domain, "eval") + (humaneval_rows() if domain == "code" else [])
    assert rows and all(row["domain"] == domain for row in rows)
    right = verify_batch([row["reference"] for row in rows], rows, workers=4)
    assert [(row["id"], r["reward"], r["error"]) for row, r in zip(rows, right) if r["reward"] != 1.0] == []
    wrong = verify_batch([wrong_answer(row) for row in rows], rows, workers=4)
    assert [row["id"] for row, r in zip(rows, wrong) if r["reward"] != 0.0] == []
    if domain == "code":  # HumanEval's canonical solutions (an eval set beside the embedded one) are among them
        assert sum(row["source"] == "humaneval" for row in rows) == 164
