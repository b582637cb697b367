"""The report folder on small hand-built reports: results.md's tables cell by cell, results.json,
the PNG plots, the saved plans, and files replaced whole."""

import json

import pytest
import torch
from eval_helpers import make_report

from expertsteer.eval import EvalResult, markdown_table, write_report
from expertsteer.eval.report import LEGEND
from expertsteer.plan import ModelInfo, SteeringPlan

PNG_HEAD = b"\x89PNG\r\n\x1a\n"
PNG_TAIL = b"IEND\xaeB`\x82"  # the IEND chunk and its CRC: the file was written to its end

TABLE_HEAD = [
    "| method | acc | bal acc | 95% CI | α | layers | p none | p best | null p | controls r/t |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def section(md, header):
    """The rows of the table whose header line starts with ``header`` (up to the blank line)."""
    lines = md.split("\n")
    start = next(k for k, line in enumerate(lines) if line.startswith(header))
    end = lines.index("", start)
    return lines[start:end]


# --- results.md -------------------------------------------------------------------------------


def test_markdown_heading_and_zero_shot_table():
    md = markdown_table(make_report())
    assert md.split("\n")[:10] == [
        "### t.jsonl: exp → tgt",
        "",
        "t.jsonl: exp → tgt; seeds 0; per seed train 24 / val 10 / test 14 items "
        "(label-balanced); majority answer rate 0.500; multiple choice by per-token mean "
        "log-likelihood (chosen on validation); vectors from: task train split; expertsteer "
        "0.1.0 at 0123456789",
        "best target-only baseline (chosen on validation): mean-diff",
        "",
        "| model (zero-shot) | val acc | test acc |",
        "|---|---|---|",
        "| target: tgt (mean) | 0.600 | 0.500 |",
        "| expert: exp | cannot answer: no causal LM |  |",
        "",
    ]
    assert md.endswith(")\n")  # the last verdict, then one newline


def test_markdown_methods_rows_and_verdicts():
    md = markdown_table(make_report())
    assert section(md, "| method | acc") == [
        *TABLE_HEAD,
        "| none | 0.500 | 0.500 | [0.250, 0.750] | - | - | - | - | - | - |",
        "| majority | 0.500 | 0.500 | [0.250, 0.750] | - | - | 1.000 | - | - | - |",
        "| mean-diff | 0.643 | 0.625 | [0.400, 0.900] | 2.50 | 1,3 | 0.002 | - | - | - |",
        "| expertsteer:ridge:depth | 0.714 | 0.700 | [0.500, 0.900] | 0.00 | - | 0.500 | "
        "1.000 | 0.333 | 0.500/0.571 |",
        "| expertsteer:ae:lowest | 0.786 ± 0.050 | 0.800 | [0.600, 1.000] | 4.00 | 2 | 0.003 | "
        "0.200 | <0.001 | - |",
        "| control:random-expert:ridge:depth | 0.500 | 0.500 | [0.250, 0.750] | 1.00 | 1 | "
        "1.000 | - | - | - |",
    ]
    assert LEGEND in md
    assert section(md, "- **none**") == [
        "- **none**: the target alone",
        "- **majority**: the label prior (always the commonest train answer)",
        "- **mean-diff**: beats none (p_adj 0.002)",
        "- **expertsteer:ridge:depth**: not shown: no different from none (p_adj 0.50)",
        "- **expertsteer:ae:lowest**: not shown: no controls run; not above mean-diff (p_adj 0.20)",
        "- **control:random-expert:ridge:depth**: no different from none (p_adj 1.00)",
    ]


def test_markdown_no_expert_summed_norm_and_missing_values():
    report = make_report(expert=None, norm="sum", git_commit=None, balanced=False)
    report["models"] = {
        "target": {
            "name": "tgt",
            "norm": "sum",
            "val": {"sum": float("nan"), "mean": None},
            "test": {"sum": 1.0, "mean": 0.0},
        }
    }
    report["methods"] = [
        {
            "name": "pca",
            "kind": "target-only",
            "score": float("nan"),
            "ci95": [None, 1.0],
            "alpha": None,
            "layers": None,
            "p_vs_none": None,
            "nulls": {},
            "beats_null": None,
        }
    ]
    md = markdown_table(report)
    lines = md.split("\n")
    assert lines[0] == "### t.jsonl: - → tgt"
    assert "multiple choice by summed log-likelihood (chosen on validation)" in lines[2]
    assert "label-balanced" not in lines[2] and lines[2].endswith("expertsteer 0.1.0")
    assert "| target: tgt (sum) | - | 1.000 |" in lines
    assert section(md, "| method | acc")[2:] == [
        "| pca | - | - | [-, 1.000] | - | - | - | - | - | - |"
    ]


def test_markdown_p_value_formatting():
    def p_cell(p):
        report = make_report()
        report["methods"] = [{**report["methods"][1], "p_vs_none_adjusted": p}]
        return section(markdown_table(report), "| method | acc")[2].split(" | ")[6]

    assert [p_cell(p) for p in (0.0, 0.000999, 0.001, 0.0126, 1.0)] == [
        "<0.001",
        "<0.001",
        "0.001",
        "0.013",
        "1.000",
    ]


def test_markdown_generation_table_only_when_scored():
    assert "generation (alias match)" not in markdown_table(make_report())
    report = make_report()
    report["methods"][2].update(generation_score=0.25, generation_ci95=[0.1, 0.5])
    report["methods"][2].update(generation_p_vs_none=0.0004, generation_p_adjusted=0.0008)
    report["methods"][4].update(generation_score=1 / 3, generation_ci95=[0.0, None])
    assert section(markdown_table(report), "| method | generation") == [
        "| method | generation (alias match) | 95 % CI | p none | Holm |",
        "|---|---|---|---|---|",
        "| mean-diff | 0.250 | [0.100, 0.500] | <0.001 | <0.001 |",
        "| expertsteer:ae:lowest | 0.333 | [0.000, -] | - | - |",
    ]


def test_markdown_concept_transfer():
    concept = {
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
                "fraction_ci95": [float("nan"), 0.7],
            },
        },
        "null_spans": {"shuffled_labels": [0.1] * 20, "random_direction": [0.2] * 20},
        "null_rank_p": 1 / 41,
    }
    md = markdown_table(make_report(concept_transfer=concept))
    lines = md.split("\n")
    start = lines.index(
        "Concept transfer (positive): change in the concept choice's margin between "
        "α = −2 and +2 × plan α, 14 test items; the expert's vector against 40 nulls: rank p "
        "0.024."
    )
    assert lines[start + 1 :] == [
        "",
        "| vector | span | 95 % CI | fraction of target's own | 95 % CI |",
        "|---|---|---|---|---|",
        "| target mean-diff | 1.23 | [1.00, 1.50] | 1.00 | [1.00, 1.00] |",
        "| expertsteer:ridge | 0.50 | [0.12, 0.88] | 0.41 | [-, 0.70] |",
        "",
    ]
    assert "Concept transfer" not in markdown_table(make_report(concept_transfer={}))


# --- write_report -----------------------------------------------------------------------------


def test_write_report_from_a_dict(tmp_path):
    report = make_report()
    before = json.dumps(report, sort_keys=True)
    out = write_report(report, tmp_path / "r")
    assert out == tmp_path / "r"
    assert json.dumps(report, sort_keys=True) == before  # the caller's dict is not changed
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "results.json", "results.md"]
    saved = json.loads((out / "results.json").read_text())
    assert saved == {**json.loads(before), "plots": ["accuracy.png"], "plans": {}}
    assert (out / "results.json").read_text() == json.dumps(saved, indent=2, sort_keys=True) + "\n"
    assert (out / "results.md").read_text(encoding="utf-8") == markdown_table(report)
    png = (out / "accuracy.png").read_bytes()
    assert png.startswith(PNG_HEAD) and png.endswith(PNG_TAIL)


def test_write_report_plots_the_sweeps(tmp_path):
    sweeps = {
        "mean-diff": [
            {"alpha": 0.0, "n_layers": 1, "score": 0.5},
            {"alpha": 1.0, "n_layers": 1, "score": 0.6},
            {"alpha": 1.0, "n_layers": 2, "score": 0.7},
        ],
        "expertsteer:ae:lowest": [{"alpha": 0.0, "n_layers": 1, "score": 0.4}],
    }
    out = write_report(make_report(sweeps=sweeps), tmp_path / "deep" / "er")
    saved = json.loads((out / "results.json").read_text())
    assert saved["plots"] == ["alpha_sweep.png", "accuracy.png"]
    assert saved["sweeps"] == sweeps
    for name in saved["plots"]:
        png = (out / name).read_bytes()
        assert png.startswith(PNG_HEAD) and png.endswith(PNG_TAIL)


def _plan(mi=True):
    target, expert = ModelInfo("tgt", "t", 4, 8), ModelInfo("exp", "e", 5, 6)
    return SteeringPlan(
        {1: torch.eye(8)[0], 3: torch.eye(8)[1]},
        {1: 2.0, 3: 2.0},
        target,
        expert=expert,
        pairs=[(2, 1), (4, 3)],
        mi_matrix=torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) if mi else None,
    )


def test_write_report_from_a_result_saves_plans_and_the_mi_map(tmp_path):
    plan = _plan()
    result = EvalResult(
        report=make_report(),
        plans={"expertsteer:ae:lowest": plan, "mean-diff": _plan(mi=False)},
        mi_plan=plan,
    )
    out = write_report(result, tmp_path / "r")
    assert "plots" not in result.report and "plans" not in result.report
    saved = json.loads((out / "results.json").read_text())
    assert saved["plots"] == ["accuracy.png", "mi_matrix.png"]
    assert saved["plans"] == {
        "expertsteer:ae:lowest": "plans/expertsteer_ae_lowest",
        "mean-diff": "plans/mean-diff",
    }
    assert sorted(p.name for p in (out / "plans").iterdir()) == [
        "expertsteer_ae_lowest",
        "mean-diff",
    ]
    back = SteeringPlan.from_pretrained(out / "plans" / "expertsteer_ae_lowest")
    assert back.layers == [1, 3] and back.alphas == {1: 2.0, 3: 2.0}
    assert back.pairs == [(2, 1), (4, 3)] and torch.allclose(back.mi_matrix.float(), plan.mi_matrix)
    assert SteeringPlan.from_pretrained(out / "plans" / "mean-diff").mi_matrix is None
    for name in saved["plots"]:
        png = (out / name).read_bytes()
        assert png.startswith(PNG_HEAD) and png.endswith(PNG_TAIL)


def test_write_report_replaces_files_whole(tmp_path):
    out = tmp_path / "r"
    write_report(make_report(task="first"), out)
    write_report(make_report(task="second"), out)
    assert json.loads((out / "results.json").read_text())["task"] == "second"
    assert (out / "results.md").read_text(encoding="utf-8").startswith("### second: ")
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "results.json", "results.md"]

    broken = make_report(task="third")
    del broken["methods"][0]["ci95"]  # fails while plotting, before results.json
    with pytest.raises(KeyError):
        write_report(broken, out)
    assert json.loads((out / "results.json").read_text())["task"] == "second"
    assert (out / "results.md").read_text(encoding="utf-8").startswith("### second: ")
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "results.json", "results.md"]
