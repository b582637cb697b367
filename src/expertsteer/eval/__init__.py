"""Evaluation: tasks → scoring → methods side by side → statistics → report (and render)."""

from .methods import METHODS, Method, parse_methods, random_plan
from .render import render_report
from .report import markdown_table, write_report
from .runner import EvalConfig, EvalResult, run_eval
from .scoring import alias_match, generation_correct, mc_correct, option_logprobs
from .screen import ScreenResult, ScreenRow, run_screen
from .stats import balanced_accuracy, bootstrap_ci, holm, mcnemar_p, rank_p, ratio_ci
from .tasks import Item, Task, load_task

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalResult",
    "Item",
    "Method",
    "ScreenResult",
    "ScreenRow",
    "Task",
    "alias_match",
    "balanced_accuracy",
    "bootstrap_ci",
    "generation_correct",
    "load_task",
    "holm",
    "markdown_table",
    "mc_correct",
    "mcnemar_p",
    "option_logprobs",
    "parse_methods",
    "random_plan",
    "rank_p",
    "ratio_ci",
    "render_report",
    "run_eval",
    "run_screen",
    "write_report",
]
