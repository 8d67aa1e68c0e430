"""Tokenisation for the offline scorer: identifiers and words, split and normalised the same way on both
sides, so a claim saying "adds word counting" can be matched against ``def word_count(...)``."""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")

# Words that describe any change (or are syntax) carry no evidence about this change in particular.
_STOPWORD_TEXT = """
    the and for with that this these those from into onto are was were been being has have had not but its
    can will would should could now also all any when then than which who whom what why how does did doing
    use uses used using add adds added adding remove removes removed removing delete deletes deleted update
    updates updated change changes changed modify modifies modified fix fixes fixed new old file files line
    lines code function functions method methods class classes def return returns self none true false
    import pass const let var value values make makes made via per more less some such only just about
    there their them they our your you out get gets set sets adds lot several each both other same
    instead where while after before because test tests
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def normalise(word: str) -> str:
    """Lower-case and strip a plural ``s`` (not ``ss``) so "counts" meets "count"."""
    word = word.lower()
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokens(text: str) -> set[str]:
    """Content tokens of ``text``: each identifier whole and split into its snake/camel parts, >= 3
    characters, minus stopwords."""
    out: set[str] = set()
    for word in _WORD.findall(text):
        candidates = {word, *_PARTS.findall(word)}
        for candidate in candidates:
            token = normalise(candidate.strip("_"))
            if len(token) >= 3 and token not in STOPWORDS:
                out.add(token)
    return out


def overlap(a: set[str], b: set[str]) -> float:
    """Share of ``a`` found in ``b`` (0.0 when ``a`` is empty)."""
    return len(a & b) / len(a) if a else 0.0
