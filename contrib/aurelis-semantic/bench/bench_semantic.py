"""Calibrate the semantic tier: paraphrase hit rate and near-miss false-hit rate at several thresholds.

Requests go through a real pipeline (``normalize`` + ``semantic``) to a simulated upstream on 127.0.0.1, so
the scope rules (tenant, model, numbers) apply as in production. Every distinct first question (``a``) of
``pairs.json`` is stored first (sent with ``x-aurelis-cache: refresh``: answered by the upstream, then
stored); then every second question (``b``) is asked without being stored (``no-store``), with the threshold
at its minimum so that the best match and its score are always seen. A threshold then decides which of those
best matches would have been served:

- a *paraphrase* probe should get its own ``a``'s answer: a hit on it is good, a hit on another entry wrong;
- a *near-miss* probe must get no cached answer: a hit on its own ``a`` is wrong, and so is a hit on another
  entry where every text is distinct (see ``report`` for sets that repeat sentences).

Each split of ``pairs.json`` (``dev``: what the guards and the default were developed on; ``test``: held out)
is measured on its own. ``--sts-benchmark`` measures outside data instead: the STS Benchmark's dev and test
pairs, labelled as ``evaluate.py --sts-benchmark`` labels them (a score of 4 or more: a paraphrase; 1 to 3: a
near-miss). Run from contrib/aurelis-semantic with the package installed:
``python bench/bench_semantic.py [--backend minilm|hashing] [--split dev|test|both] [--no-guards]
[--sts-benchmark]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from typing import Any

import httpx

from aurelis_core import RequestContext, hookimpl, instrument, pipeline_of
from aurelis_core.testing import simulated_upstream

THRESHOLDS = (0.70, 0.75, 0.80, 0.82, 0.85, 0.88, 0.90, 0.92, 0.95)
#: (pair, answered with its own ``a``'s answer, best score or -1)
Result = tuple[dict[str, Any], bool, float]


class Recorder:
    """Keeps the semantic tier's score for the last request (``ctx.state`` is readable by observers)."""

    name = "bench_recorder"
    score: float | None = None
    vetoed: tuple[str, ...] = ()

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.score = ctx.state.get("semantic", {}).get("score")
        self.vetoed = tuple(ctx.state.get("semantic", {}).get("vetoed", ()))


def ask(client: httpx.Client, url: str, text: str, control: str) -> str:
    response = client.post(
        url,
        json={"model": "m", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": "Bearer bench", "x-aurelis-cache": control},
    )
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def measure(client: httpx.Client, url: str, recorder: Recorder, pairs: list[dict[str, Any]]) -> list[Result]:
    """Store every distinct ``a`` of ``pairs``, then probe with every ``b``: (pair, hit its own a?, score)."""
    results = []
    vetoes: collections.Counter[str] = collections.Counter()
    for text in dict.fromkeys(p["a"] for p in pairs):
        ask(client, url, text, "refresh")
    for pair in pairs:
        answer = ask(client, url, pair["b"], "no-store")
        own = answer == " ".join(("echo: " + pair["a"]).split())
        # score None: nothing in the probe's scope passed the guards (or the scope was empty, e.g. other
        # numbers), so it can never hit.
        results.append((pair, own, -1.0 if recorder.score is None else recorder.score))
        vetoes.update(recorder.vetoed)
    print(f"vetoes by guard (any candidate, any score): {dict(vetoes) or 'none'}")
    return results


def report(split: str, results: list[Result]) -> None:
    paraphrases = [r for r in results if r[0]["kind"] == "paraphrase"]
    near_misses = [r for r in results if r[0]["kind"] == "near-miss"]
    print(f"\n## split {split}: {len(paraphrases)} paraphrase probes, {len(near_misses)} near-miss probes\n")
    # A near-miss served its own pair's answer is a labelled false hit. Served another entry's answer, it is one
    # too when every text is distinct (pairs.json); in a set that repeats sentences across pairs (STS-B stores
    # "A man is playing a flute." once as one pair's a and probes it as another's b), that entry may be the very
    # same question, which no label judges: the column is then an upper bound.
    print("| threshold | paraphrase hit rate | paraphrase hits on another entry | near-miss served its pair's answer "
          "| near-miss served another entry |")
    print("|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        good = sum(1 for _, own, s in paraphrases if own and s >= threshold)
        wrong = sum(1 for _, own, s in paraphrases if not own and s >= threshold)
        false = sum(1 for _, own, s in near_misses if own and s >= threshold)
        other = sum(1 for _, own, s in near_misses if not own and s >= threshold)
        print(f"| {threshold:.2f} | {good}/{len(paraphrases)} ({good / len(paraphrases):.0%}) | {wrong} | "
              f"{false}/{len(near_misses)} ({false / len(near_misses):.1%}) | {other} |")
    print("\nnear-miss scores, highest first (-1: kept out by scope or guards, never served):")
    for pair, _, score in sorted(near_misses, key=lambda r: -r[2])[:8]:
        print(f"  {score:.3f}  {pair['a']!r} vs {pair['b']!r}")
    print("paraphrase scores, lowest first:")
    for pair, own, score in sorted(paraphrases, key=lambda r: r[2])[:10]:
        print(f"  {score:.3f}{'' if own else ' (another entry)'}  {pair['a']!r} vs {pair['b']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", default="minilm")
    parser.add_argument("--split", choices=("dev", "test", "both"), default="both")
    parser.add_argument("--no-guards", action="store_true", help="the threshold alone decides (guards = false)")
    parser.add_argument("--sts-benchmark", action="store_true", help="the STS Benchmark's pairs (see evaluate.py)")
    args = parser.parse_args()
    pairs: list[dict[str, Any]]
    if args.sts_benchmark:
        from evaluate import read_sts_benchmark  # this folder's evaluation script: one labelling of the set

        pairs = [{"kind": "paraphrase" if label else "near-miss", "a": a, "b": b, "split": split}
                 for a, b, label, split in read_sts_benchmark()]
    else:
        pairs = json.loads(Path(__file__).with_name("pairs.json").read_text())["pairs"]
    splits = ("dev", "test") if args.split == "both" else (args.split,)
    recorder = Recorder()
    config = {
        "plugins": ["normalize", "semantic"],
        "semantic": {"backend": args.backend, "threshold": 1e-6, "max_entries": len(pairs),
                     "guards": not args.no_guards},
    }
    with simulated_upstream() as upstream, instrument(httpx.Client(), config) as client:
        pipeline = pipeline_of(client)
        assert pipeline is not None
        pipeline.register(recorder)
        url = upstream.base_url + "/chat/completions"
        started = time.perf_counter()
        pipeline.start()
        load_s = time.perf_counter() - started
        print(f"backend={args.backend} guards={not args.no_guards} start (model load)={load_s:.2f}s")
        for split in splits:
            pipeline.plugin("semantic").clear()  # each split is measured against its own anchors only
            report(split, measure(client, url, recorder, [p for p in pairs if p["split"] == split]))


if __name__ == "__main__":
    main()
