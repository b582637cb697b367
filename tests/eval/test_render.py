"""The terminal rendering of a report: the same cells as results.md, full method names."""

import io

from eval_helpers import make_report
from rich.console import Console
from rich.table import Table

from expertsteer.eval import render_report
from expertsteer.eval.render import concept_table, methods_table, verdict_lines, zero_shot_table
from expertsteer.eval.report import COLUMNS, LEGEND, markdown_table

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
    "null_spans": {"shuffled_labels": [0.1, 0.2], "random_direction": [0.0, 0.3]},
    "null_rank_p": 0.2,
}


def headers(table: Table) -> list[str]:
    return [str(c.header) for c in table.columns]


def rows(table: Table) -> list[list[str]]:
    columns = [list(c.cells) for c in table.columns]
    return [list(row) for row in zip(*columns)]


def plain(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_zero_shot_table_shows_each_models_own_normalisation():
    table = zero_shot_table(make_report())
    assert headers(table) == ["model", "val acc", "test acc"]
    assert rows(table) == [
        ["target: tgt (mean)", "0.600", "0.500"],
        ["expert: exp", "cannot answer: no causal LM", ""],
    ]


def test_methods_table_has_the_markdown_cells():
    report = make_report()
    table = methods_table(report)
    assert headers(table) == [h for h, _ in COLUMNS]
    md_rows = [
        line.strip("| ").split(" | ")
        for line in markdown_table(report).split("\n")
        if line.startswith("| ")
        and line.split(" | ")[0][2:] in {r["name"] for r in report["methods"]}
    ]
    assert rows(table) == md_rows
    assert table.title.startswith("t.jsonl: exp → tgt; seeds 0; per seed train 24 / val 10 / test")


def test_method_names_are_never_cut_on_a_narrow_terminal():
    text = plain(methods_table(make_report()), width=80)
    assert "control:random-expert:ridge:depth" in text and "…" not in text


def test_verdict_lines_are_styled_by_outcome():
    report = make_report()
    report["methods"][3]["verdict"] = "the expert helps: beats none, its nulls, both controls"
    lines = verdict_lines(report)
    assert lines[0] == "[bold]none[/]: the target alone"
    assert lines[3].startswith("[bold]expertsteer:ridge:depth[/]: [green]the expert helps")
    assert lines[4].startswith("[bold]expertsteer:ae:lowest[/]: [red]not shown")
    assert "[red]" not in plain("\n".join(lines))


def test_concept_table():
    table = concept_table(CONCEPT)
    assert table.title == (
        "Concept transfer (positive): change in the concept choice's margin between α = −2 and "
        "+2 × plan α, 14 test items; the expert's vector against 4 nulls: rank p 0.200."
    )
    assert headers(table) == ["vector", "span", "fraction of target's own", "95% CI"]
    assert rows(table) == [
        ["target mean-diff", "1.23", "1.00", "[1.00, 1.00]"],
        ["expertsteer:ridge", "0.50", "0.41", "[0.10, 0.70]"],
    ]


def test_render_report_in_order():
    out = render_report(make_report())
    assert isinstance(out[0], Table) and rows(out[0]) == rows(zero_shot_table(make_report()))
    assert rows(out[1]) == rows(methods_table(make_report())) and out[2] == LEGEND
    assert out[3:] == verdict_lines(make_report())
    with_concept = render_report(make_report(concept_transfer=CONCEPT))
    assert rows(with_concept[-1]) == rows(concept_table(CONCEPT))
    assert len(render_report(make_report(concept_transfer={}))) == len(out)
    # nothing printed is a raw Python structure
    text = "".join(plain(x) for x in out)
    assert "{'" not in text and "':" not in text
