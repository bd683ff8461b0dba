"""LongBench (v1) scoring, reimplemented without the official dependencies.

The behaviour follows the official ``LongBench/metrics.py`` and ``eval.py`` of
THUDM/LongBench; the code is our own. Where the official scorer leans on a
third-party package, this module reproduces what that package computes:

- ``rouge`` (pltrdy/rouge 1.0.1, ``Rouge().get_scores(..., avg=True)["rouge-l"]
  ["f"]``): *summary-level union* ROUGE-L over "sentences" split at ``"."``,
  words split at single spaces, and words counted as a **set** (the package's
  default ``exclusive=True``): P = |union of LCS words| / |distinct hypothesis
  words|, R = the same over distinct reference words, F = 2PR / (P + R + 1e-8).
  The LCS is reconstructed with the package's tie-breaking, so the union is the
  same set of words. An empty hypothesis or reference scores 0 (the package
  raises, the official scorer catches). Deviation: the package reconstructs the
  LCS recursively and hits Python's recursion limit (-> the official scorer
  silently gives 0) on "sentences" of roughly 1000 words and more; we do not.
- ``jieba`` (Chinese word segmentation for ``qa_f1_zh`` and ``rouge_zh``): used
  when it is installed; otherwise Chinese text is segmented into single CJK
  characters, ASCII letter/digit runs and single other characters
  (``zh_tokenizer_name()`` tells which). Character-level scores are generally
  higher than jieba's word-level ones, so Chinese scores are only comparable
  with published numbers when jieba is installed.
- ``fuzzywuzzy`` (``fuzz.ratio`` for the code tasks): LongBench's requirements
  install fuzzywuzzy without python-Levenshtein, so ``fuzz.ratio`` is
  ``round(100 * difflib.SequenceMatcher(None, a, b).ratio())`` (equal strings
  100, an empty one 0); we compute exactly that. With python-Levenshtein
  installed fuzzywuzzy would use the Levenshtein (indel) ratio instead, which
  can differ slightly.

Per sample, a prediction scores the max over its ground-truth answers; the
first-line rule of eval.py (``FIRST_LINE_TASKS``) is applied before scoring. A
task's score (``longbench.run_longbench``) is ``round(100 * mean, 2)``.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from maskkv_vllm.evaluation.longbench_config import (
    DATASET2METRIC,
    FIRST_LINE_TASKS,
    check_task,
)

ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』"
    "【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCT = frozenset(string.punctuation)
_ZH_PUNCT = frozenset(string.punctuation + ZH_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Fallback Chinese segmentation: one CJK ideograph, an ASCII word, or any other
# single non-space character.
_ZH_TOKEN = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9_]+|\S", re.UNICODE
)


# ----------------------------------------------------------------- normalisation


def normalize_answer(text: str) -> str:
    """English QA normalisation: lower-case, drop ASCII punctuation, drop the
    articles a/an/the, collapse whitespace (in that order, as SQuAD does)."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lower-case, drop ASCII and CJK punctuation, drop all
    whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ZH_PUNCT)
    return "".join(text.split())


@functools.cache
def _jieba():
    try:
        import jieba
    except ImportError:
        return None
    return jieba


def zh_tokenizer_name() -> str:
    """ "jieba" when it is installed (as the official scorer), else "char"."""
    return "jieba" if _jieba() is not None else "char"


def zh_tokenize(text: str) -> list[str]:
    """Chinese segmentation: jieba's accurate mode if installed, else characters."""
    jieba = _jieba()
    if jieba is not None:
        return list(jieba.cut(text, cut_all=False))
    return _ZH_TOKEN.findall(text)


# ------------------------------------------------------------------- token F1


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap)."""
    same = sum((Counter(prediction) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return token_f1(
        normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    )


def qa_f1_zh_score(prediction: str, ground_truth: str, **_) -> float:
    def tokens(text: str) -> list[str]:
        normed = (normalize_zh_answer(t) for t in zh_tokenize(text))
        return [t for t in normed if t]

    return token_f1(tokens(prediction), tokens(ground_truth))


# -------------------------------------------------------------------- ROUGE-L


def _sentences(text: str) -> list[str]:
    """The rouge package's split: at ".", whitespace collapsed, empty pieces
    dropped (a piece of only spaces stays, as an empty sentence)."""
    return [" ".join(piece.split()) for piece in text.split(".") if piece]


def _lcs_words(ref: list[str], hyp: list[str]) -> set[str]:
    """Words of one LCS of ``ref`` and ``hyp``, walked back from the end and
    preferring to drop a ``hyp`` word on ties (the rouge package's choice)."""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev = table[i], table[i - 1]
        word = ref[i - 1]
        for j in range(1, m + 1):
            if word == hyp[j - 1]:
                row[j] = prev[j - 1] + 1
            else:
                row[j] = max(prev[j], row[j - 1])
    words: set[str] = set()
    i, j = n, m
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F as the ``rouge`` package computes it (see the module docstring).

    For one sentence without repeated words this is the textbook
    ``2 * LCS / (len(pred) + len(ref))`` (less a 1e-8 in the denominator).
    """
    hyp_sents, ref_sents = _sentences(prediction), _sentences(reference)
    if not hyp_sents or not ref_sents:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp_sents]
    ref_words = [s.split(" ") for s in ref_sents]
    n_hyp = len({w for s in hyp_words for w in s})
    n_ref = len({w for s in ref_words for w in s})
    union: set[str] = set()
    for ref in ref_words:
        for hyp in hyp_words:
            union |= _lcs_words(ref, hyp)
    recall = len(union) / n_ref
    precision = len(union) / n_hyp
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def rouge_score(prediction: str, ground_truth: str, **_) -> float:
    return rouge_l(prediction, ground_truth)


def rouge_zh_score(prediction: str, ground_truth: str, **_) -> float:
    return rouge_l(
        " ".join(zh_tokenize(prediction)), " ".join(zh_tokenize(ground_truth))
    )


# ------------------------------------------------- classification / retrieval


def classification_score(
    prediction: str, ground_truth: str, all_classes: Sequence[str] = (), **_
) -> float:
    """1/k if the true class is among the k class names found in the prediction.

    A found class that is a strict substring of the true class is dropped first.
    As in the official scorer, this pruning walks the list while removing from it,
    so the entry right after a dropped one is not checked (kept on purpose: it
    changes scores, and we match the official numbers).
    """
    found = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(found):
        term = found[i]
        if term in ground_truth and term != ground_truth:
            found.remove(term)
        i += 1
    if ground_truth in found:
        return 1.0 / len(found)
    return 0.0


def _share_of_numbers(prediction: str, target: str) -> float:
    """Fraction of the numbers in ``prediction`` that equal ``target`` (as text)."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(n == target for n in numbers) / len(numbers)


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    match = re.search(pattern, ground_truth)
    if match is None:
        raise ValueError(f"answer {ground_truth!r} does not match {pattern!r}")
    return match.group(1)


def retrieval_score(prediction: str, ground_truth: str, **_) -> float:
    """Answer "Paragraph N": share of the prediction's numbers equal to N."""
    target = _paragraph_id(ground_truth, r"Paragraph (\d+)")
    return _share_of_numbers(prediction, target)


def retrieval_zh_score(prediction: str, ground_truth: str, **_) -> float:
    """Answer "段落N": share of the prediction's numbers equal to N."""
    target = _paragraph_id(ground_truth, r"段落(\d+)")
    return _share_of_numbers(prediction, target)


def count_score(prediction: str, ground_truth: str, **_) -> float:
    """Share of the prediction's numbers equal to the answer."""
    return _share_of_numbers(prediction, str(ground_truth))


# ----------------------------------------------------------------------- code


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's ``fuzz.ratio`` on its pure-Python path: an integer 0..100."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def first_code_line(prediction: str) -> str:
    """First line (after leading newlines) holding no "`", "#" or "//"; "" if none."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    return fuzz_ratio(first_code_line(prediction), ground_truth) / 100


# ----------------------------------------------------------------- per task

Metric = Callable[..., float]

METRICS: dict[str, Metric] = {
    "qa_f1": qa_f1_score,
    "qa_f1_zh": qa_f1_zh_score,
    "rouge": rouge_score,
    "rouge_zh": rouge_zh_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}


def first_line(prediction: str) -> str:
    return prediction.lstrip("\n").split("\n")[0]


def score_prediction(
    task: str,
    prediction: str,
    answers: Sequence[str],
    all_classes: Sequence[str] | None = None,
) -> float:
    """One sample's score in [0, 1]: the best over its ground-truth answers."""
    metric = METRICS[DATASET2METRIC[check_task(task)]]
    if task in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    if isinstance(answers, str):
        answers = [answers]
    best = 0.0
    for answer in answers:
        best = max(best, metric(prediction, answer, all_classes=all_classes or ()))
    return float(best)
