"""The terminal rendering of a report: zero-shot lines and rich tables, cell by cell."""

import io

from eval_helpers import make_report
from rich.console import Console
from rich.table import Table

from expertsteer.eval import render_report
from expertsteer.eval.render import concept_table, methods_table, zero_shot_lines

CONCEPT = {
    "concept": "positive",
    "alpha": 2.0,
    "norm": "mean",
    "n": 14,
    "plans": {
        "target mean-diff": {
            "span": 1.234,
            "span_ci95": [1.0, 1.5],
            "fraction_of_own": 1.0,
            "fraction_ci95": [1.0, 1.0],
        },
        "expertsteer:ridge": {
            "span": 0.5,
            "span_ci95": [0.125, 0.875],
            "fraction_of_own": 0.405,
            "fraction_ci95": [0.1, 0.7],
        },
    },
}


def headers(table: Table) -> list[str]:
    return [str(c.header) for c in table.columns]


def rows(table: Table) -> list[list[str]]:
    columns = [list(c.cells) for c in table.columns]
    return [list(row) for row in zip(*columns)]


def plain(renderable) -> str:
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_zero_shot_lines_skip_skipped_models():
    assert zero_shot_lines(make_report()) == [
        "zero-shot target tgt: val sum 0.500 / mean 0.600; test sum 0.429 / mean 0.500"
    ]
    report = make_report()
    report["models"]["expert"] = {
        "name": "exp",
        "val": {"sum": 1.0, "mean": 0.0},
        "test": {"sum": 0.25, "mean": 0.125},
    }
    assert zero_shot_lines(report)[1] == (
        "zero-shot expert exp: val sum 1.000 / mean 0.000; test sum 0.250 / mean 0.125"
    )
    assert zero_shot_lines(make_report(models={})) == []


def test_methods_table_title_and_columns():
    table = methods_table(make_report())
    assert table.title == (
        "t.jsonl: exp → tgt (test 14 items, mean log-likelihood; α and layers tuned on val 10)"
    )
    assert headers(table) == [
        "method",
        "test acc",
        "95% CI",
        "α",
        "layers",
        "p vs none",
        "p vs best baseline",
        "nulls (shuffled | random)",
        "beats nulls",
    ]
    assert methods_table(make_report(expert=None, norm="sum")).title == (
        "t.jsonl: - → tgt (test 14 items, sum log-likelihood; α and layers tuned on val 10)"
    )


def test_methods_table_rows():
    assert rows(methods_table(make_report())) == [
        ["none", "0.500", "[0.250, 0.750]", "-", "-", "-", "-", "-", "-"],
        ["mean-diff", "0.643", "[0.400, 0.900]", "2.5", "1,3", "0.000", "-", "-", "-"],
        [
            "expertsteer:ridge:depth",
            "0.714",
            "[0.500, 0.900]",
            "0",
            "-",
            "0.250",
            "0.500",
            "0.50 0.43 | 0.57 0.50",
            "[red]no",
        ],
        [
            "expertsteer:ae:lowest",
            "0.786",
            "[0.600, 1.000]",
            "4",
            "2",
            "0.001",
            "0.100",
            "0.50 | 0.50",
            "[green]yes",
        ],
    ]


def test_methods_table_prints_without_markup():
    text = plain(methods_table(make_report()))
    lines = [line for line in text.split("\n") if "expertsteer:" in line]
    assert len(lines) == 2
    assert lines[0].split("│")[-2].strip() == "no" and lines[1].split("│")[-2].strip() == "yes"
    assert "[red]" not in text and "[green]" not in text


def test_concept_table():
    table = concept_table(CONCEPT)
    assert table.title == "concept transfer (positive), ±2 × plan α"
    assert headers(table) == ["vector", "span", "fraction of target's own", "95% CI"]
    assert rows(table) == [
        ["target mean-diff", "1.23", "1.00", "[1.00, 1.00]"],
        ["expertsteer:ridge", "0.50", "0.41", "[0.10, 0.70]"],
    ]
    assert concept_table({**CONCEPT, "alpha": 0.5}).title == (
        "concept transfer (positive), ±0.5 × plan α"
    )


def test_render_report_in_order():
    out = render_report(make_report())
    assert len(out) == 2
    assert out[0] == zero_shot_lines(make_report())[0]
    assert isinstance(out[1], Table) and rows(out[1]) == rows(methods_table(make_report()))

    out = render_report(make_report(concept_transfer=CONCEPT))
    assert [type(x) for x in out] == [str, Table, Table]
    assert out[2].title == "concept transfer (positive), ±2 × plan α"
    assert rows(out[2]) == rows(concept_table(CONCEPT))
    assert len(render_report(make_report(concept_transfer={}))) == 2
