"""Shared by the report and render tests: a report as run_eval builds it."""


def make_report(**over):
    """A report as run_eval builds it: one baseline, one target-only and two transfer rows;
    ``over`` replaces top-level keys."""
    report = {
        "task": "t.jsonl",
        "target": "tgt",
        "expert": "exp",
        "n": {"train": 24, "val": 10, "test": 14},
        "train_data": "task train split",
        "norm": "mean",
        "models": {
            "target": {
                "name": "tgt",
                "norm": "mean",
                "val": {"sum": 0.5, "mean": 0.6},
                "test": {"sum": 3 / 7, "mean": 0.5},
            },
            "expert": {"name": "exp", "skipped": "no causal LM"},
        },
        "methods": [
            {"name": "none", "kind": "baseline", "score": 0.5, "ci95": [0.25, 0.75]},
            {
                "name": "mean-diff",
                "kind": "target-only",
                "score": 9 / 14,
                "ci95": [0.4, 0.9],
                "alpha": 2.5,
                "layers": [1, 3],
                "p_vs_none": 0.0004,
            },
            {
                "name": "expertsteer:ridge:depth",
                "kind": "transfer",
                "score": 10 / 14,
                "ci95": [0.5, 0.9],
                "alpha": 0.0,
                "layers": [],
                "p_vs_none": 0.25,
                "best_baseline": "mean-diff",
                "p_vs_best_baseline": 0.5,
                "nulls": {"shuffled_labels": [0.5, 3 / 7], "random_direction": [4 / 7, 0.5]},
                "beats_null": False,
            },
            {
                "name": "expertsteer:ae:lowest",
                "kind": "transfer",
                "score": 11 / 14,
                "ci95": [0.6, 1.0],
                "alpha": 4.0,
                "layers": [2],
                "p_vs_none": 0.001,
                "best_baseline": "mean-diff",
                "p_vs_best_baseline": 0.0999,
                "nulls": {"shuffled_labels": [0.5], "random_direction": [0.5]},
                "beats_null": True,
            },
        ],
        "concept_transfer": None,
        "sweeps": {},
    }
    report.update(over)
    return report
