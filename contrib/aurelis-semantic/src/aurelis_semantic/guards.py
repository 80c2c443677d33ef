"""Guards: cheap word-level checks that veto a semantic match the embedding scores high but that asks the opposite.

Sentence embeddings place a question and its reversal side by side: "Convert 10 miles to kilometers" and
"Convert 10 kilometers to miles" score 0.993 with all-MiniLM-L6-v2, "bigger"/"smaller" 0.961, "Why is my laptop
charging?"/"... not charging?" about 1.0. Distributional models learn that antonyms, negations and swapped
operands occur in the same contexts, so no threshold separates them from paraphrases. These guards look at the
words instead, and each vetoes a candidate for one reason:

``negation``
    One text is negated (not, no, never, without, n't, ...) and the other is not.
``contrast``
    The texts take opposite poles of one axis ("ascending"/"descending", "allow"/"deny", "first"/"last"):
    from :data:`AXES`, a small hand-kept English lexicon, because no offline antonym source ships on PyPI
    (WordNet needs a data download). Or a word of one is a word of the other with an opposing prefix
    ("install"/"uninstall", "encrypt"/"decrypt", "upload"/"download"), which covers much of the rest.
``order``
    The same two words in reversed order around the same relation word ("miles *to* kilometers" /
    "kilometers *to* miles", "faster *than*"), or two words swapped in otherwise the same words
    ("cat ... dog food" / "dog ... cat food"). Moving a phrase ("In Python, how ..." / "How ... in Python")
    is not a swap and passes.
``name``
    Each text names a thing the other does not mention: a proper noun or acronym ("Austria"/"Australia",
    "Hamlet"/"Macbeth", "TCP"/"HTTP") or a unit ("feet in meters"/"feet in centimeters", "mg"/"g",
    "40 \u00b0C"/"40 \u00b0F"). Only a *substitution* vetoes: a paraphrase often adds a name the other leaves
    implicit ("the world"/"Earth", "how long"/"how many minutes").
``population``
    The texts are about different people: adults, children, infants, teenagers, the elderly, pregnant
    women (:data:`POPULATIONS`). A dose, an intake or a symptom differs between them, and an embedding scores
    "maximum dose of acetaminophen for adults" / "... for children" 0.931. Unlike a name, a population named
    on one side only vetoes too: "the dose" and "the dose for a child" are not the same answer.

The numbers of a text are compared exactly, not by a guard: :func:`numbers` reads them (the sign of "-40",
and numbers written as words: "two plus two" is ``("2", "2")``) and the tier puts them in the scope.

Every guard errs towards a miss: a veto costs one upstream call, a wrong answer costs the user. They are
English-only (turn them off with ``guards = false`` for other languages). :func:`analyse` costs about 10-20 us
per text and is done once per text; :func:`conflict` a few microseconds per candidate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AXES", "POPULATIONS", "Analysis", "analyse", "conflict", "numbers"]

# Words, with inner apostrophes ("don't", "Japan's"); numbers are left to the scope (they must match exactly).
# Written as escapes: \u2019 is the typographic apostrophe, \u201c \u2018 typographic opening quotes.
_WORD = re.compile("[^\\W\\d_]+(?:['\u2019][^\\W\\d_]+)*")
_SENTENCE_END = frozenset(".?!:;\"'\u201c\u2018(")

NEGATIONS = frozenset(
    "not no never without none nothing nobody neither nor cannot nowhere".split()
)

#: Opposite poles, one axis per line; a word may sit on several axes. Forms are listed rather than stemmed:
#: stemming merges words it should not ("later"/"late", "lower"/"low" are fine, "number"/"numb" is not).
AXES: tuple[tuple[str, ...], ...] = (
    ("big bigger biggest large larger largest great greater greatest high higher highest max maximum maximize "
     "more most tall taller tallest long longer longest wide wider widest heavy heavier heaviest increase "
     "increasing raise grow expand",
     "small smaller smallest little less least low lower lowest min minimum minimize fewer fewest short shorter "
     "shortest narrow narrower narrowest light lighter lightest decrease decreasing reduce shrink"),
    ("first earliest initial", "last latest final recent"),
    ("old older oldest", "new newer newest young younger youngest"),
    ("before prior", "after"),
    ("early earlier", "late later"),
    ("top above upper", "bottom below lower"),
    ("up", "down"),
    ("on", "off"),
    ("left", "right"),
    ("north northern", "south southern"),
    ("east eastern", "west western"),
    ("inside inner internal", "outside outer external"),
    ("uppercase capital", "lowercase"),
    ("horizontal horizontally", "vertical vertically"),
    ("ascending ascend asc", "descending descend desc"),
    ("true correct", "false wrong incorrect"),
    ("allow allowed permit enable grant accept approve whitelist",
     "deny denied forbid block disable revoke reject refuse blacklist"),
    ("open", "close closed"),
    ("start begin launch", "stop halt terminate"),
    ("show visible", "hide hidden"),
    ("include", "exclude"),
    ("add append insert plus", "remove delete drop subtract minus"),
    ("import", "export"),
    ("upload", "download"),
    ("push", "pull"),
    ("send sender", "receive receiver"),
    ("buy purchase", "sell"),
    ("read", "write"),
    ("input inbound incoming ingress", "output outbound outgoing egress"),
    ("encode encrypt", "decode decrypt"),
    ("login signin", "logout signout"),
    ("good better best positive healthy beneficial benefit advantage pro pros",
     "bad worse worst negative unhealthy harmful dangerous drawback disadvantage con cons"),
    ("safe", "unsafe dangerous"),
    ("hot warm heat", "cold cool"),
    ("fast faster fastest quick quicker", "slow slower slowest"),
    ("cheap cheaper cheapest", "expensive pricier"),
    ("easy easier easiest", "hard harder hardest difficult"),
    ("hard", "soft"),
    ("light", "dark"),
    ("black", "white"),
    ("full", "empty"),
    ("wet", "dry"),
    ("strong stronger", "weak weaker"),
    ("rich", "poor"),
    ("win winning", "lose losing"),
    ("profit gain", "loss"),
    ("odd", "even"),
    ("positive", "negative"),
    ("male man men boy", "female woman women girl"),
    ("day daytime", "night"),
    ("spring", "summer", "autumn fall", "winter"),
    ("sync synchronous", "async asynchronous"),
    ("static", "dynamic"),
    ("explicit", "implicit"),
    ("absolute", "relative"),
    ("public", "private"),
    ("required mandatory", "optional"),
    ("local", "remote", "global"),
    ("enter entry", "exit"),
    ("arrive arrival", "depart departure"),
    ("love", "hate"),
    ("boiling boil", "freezing freeze melting melt"),
)
_POLES: dict[str, list[tuple[int, int]]] = {}
for _axis, _poles in enumerate(AXES):
    for _pole, _words in enumerate(_poles):
        for _word in _words.split():
            _POLES.setdefault(_word, []).append((_axis, _pole))

#: ``word`` vs ``prefix + word`` (undo, negate) and ``a + root`` vs ``b + root`` (opposite directions).
_PREFIX_PAIRS = (
    ("", "un"), ("", "dis"), ("", "de"), ("", "in"), ("", "im"), ("", "il"), ("", "ir"), ("", "non"),
    ("", "anti"), ("", "mis"), ("en", "de"), ("in", "de"), ("in", "ex"), ("im", "ex"), ("in", "out"),
    ("up", "down"), ("over", "under"), ("pre", "post"), ("a", "de"), ("as", "des"),
)
_MIN_ROOT = 3
_OPPOSITE_PREFIXES: dict[str, set[str]] = {}
for _p, _q in _PREFIX_PAIRS:
    _OPPOSITE_PREFIXES.setdefault(_p, set()).add(_q)
    _OPPOSITE_PREFIXES.setdefault(_q, set()).add(_p)

#: Words whose order carries a relation between the words around them ("A to B" is not "B to A").
RELATIONS = frozenset("to into from than before after vs versus of over per onto towards toward under".split())
#: Words joining two things symmetrically: swapping "TCP and UDP" does not change the question.
_SYMMETRIC = frozenset("and or a an the".split())

#: Units, each mapped to one canonical name, so "km" and "kilometres" count as one unit.
_UNIT_GROUPS = (
    "mile miles mi", "kilometer kilometers kilometre kilometres km", "meter meters metre metres",
    "centimeter centimeters centimetre centimetres cm", "millimeter millimeters millimetre millimetres mm",
    "inch inches", "foot feet ft", "yard yards yd", "pound pounds lb lbs", "ounce ounces oz",
    "gram grams", "kilogram kilograms kg kilo kilos", "ton tons tonne tonnes", "liter liters litre litres",
    "milliliter milliliters millilitre millilitres ml", "gallon gallons gal", "quart quarts", "pint pints",
    "cup cups", "tablespoon tablespoons tbsp", "teaspoon teaspoons tsp", "second seconds sec secs",
    "minute minutes min mins", "hour hours hr hrs", "day days", "week weeks", "month months", "year years",
    "decade decades", "century centuries", "celsius centigrade", "fahrenheit", "kelvin",
    "byte bytes", "bit bits", "kilobyte kilobytes kb", "megabyte megabytes mb", "gigabyte gigabytes gb",
    "terabyte terabytes tb", "mph", "kph kmh", "watt watts", "kilowatt kilowatts kw", "kwh", "volt volts",
    "amp amps ampere amperes", "joule joules", "calorie calories kcal", "acre acres", "hectare hectares",
    "dollar dollars usd", "euro euros eur", "yen", "percent percentage",
    "milligram milligrams mg", "microgram micrograms mcg \u00b5g \u03bcg", "iu",
)
_UNITS = {form: group.split()[0] for group in _UNIT_GROUPS for form in group.split()}
#: One-letter units, read as units only right after a number or a degree sign ("500 g", "40 \u00b0C"): elsewhere
#: they are letters ("e.g.", "vitamin C").
_LETTER_UNITS = {"g": "gram", "c": "celsius", "f": "fahrenheit", "l": "liter", "k": "kelvin"}

#: Groups of people a question can be about, each word mapped to its group: what is safe, normal or dosed
#: for one is not for another.
POPULATIONS = {
    form: group.split()[0]
    for group in (
        "adult adults grownup grownups",
        "child children kid kids pediatric paediatric",
        "infant infants baby babies newborn newborns neonate neonates neonatal toddler toddlers",
        "teenager teen teens teenagers teenage adolescent adolescents adolescence",
        "elderly senior seniors geriatric",
        "pregnant pregnancy breastfeeding lactating",
    )
    for form in group.split()
}

# Numbers: digits with their sign ("-40", not the "-" of "10-20"), or a run of number words.
_TOKEN = re.compile("(?:(?<![\\w.])[-\u2212])?\\d+(?:[.,]\\d+)*|[^\\W\\d_]+")
_UNITS_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
_SMALL = {word: value for value, word in enumerate(_UNITS_WORDS)}
_TENS = {word: 10 * (i + 2) for i, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER_WORDS = _SMALL.keys() | _TENS.keys() | _SCALES.keys()
#: "one" is a number next to one of these (or another number), a pronoun elsewhere ("which one is better?").
_ARITHMETIC = frozenset(
    "plus minus times divided multiplied over add added subtract subtracted sum equals squared cubed".split()
)

STOPWORDS = frozenset(
    "a an the i me my mine you your yours we our us he she him her his they them their it its this that these "
    "those there here is are was were be been being am do does did done doing how what which who whom whose "
    "when where why can could should would will shall may might must at in on for with about as and or but if "
    "then so just please some any all each every".split()
)


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the guards need to know about one text; computed once per text."""

    #: Lower-cased words, in order.
    words: tuple[str, ...]
    #: The same words with a plural "s" dropped, as a set: "pancakes" mentions "pancake".
    mentioned: frozenset[str]
    negated: bool
    #: axis -> the poles this text takes on it.
    poles: dict[int, frozenset[int]]
    #: Proper nouns, acronyms and units (canonical, lower-case).
    names: frozenset[str]
    #: Content words (not stop or relation words), singular, in order.
    content: tuple[str, ...]
    #: The groups of people it is about (:data:`POPULATIONS`).
    populations: frozenset[str]


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def analyse(text: str) -> Analysis:
    """Split ``text`` into the facts :func:`conflict` compares."""
    words: list[str] = []
    names: set[str] = set()
    for match in _WORD.finditer(text):
        raw = match.group()
        word = raw.lower().replace("\u2019", "'")
        if word.endswith("'s"):
            word = word[:-2]
        words.append(word)
        # A capital letter names something unless it only opens a sentence; "I" is no name.
        before = text[: match.start()].rstrip()
        starts_sentence = not before or before[-1] in _SENTENCE_END
        if word in _LETTER_UNITS and before and (before[-1].isdigit() or before[-1] == "\u00b0"):
            names.add(_LETTER_UNITS[word])
        elif raw != "I" and (raw.isupper() or (raw[0].isupper() and not starts_sentence)):
            names.add(_singular(word))
        elif word in _UNITS:
            names.add(_UNITS[word])
    poles: dict[int, set[int]] = {}
    for word in words:
        for axis, pole in _POLES.get(word, ()):
            poles.setdefault(axis, set()).add(pole)
    return Analysis(
        words=tuple(words),
        mentioned=frozenset(_singular(w) for w in words),
        negated=any(w in NEGATIONS or w.endswith("n't") for w in words),
        poles={axis: frozenset(p) for axis, p in poles.items()},
        names=frozenset(names),
        content=tuple(_singular(w) for w in words if w not in STOPWORDS and w not in RELATIONS),
        populations=frozenset(POPULATIONS[w] for w in words if w in POPULATIONS),
    )


def numbers(text: str) -> tuple[str, ...]:
    """The numbers of ``text`` in order, as the tier compares them exactly: digits as written with their sign
    ("-40" is not "40"), and runs of number words as their value ("twenty-five" is ``"25"``, "two plus two"
    ``("2", "2")``). "one" counts only next to arithmetic or another number."""
    tokens = [m.group() for m in _TOKEN.finditer(text)]
    found: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        lowered = token.lower()
        if token[0] in "-\u2212" or token[0].isdigit():
            found.append(token.replace("\u2212", "-"))
            i += 1
            continue
        if lowered not in _NUMBER_WORDS:
            i += 1
            continue
        start = i
        total = current = 0
        while i < len(tokens):
            lowered = tokens[i].lower()
            if lowered in _SMALL or lowered in _TENS:
                current += _SMALL.get(lowered, 0) + _TENS.get(lowered, 0)
            elif lowered in _SCALES:
                scale = _SCALES[lowered]
                if scale == 100:
                    current = max(current, 1) * scale
                else:
                    total, current = total + max(current, 1) * scale, 0
            elif not (lowered == "and" and i + 1 < len(tokens) and tokens[i + 1].lower() in _NUMBER_WORDS):
                break
            i += 1
        if i - start == 1 and tokens[start].lower() == "one":
            neighbours = {t.lower() for t in tokens[max(start - 1, 0) : start] + tokens[i : i + 1]}
            if not neighbours & _ARITHMETIC:
                continue
        negative = start > 0 and tokens[start - 1].lower() == "negative"
        found.append(("-" if negative else "") + str(total + current))
    return tuple(found)


def conflict(a: Analysis, b: Analysis) -> str | None:
    """The name of the first guard that vetoes serving ``a``'s answer for ``b`` (or back), else ``None``."""
    if a.negated != b.negated:
        return "negation"
    if a.populations != b.populations:
        return "population"
    if _contrast(a, b):
        return "contrast"
    if _reordered(a, b):
        return "order"
    # A substitution: each names something the other does not mention at all.
    if a.names - b.mentioned and b.names - a.mentioned:
        return "name"
    return None


def _contrast(a: Analysis, b: Analysis) -> bool:
    # Each takes a pole the other does not: "turn off ... on my iPhone" (both poles of on/off) still matches
    # "disable ... on an iPhone" (only "on"), but "turn on" and "turn off" do not match.
    for axis, poles in a.poles.items():
        other = b.poles.get(axis)
        if other is not None and poles - other and other - poles:
            return True
    only_b = b.mentioned - a.mentioned
    if not only_b:
        return False
    # A word of one is a word of the other with its prefix swapped for an opposing one: set look-ups only.
    for x in a.mentioned - b.mentioned:
        for prefix, opposites in _OPPOSITE_PREFIXES.items():
            if x.startswith(prefix) and len(x) - len(prefix) >= _MIN_ROOT:
                root = x[len(prefix):]
                if any(q + root in only_b for q in opposites):
                    return True
    return False


def _reordered(a: Analysis, b: Analysis) -> bool:
    # Two content words swapped, everything else in place: "cat ... dog food" / "dog ... cat food".
    if len(a.content) == len(b.content) and a.content != b.content:
        diff = [i for i, (x, y) in enumerate(zip(a.content, b.content, strict=True)) if x != y]
        if len(diff) == 2:
            i, j = diff
            if a.content[i] == b.content[j] and a.content[j] == b.content[i] and not _joined_symmetrically(
                a, a.content[i], a.content[j]
            ):
                return True
    # A relation reversed: a shared pair of words in opposite orders, one relation word between them in both.
    pos_a = _first_positions(a.words)
    pos_b = _first_positions(b.words)
    shared = [w for w in pos_a if w in pos_b and w not in STOPWORDS and w not in RELATIONS]
    for n, u in enumerate(shared):
        for v in shared[n + 1 :]:
            if (pos_a[u] < pos_a[v]) != (pos_b[u] < pos_b[v]):
                between_a = _between(a.words, pos_a[u], pos_a[v])
                between_b = _between(b.words, pos_b[u], pos_b[v])
                if between_a & between_b & RELATIONS:
                    return True
    return False


def _first_positions(words: tuple[str, ...]) -> dict[str, int]:
    positions: dict[str, int] = {}
    for i, word in enumerate(words):
        positions.setdefault(_singular(word), i)
    return positions


def _between(words: tuple[str, ...], i: int, j: int) -> frozenset[str]:
    lo, hi = sorted((i, j))
    return frozenset(words[lo + 1 : hi])


def _joined_symmetrically(a: Analysis, x: str, y: str) -> bool:
    positions = _first_positions(a.words)
    if x not in positions or y not in positions:
        return False
    return _between(a.words, positions[x], positions[y]) <= _SYMMETRIC
