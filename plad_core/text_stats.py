"""Statistics of one text that several layers read: the share of its word n-grams that repeat.

A foundation module: pair curation (``plad_core.pairs``) drops pairs whose teacher text loops, the
evaluation and the table report the same share of dev outputs, and all must count it one way.
"""

from __future__ import annotations


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """The share of ``text``'s word n-grams (lower-cased, split on whitespace) that repeat an n-gram seen
    earlier in the same text: 0 for a text without repetition (or shorter than n words), near 1 for a
    loop such as "I'm not sure, I'm not sure, ...". ROUGE F1 barely penalises such loops, so the table
    reports this beside it and pair curation drops teacher texts above ``pairs.curate.max_repeat_share``."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
