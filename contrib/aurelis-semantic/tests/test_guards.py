"""The word guards on their own: which pairs each one vetoes, and the paraphrases it must let through.

The pairs are the kinds a sentence embedding scores as near-identical (see bench/pairs.json), plus the
rewordings that look like them but ask the same thing: a guard that vetoed those would only cost hits.
"""

from __future__ import annotations

import pytest
from aurelis_semantic.guards import analyse, conflict


@pytest.mark.parametrize(
    ("a", "b", "guard"),
    [
        ("Why is my laptop charging?", "Why is my laptop not charging?", "negation"),
        ("How do I make pancakes with eggs?", "How do I make pancakes without eggs?", "negation"),
        ("Does it support HDR?", "Why doesn't it support HDR?", "negation"),
        ("Which is bigger, 9.11 or 9.9?", "Which is smaller, 9.11 or 9.9?", "contrast"),
        ("Sort a list in ascending order.", "Sort a list in descending order.", "contrast"),
        ("Get the first element of an array.", "Get the last element of an array.", "contrast"),
        ("How do I allow inbound traffic?", "How do I deny inbound traffic?", "contrast"),
        ("How do I turn on dark mode?", "How do I turn off dark mode?", "contrast"),
        ("Why does it return true?", "Why does it return false?", "contrast"),
        # Opposing prefixes, not in the lexicon.
        ("How do I install numpy?", "How do I uninstall numpy?", "contrast"),
        ("How do I encrypt a file?", "How do I decrypt a file?", "contrast"),
        ("How do I upload photos?", "How do I download photos?", "contrast"),
        ("Convert 10 miles to kilometers.", "Convert 10 kilometers to miles.", "order"),
        ("Migrate from MySQL to PostgreSQL.", "Migrate from PostgreSQL to MySQL.", "order"),
        ("Is a broker better than a bank?", "Is a bank better than a broker?", "order"),
        ("Can a cat eat dog food?", "Can a dog eat cat food?", "order"),
        ("What is the capital of Austria?", "What is the capital of Australia?", "name"),
        ("Who wrote Pride and Prejudice?", "Who wrote War and Peace?", "name"),
        ("What is the daily intake of vitamin D?", "What is the daily intake of vitamin C?", "name"),
        ("What is 5 feet in meters?", "What is 5 feet in centimeters?", "name"),
        ("How many ounces are in a cup?", "How many grams are in a cup?", "name"),
    ],
)
def test_vetoes(a: str, b: str, guard: str) -> None:
    assert conflict(analyse(a), analyse(b)) == guard
    assert conflict(analyse(b), analyse(a)) == guard  # symmetric: which one was stored does not matter


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Why is my phone not charging?", "Why won't my phone charge?"),  # both negated
        ("How do I bake a cake without eggs?", "How can I bake a cake with no eggs?"),
        # "on" in both, "off" only in one: not opposite poles taken by each.
        ("How do I turn off notifications on my iPhone?", "How can I disable notifications on an iPhone?"),
        ("What is the largest planet?", "Which planet is the biggest?"),  # same pole
        ("How do I undo the last git commit?", "How can I revert my most recent git commit?"),
        # A moved phrase is not a swap; a relation word between the pair in only one text is no reversal.
        ("How do I read a file in Python?", "In Python, how can I read a file?"),
        ("Convert 5 miles to kilometers.", "How many kilometers is 5 miles?"),
        ("How do I encrypt a file with GPG?", "How can I use GPG to encrypt a file?"),
        ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
        # A name or unit added on one side only is no substitution; the sentence-opening capital is no name.
        ("What is the tallest mountain in the world?", "Which mountain is the highest on Earth?"),
        ("How long should I boil an egg?", "How many minutes should I boil an egg?"),
        ("What is the GDP of Germany?", "What is Germany's gross domestic product?"),
        ("how do i delete my account", "How do I delete my account?"),
        ("Python: how do I read a file?", "How do I read a file in Python?"),
    ],
)
def test_paraphrases_pass(a: str, b: str) -> None:
    assert conflict(analyse(a), analyse(b)) is None
    assert conflict(analyse(b), analyse(a)) is None


def test_analysis() -> None:
    found = analyse("Why won\u2019t Japan\u2019s API convert 5 km to Miles?")
    assert found.negated  # the typographic apostrophe too
    assert found.names == {"japan", "api", "kilometer", "mile"}  # units by their canonical name
    assert "japan" in found.mentioned and "mile" in found.mentioned
