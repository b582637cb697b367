"""Evaluation: tasks → scoring → methods side by side → statistics → report (and render)."""

from .methods import METHODS, Method, parse_methods, random_plan
from .render import render_report
from .report import markdown_table, write_report
from .runner import EvalConfig, EvalResult, run_eval
from .scoring import alias_match, generation_correct, mc_correct, option_logprobs
from .stats import bootstrap_ci, paired_bootstrap_p, ratio_ci
from .tasks import Item, Task, load_task

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalResult",
    "Item",
    "Method",
    "Task",
    "alias_match",
    "bootstrap_ci",
    "generation_correct",
    "load_task",
    "markdown_table",
    "mc_correct",
    "option_logprobs",
    "paired_bootstrap_p",
    "parse_methods",
    "random_plan",
    "ratio_ci",
    "render_report",
    "run_eval",
    "write_report",
]
