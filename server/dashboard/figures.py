"""Plotly figures of a run (metrics per round, per site, the confusion matrix), of runs compared, and of an audit."""

from typing import Any

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fesf_fed.audit.result import CurvePoint

from ..run_store import GLOBAL
from .runs import METRICS, RunDetails, metric_label, series

#: Plotly's default qualitative colours, so a site or run keeps its colour across panels.
_COLOURS = plotly.colors.qualitative.Plotly
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 40}, "hovermode": "x unified"}
#: Per-site panels: the six evaluation scores, the evaluation loss, and the training loss.
_SITE_PANELS = (*((metric, "evaluate") for metric in METRICS), ("train-loss", "train"))
_SITE_COLUMNS = 4


def global_figure(details: RunDetails) -> go.Figure:
    """The global model per round: federated (and central) scores and validation macro-F1 left, losses right."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Scores of the global model", "Loss"))
    for phase, dash, prefix in (("evaluate", "solid", "federated"), ("central", "dot", "central")):
        for metric in METRICS:
            rounds, values = series(details.history, phase, GLOBAL, metric)
            if rounds:
                figure.add_scatter(
                    x=rounds,
                    y=values,
                    name=f"{prefix} {metric_label(metric)}",
                    mode="lines+markers",
                    line={"dash": dash},
                    row=1,
                    col=2 if metric == "loss" else 1,
                )
    rounds, values = series(details.history, "validation", GLOBAL, "f1")
    if rounds:
        figure.add_scatter(
            x=rounds, y=values, name="validation macro-F1", mode="lines+markers", line={"dash": "dash"}, row=1, col=1
        )
    rounds, values = series(details.history, "train", GLOBAL, "train-loss")
    if rounds:
        figure.add_scatter(x=rounds, y=values, name="training loss", mode="lines+markers", row=1, col=2)
    figure.update_yaxes(range=[0, 1.02], row=1, col=1)
    figure.update_xaxes(title_text="round", dtick=1)
    return figure.update_layout(**_LAYOUT, height=380)


def sites_figure(details: RunDetails) -> go.Figure:
    """Each site's evaluation scores, loss and training loss per round: one panel per figure, a line per site."""
    figure = make_subplots(
        rows=-(-len(_SITE_PANELS) // _SITE_COLUMNS),
        cols=_SITE_COLUMNS,
        subplot_titles=[metric_label(metric) for metric, _ in _SITE_PANELS],
    )
    for number, site in enumerate(sorted(details.sites)):
        for index, (metric, phase) in enumerate(_SITE_PANELS):
            rounds, values = series(details.history, phase, site, metric)
            figure.add_scatter(
                x=rounds,
                y=values,
                name=site,
                legendgroup=site,
                showlegend=index == 0,
                mode="lines+markers",
                marker={"color": _COLOURS[number % len(_COLOURS)]},
                line={"color": _COLOURS[number % len(_COLOURS)]},
                row=index // _SITE_COLUMNS + 1,
                col=index % _SITE_COLUMNS + 1,
            )
    figure.update_xaxes(dtick=1)
    return figure.update_layout(**_LAYOUT, height=520)


def confusion_figure(confusion: dict[str, Any]) -> go.Figure:
    """The confusion matrix as a heatmap with its counts: rows the true class, columns the predicted one."""
    classes = confusion["classes"]
    figure = go.Figure(
        go.Heatmap(
            z=confusion["counts"],
            x=classes,
            y=classes,
            text=confusion["counts"],
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    figure.update_xaxes(title_text="predicted class", type="category")
    figure.update_yaxes(title_text="true class", type="category", autorange="reversed")
    return figure.update_layout(**{**_LAYOUT, "hovermode": "closest"}, height=380, width=460)


def compare_figure(runs: list[RunDetails]) -> go.Figure:
    """Federated accuracy, balanced accuracy, macro-F1 and AUROC per round of several runs, one colour per run."""
    compared = ("accuracy", "balanced-accuracy", "f1", "auroc")
    figure = make_subplots(rows=1, cols=len(compared), subplot_titles=[metric_label(metric) for metric in compared])
    for number, details in enumerate(runs):
        for col, metric in enumerate(compared, start=1):
            rounds, values = series(details.history, "evaluate", GLOBAL, metric)
            figure.add_scatter(
                x=rounds,
                y=values,
                name=f"{details.summary.name} ({details.summary.mode})",
                legendgroup=details.summary.name,
                showlegend=col == 1,
                mode="lines+markers",
                line={"color": _COLOURS[number % len(_COLOURS)]},
                row=1,
                col=col,
            )
    figure.update_yaxes(range=[0, 1.02])
    figure.update_xaxes(title_text="round", dtick=1)
    return figure.update_layout(**_LAYOUT, height=380)


def curve_figure(curve: list[CurvePoint]) -> go.Figure:
    """A learning attack's victim SSIM after each epoch, small enough for a table cell."""
    figure = go.Figure(
        go.Scatter(
            x=[point.epoch for point in curve],
            y=[point.ssim for point in curve],
            mode="lines+markers",
            hovertemplate="epoch %{x}: SSIM %{y:.3f}<extra></extra>",
        )
    )
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text="victim SSIM")
    return figure.update_layout(
        **{**_LAYOUT, "hovermode": "closest", "margin": {"l": 50, "r": 10, "t": 10, "b": 40}}, height=170, width=300
    )
