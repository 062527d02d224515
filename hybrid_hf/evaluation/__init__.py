"""Offline long-context evaluation: passkey, RULER-style NIAH variants, variable tracking, position-binned loss."""

from .runner import (
    evaluate_samples,
    heatmap,
    markdown_table,
    position_binned_loss,
    save_results,
    score_answer,
    summarize,
)
from .tasks import NEEDLE, REPEATED_HAYSTACK, TASKS, Sample, make_sample, make_suite

__all__ = [
    "NEEDLE",
    "REPEATED_HAYSTACK",
    "TASKS",
    "Sample",
    "evaluate_samples",
    "heatmap",
    "make_sample",
    "make_suite",
    "markdown_table",
    "position_binned_loss",
    "save_results",
    "score_answer",
    "summarize",
]
