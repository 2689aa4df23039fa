"""rag.language: py3langid behind a small wrapper; short questions are told apart with the passages' languages."""

from __future__ import annotations

import pytest

from atelier.rag import language
from atelier.rag.language import UNDETERMINED, passage_language, query_language, same_language_probability

ENGLISH = ("Debian is a free operating system. Packages are installed with apt-get, which downloads them "
           "from the archive and resolves their dependencies.")
FRENCH = ("Debian est un système d'exploitation libre. Les paquets s'installent avec apt-get, qui les "
          "télécharge depuis l'archive et résout leurs dépendances.")


def test_passages_are_identified_among_all_languages():
    assert passage_language(ENGLISH) == "en"
    assert passage_language(FRENCH) == "fr"
    assert passage_language("1234 5678 -- //") == UNDETERMINED


def test_the_passage_language_is_cached_by_text():
    passage_language.cache_clear()
    passage_language(ENGLISH)
    passage_language(ENGLISH)
    info = passage_language.cache_info()
    assert (info.hits, info.misses) == (1, 1)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Comment installer un paquet sous Debian ?", "fr"),
        ("How do I install a package on Debian?", "en"),
        ("chanteuse américaine", "fr"),
    ],
)
def test_questions(query, expected):
    assert query_language(query, {"en"}).language == expected


def test_a_short_question_is_read_among_common_languages_and_the_passages():
    """Among all 139 languages "capital of Japan" comes out Quechua; with the prior it is English."""
    assert language.probabilities("capital of Japan")
    assert query_language("capital of Japan", {"en"}).language == "en"
    # among 139 languages English gets a few percent; against the likeliest other common one, most
    assert language.probabilities("capital city of Japan")["en"] < 0.2
    assert same_language_probability("capital city of Japan", {"en"}) > 0.7


def test_same_language_probability():
    assert same_language_probability("Comment installer un paquet sous Debian ?", {"en"}) < 0.1
    assert same_language_probability("Comment installer un paquet sous Debian ?", {"fr"}) > 0.9
    assert same_language_probability("How do I install a package on Debian?", {"en"}) > 0.9
    assert same_language_probability("How do I install a package on Debian?", {"en", "fr"}) > 0.9
    assert same_language_probability("QX-7741", {"en"}) is not None


def test_nothing_to_tell_is_none():
    assert same_language_probability("12345 ??", {"en"}) is None  # no letters in the question
    assert same_language_probability("How do I install it?", {UNDETERMINED}) is None  # passages unidentified
    assert same_language_probability("How do I install it?", set()) is None
    assert query_language("42", {"en"}) == language.Guess(UNDETERMINED, 0.0)
