"""Hand-worked cases for the two VQA answer normalisers; each row names the official rule it pins.

Expected values follow /work/shared/reference/eval_metrics.md (a): vqaEval.py under Python 2.7, and (b):
LLaVA's EvalAIAnswerProcessor under Python 3. Parity with LLaVA's own code is in test_scorers_parity.py.
"""

from __future__ import annotations

import pytest

from llava_patch.eval.normalize import llava_answer_processor, strip_answer, vqa_normalize

# (input, expected, rule) for vqaEval.py processPunctuation + processDigitArticle
VQA_CASES = [
    ("1,000", "1000", "digit-comma-digit anywhere: every listed punctuation mark is deleted"),
    ("1,000-2", "10002", "digit-comma-digit switches '-' to deletion too"),
    ("red,white", "red white", "punctuation not touching a space becomes a space"),
    ("red, white", "red white", "punctuation touching a space (in the original) is deleted"),
    ("hot-dog", "hot dog", "'-' is in the list: replaced by a space"),
    ("yes!", "yes", "'!' replaced by a space, then split/join drops it"),
    ("(10)", "10", "brackets replaced by spaces"),
    ("a+b", "b", "'+' -> space, then the article 'a' is dropped"),
    ("2.5", "2.5", "periodStrip keeps a period followed by a digit"),
    ("5.", "5", "periodStrip removes a period not followed by a digit"),
    (".5", ".5", "the mistyped look-behind does nothing: '.5' stays"),
    ("1.5.", "1.5", "only the trailing period goes"),
    ("a.m.", "am", "every period not followed by a digit goes"),
    ("1.a", "1a", "period before a letter goes even after a digit"),
    ("a.1", "a.1", "period before a digit stays even after a letter"),
    ("yes" + "." * 33, "yes.", "re.UNICODE (32) passed as count: at most 32 periods removed"),
    ("50%", "50%", "'%' is not in the punctuation list"),
    ("$5", "$5", "'$' is not in the punctuation list"),
    ("3:00", "3:00", "':' is not in the HEAD punctuation list"),
    ("#1", "#1", "'#' is not in the punctuation list"),
    ("man's", "man's", "apostrophes are kept"),
    ("don\u2019t", "don\u2019t", "non-ASCII punctuation (curly apostrophe) is kept"),
    ("yes\u3002", "yes\u3002", "non-ASCII full stop is kept"),
    ("Two", "2", "lower-case, then number words zero..ten map to digits"),
    ("none", "0", "manualMap: 'none' -> '0'"),
    ("eleven", "eleven", "number words stop at ten"),
    ("The", "", "a bare article normalises to the empty string"),
    ("the dog", "dog", "articles a/an/the are dropped"),
    ("An apple", "apple", "articles are dropped after lower-casing"),
    ("dont", "don't", "contractions map"),
    ("oclock", "o'clock", "contractions map"),
    ("Im", "im", "capitalised contraction keys (Im, Ive) never fire after lower()"),
    ("somebody'd", "somebodyd", "contractions map quirk: somebody'd -> somebodyd"),
    ("a\u00a0dog", "dog", "split() splits on NBSP"),
    ("big\u3000dog", "big dog", "split() splits on U+3000"),
    ("  two   dogs ", "2 dogs", "tokens re-joined with single spaces"),
    (
        "\u0663.\u0665",
        "\u0663\u0665",
        "Python 2: \\d is ASCII, so a period before an Arabic-Indic digit goes",
    ),
    ("\u0663,\u0665", "\u0663 \u0665", "Python 2: no ASCII digit-comma-digit, so ',' becomes a space"),
    ("\u0130stanbul", "istanbul", "Python 2 lower(): per character, U+0130 -> 'i'"),
    ("\u039f\u0394\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c3", "Python 2 lower(): no final-sigma rule"),
    ("a\u180eb", "b", "Python 2.7 (Unicode 5.2) splits on U+180E"),
]


@pytest.mark.parametrize(("text", "expected", "rule"), VQA_CASES, ids=[c[2] for c in VQA_CASES])
def test_vqa_normalize(text: str, expected: str, rule: str) -> None:
    assert vqa_normalize(text) == expected, rule


def test_strip_answer_turns_newlines_and_tabs_into_spaces_then_strips() -> None:
    # vqaEval.py: .replace('\n',' ').replace('\t',' ').strip(), on predictions and on every human answer
    assert strip_answer(" yes\n") == "yes"
    assert strip_answer("red\tcar") == "red car"
    assert strip_answer("a\nb") == "a b"
    assert strip_answer("\u3000yes\u00a0") == "yes"  # unicode.strip() in Python 2 strips these too


# (input, expected, rule) for LLaVA's EvalAIAnswerProcessor (m4c_evaluator.py), Python 3
LLAVA_CASES = [
    ("man's", "man 's", "word_tokenize: 's -> ' 's'"),
    ("McDonald's", "mcdonald 's", "word_tokenize lower-cases before splitting 's"),
    ("red,white", "redwhite", "word_tokenize deletes every comma"),
    ("red, white", "red white", "comma deleted, the space stays"),
    ("1,000", "1000", "comma deleted by word_tokenize"),
    ("what?", "what", "word_tokenize deletes every '?'"),
    ("Yes", "yes", "lower-cased unconditionally (no unanimity gate)"),
    ("two", "2", "process_digit_article number map"),
    ("The dog", "dog", "articles dropped"),
    ("yes" + "." * 33, "yes.", "PERIOD_STRIP count=32 quirk is present here too"),
    ("a.m.", "am", "periods not before a digit go"),
    ("hot-dog", "hot dog", "process_punctuation as vqaEval's"),
    ("yes\nno", "yes no", "newline to space"),
    ("\u0663.\u0665", "\u0663.\u0665", "Python 3: \\d is Unicode, so the period before '\u0665' stays"),
    ("\u0130", "i\u0307", "Python 3 lower(): full case mapping"),
    ("  ", "", "whitespace-only -> empty"),
]


@pytest.mark.parametrize(("text", "expected", "rule"), LLAVA_CASES, ids=[c[2] for c in LLAVA_CASES])
def test_llava_answer_processor(text: str, expected: str, rule: str) -> None:
    assert llava_answer_processor(text) == expected, rule
