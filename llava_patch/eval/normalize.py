"""VQA answer normalisation, exactly as the two official implementations behave.

Two normalisers share the same rules but run under different Pythons, which matters for a few characters:

- `vqa_normalize`: `processPunctuation` + `processDigitArticle` of the official VQA evaluation
  (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py). That code is Python 2.7 (its helper
  vqa.py uses `print` statements), so we reproduce Python 2 string semantics: `\\d` matches ASCII digits only
  (a `str` pattern without re.UNICODE), `lower()` maps each character on its own (no final-sigma rule, 'İ' ->
  'i'), and U+180E counts as whitespace (Unicode 5.2).
- `llava_answer_processor`: MMF's `EvalAIAnswerProcessor` as copied into LLaVA (llava/eval/m4c_evaluator.py),
  which LLaVA-1.5 uses for TextVQA scoring and before uploading VQAv2 answers. It runs on Python 3.

Quirks kept on purpose (each is what the official code does, and scores depend on it):
- Punctuation is deleted instead of replaced by a space when it touches a space in the *original* string, or
  when the string contains digit-comma-digit anywhere ("1,000-2" -> "10002").
- The period rule `(?!<=\\d)(\\.)(?!\\d)` has a mistyped look-behind that never fires, so every period not
  followed by a digit goes ("a.m." -> "am", "1.5." -> "1.5"), and `re.UNICODE` (= 32) lands in the `count`
  argument of `sub`, so at most 32 periods are removed per string.
- Apostrophes, colons, '#', '$', '%', '&', '*', '^', '~', '|' and non-ASCII punctuation are left alone.
- "none" maps to "0"; number words stop at "ten"; the capitalised contraction keys ("Im", "Ive", "Id've",
  "I'dve") can never fire after lower-casing; "somebody'd" maps to "somebodyd".
"""

from __future__ import annotations

import re
from functools import lru_cache

# The 21 characters both implementations treat as punctuation (vqaEval.py HEAD `self.punct`, m4c PUNCTUATIONS).
PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')

# vqaEval.py `manualMap` / m4c NUMBER_MAP: only zero..ten (and "none"), nothing above.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# vqaEval.py `contractions` (identical to m4c CONTRACTIONS; tests check that against LLaVA's copy). The keys
# "Im", "Ive", "Id've", "I'dve" are capitalised in the original and so never match a lower-cased token.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# `periodStrip.sub("", text, re.UNICODE)`: re.UNICODE == 32 is taken as the maximum number of replacements.
MAX_PERIODS_REMOVED = int(re.UNICODE)

# Python 2's `\d` in a str pattern is [0-9]; Python 3's is any Unicode decimal digit.
_PERIOD_PY2 = re.compile(r"\.(?![0-9])")
_PERIOD_PY3 = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT_PY2 = re.compile(r"[0-9],[0-9]")  # vqaEval.py commaStrip "(\d)(\,)(\d)"
_DIGIT_COMMA_DIGIT_PY3 = re.compile(r"(?<=\d)(,)+(?=\d)")  # m4c COMMA_STRIP, same matches for our purpose

# What Python 3's str.isspace() accepts, plus U+180E MONGOLIAN VOWEL SEPARATOR, which Python 2.7 (Unicode 5.2)
# still treats as whitespace in split() and strip().
_PY2_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_PY2_SPLIT = re.compile("[" + re.escape(_PY2_WHITESPACE) + "]+")


def _py2_lower(text: str) -> str:
    """`unicode.lower()` of Python 2: per character, simple case mapping (no final sigma, 'İ' -> 'i')."""
    return "".join("i" if c == "\u0130" else c.lower() for c in text)


def _py2_split(text: str) -> list[str]:
    return [t for t in _PY2_SPLIT.split(text) if t]


def _process_punctuation(text: str, digit_comma_digit: re.Pattern, period: re.Pattern) -> str:
    delete_all = digit_comma_digit.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # the test looks at the original string, not at the partly processed one (vqaEval.py processPunctuation)
        touches_space = p + " " in text or " " + p in text
        out = out.replace(p, "" if touches_space or delete_all else " ")
    return period.sub("", out, count=MAX_PERIODS_REMOVED)


def _process_digit_article(tokens: list[str]) -> str:
    out = []
    for token in tokens:
        token = NUMBER_WORDS.get(token, token)
        if token not in ARTICLES:  # checked after the number mapping, as in the original
            out.append(CONTRACTIONS.get(token, token))
    return " ".join(out)


def strip_answer(text: str) -> str:
    """vqaEval.py's first step on every answer: newlines and tabs to spaces, then strip (Python 2 whitespace)."""
    return text.replace("\n", " ").replace("\t", " ").strip(_PY2_WHITESPACE)


@lru_cache(maxsize=1 << 16)  # pure function; human answers repeat across the 214k val questions
def vqa_normalize(text: str) -> str:
    """The official VQA normalisation (vqaEval.py `processPunctuation` then `processDigitArticle`, Python 2).

    Applied to an answer that `strip_answer` already cleaned; the official scorer only calls it when the ten
    human answers are not all identical (see `llava_patch.eval.vqa`).
    """
    text = _process_punctuation(text, _DIGIT_COMMA_DIGIT_PY2, _PERIOD_PY2)
    return _process_digit_article(_py2_split(_py2_lower(text)))


@lru_cache(maxsize=1 << 16)
def llava_answer_processor(text: str) -> str:
    """`EvalAIAnswerProcessor.__call__` of LLaVA / MMF (Python 3), used for TextVQA and VQAv2 uploads.

    Unlike `vqa_normalize` it first lower-cases, deletes every ',' and '?', and turns "'s" into " 's"
    (so "man's" -> "man 's", "red,white" -> "redwhite"); its comma rule therefore never fires.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text, _DIGIT_COMMA_DIGIT_PY3, _PERIOD_PY3)
    return _process_digit_article(text.lower().split())
