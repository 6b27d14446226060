"""How the report and the progress lines write a number: an accuracy as mean ± std over seeds, a paired
interval in accuracy points (bold when it excludes 0), CPU minutes, a duration; and the words for the cells
a table of paired intervals left out."""

from __future__ import annotations

from typing import Any


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def interval_text(interval: dict[str, Any] | None) -> str:
    """``+1.2 [-0.3, +2.7]`` in accuracy points; bold when significant (the interval excludes 0)."""
    if not interval:
        return "—"
    text = f"{_points(interval['diff'])} [{_points(interval['low'])}, {_points(interval['high'])}]"
    return f"**{text}**" if interval["significant"] else text


def cost_text(cost: dict[str, Any] | None) -> str:
    if not cost or cost.get("own") is None:
        return "—"
    text = f"{cost['own']:.1f}"
    if cost.get("teachers"):
        text += f" (+{cost['teachers']:.1f})"
    return text


def fmt(stat: dict[str, Any]) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{100 * stat['mean']:.1f}"
    if stat["n"] > 1:
        text += f" ± {100 * stat['std']:.1f}"
    return text


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


LEFT_OUT = {
    "missing_predictions": "Cells without per-example predictions",
    "not_run": "Cells not run for these seeds",
}
"""The keys of a paired comparison naming the cells left out of its intervals (``seed/cell``; see
``analysis.Predictions.left_out``) and the words of the report's line for each. A summary written before
``not_run`` existed lists both kinds under ``missing_predictions``."""


def left_out(entries: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """``(words, cells)`` for each kind of cell that the comparisons ``entries`` left out, in the order of
    :data:`LEFT_OUT`; a kind with no cell is skipped."""
    found = ((words, sorted({m for c in entries for m in c.get(key, [])})) for key, words in LEFT_OUT.items())
    return [(words, cells) for words, cells in found if cells]
