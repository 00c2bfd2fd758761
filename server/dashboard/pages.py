"""The dashboard's pages as Dash components: the runs list, a run, runs compared, and privacy audits."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from dash import dcc, html

from fesf_fed.audit.report import figure_cells
from fesf_fed.audit.result import AttackResult
from fesf_fed.federation import protocol
from fesf_fed.quality import QUALITY_PAIRS

from ..run_store import GLOBAL
from .audits import AuditEntry
from .figures import compare_figure, confusion_figure, curve_figure, global_figure, sites_figure
from .runs import METRICS, RunDetails, RunRow, final_metrics, metric_label, participation, round_entry

_GRAPH_CONFIG: "dcc.Graph.Config" = {"displaylogo": False, "responsive": True}
#: Quality figures as the sites report them (``ssim-x_pl-x_su_prime``), labelled as in Tables 2 and 3.
_QUALITY_COLUMNS = [
    (f"{measure}-{reference}-{stage}", f"{measure.upper()} {label}")
    for label, reference, stage in QUALITY_PAIRS
    for measure in ("ssim", "psnr")
]


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: Sequence[str | list[Any]], rows: Sequence[Sequence[Any]], table_id: str | None = None) -> html.Table:
    """A plain HTML table; cells may be text or components."""
    # Dash refuses an id of None: a table without one gets no id prop at all.
    named: dict[str, Any] = {} if table_id is None else {"id": table_id}
    return html.Table(
        [
            html.Thead(html.Tr([html.Th(name) for name in header])),
            html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows]),
        ],
        className="data",
        **named,
    )


def _section(title: str, *children: Any, section_id: str) -> html.Section:
    # Dash renders components only in flat child lists: a nested list would reach React raw.
    flat = [item for child in children for item in (child if isinstance(child, list) else [child])]
    return html.Section([html.H2(title), *flat], id=section_id)


def _status(status: str, note: str | None = None) -> html.Span:
    """A run's status as a badge; ``note`` (why it ended as it did, how to resume) shows on hover."""
    return html.Span(status, className=f"status status-{status.split(' ')[0]}", title=note)


def _one_class_badge(summary: RunRow) -> list[html.Span]:
    """A badge when the run's model answered one class for every test image; none otherwise."""
    if not summary.one_class:
        return []
    explanation = (
        "In the federated evaluation of the run's model, it answered the same class for every test image: "
        "it has not learned. Its accuracy is only that class's share of the images; balanced accuracy shows it."
    )
    return [html.Span("one class", className="one-class", title=explanation)]


def _rounds(summary: RunRow) -> str:
    return f"{summary.rounds_done}/{summary.rounds_total}"


def runs_page(summaries: list[RunRow], folder: str) -> list[Any]:
    """Every run with its status, settings, model's round and that model's figures; pick runs to compare."""
    if not summaries:
        return [html.H1("Runs"), html.P(f"No runs in {folder} yet. Start one with `flwr run .` (make federate).")]
    rows = [
        [
            dcc.Link(summary.name, href=f"/runs/{summary.name}"),
            _status(summary.status, summary.note),
            summary.strategy,
            summary.mode,
            summary.model,
            ", ".join(summary.sites),
            _rounds(summary),
            _number(summary.model_round),
            [_number(summary.balanced_accuracy), *_one_class_badge(summary)],
            _number(summary.auroc),
            _number(summary.f1),
            summary.started[:19].replace("T", " "),
        ]
        for summary in summaries
    ]
    names = [summary.name for summary in summaries]
    return [
        html.H1("Runs"),
        html.P(f"From {folder}; this page follows new runs and rounds as they are stored.", className="note"),
        html.P(
            "A run's model is the global model of its model round: the best validation macro-F1, else the last "
            "round. Balanced accuracy, AUROC and macro-F1 are that model's, on the sites' test images.",
            className="note",
        ),
        table(
            [
                "run",
                "status",
                "strategy",
                "mode",
                "model",
                "sites",
                "rounds",
                "model round",
                "balanced accuracy",
                "AUROC",
                "macro-F1",
                "started (UTC)",
            ],
            rows,
            "runs-table",
        ),
        html.Div(
            [
                dcc.Dropdown(
                    names,
                    [],
                    multi=True,
                    id="compare-choice",
                    placeholder="Pick runs to compare…",
                    persistence=True,  # a live run re-renders the list: keep the choice
                    persistence_type="memory",
                ),
                dcc.Link("Compare", href="/compare", id="compare-link", className="button"),
            ],
            className="compare-picker",
        ),
    ]


def _site_rows(details: RunDetails) -> list[list[Any]]:
    """Each site's evaluation of the run's model (its round's) and its image counts."""
    evaluation = round_entry(details.history, details.summary.model_round).get("evaluate", {})
    rows = []
    for site in sorted(details.sites):
        metrics = evaluation.get(site, {})
        rows.append(
            [
                site,
                *(_number(metrics.get(metric)) for metric in METRICS),
                _number(details.sites[site].get(protocol.TRAIN_EXAMPLES)),
                _number(details.sites[site].get(protocol.VAL_EXAMPLES)),
                _number(details.sites[site].get(protocol.TEST_EXAMPLES)),
            ]
        )
    return rows


def _quality(details: RunDetails) -> Any:
    if details.summary.mode == "plaintext":
        return html.P("This run trained on plaintext: its sites built no surrogates to measure.", className="note")
    rows = [
        [
            site,
            *(_number(details.sites[site].get(key), 4 if key.startswith("ssim") else 2) for key, _ in _QUALITY_COLUMNS),
        ]
        for site in sorted(details.sites)
    ]
    return [
        html.P(
            "SSIM and PSNR (dB) of each site's surrogates to their host images and to the plaintext "
            "(the paper's Tables 2 and 3), on a sample of its test split. Low values to the plaintext mean "
            "the surrogate shows little of it.",
            className="note",
        ),
        table(["site", *(label for _, label in _QUALITY_COLUMNS)], rows, "quality-table"),
    ]


def _taking_part(site: str, trained: list[str], missing: dict[str, dict[str, str]]) -> Any:
    """A site's cell in the participation table: ✓ (trained), missing with the reason, or – (not sampled)."""
    reasons = [f"{phase}: {sites[site]}" for phase, sites in missing.items() if site in sites]
    if reasons:
        return html.Span("missing", className="missing", title="; ".join(reasons))
    return "✓" if site in trained else "–"


def _participation(details: RunDetails) -> list[Any]:
    sites = sorted(details.sites)
    taking_part = participation(details.history)
    rows = [
        [
            entry["round"],
            *(
                _taking_part(site, taking_part[entry["round"]], details.absences.get(entry["round"], {}))
                for site in sites
            ),
            _number(entry.get("timing", {}).get(GLOBAL, {}).get("seconds"), 1),
        ]
        for entry in details.history
    ]
    note = html.P(
        "✓ trained in the round; – not sampled; missing: sampled, but no reply came (hover for why). A round "
        "needs min-train-nodes and min-evaluate-nodes replies, and a run with a missing site ends degraded.",
        className="note",
    )
    return [note, table(["round", *sites, "seconds"], rows, "participation-table")]


def _confusion(details: RunDetails) -> Any:
    if details.confusion is None:
        return html.P("No evaluation with a confusion matrix yet.", className="note")
    return [
        html.P(
            f"Round {details.confusion['round']}, {details.confusion['source']}.",
            className="note",
            id="confusion-source",
        ),
        dcc.Graph(figure=confusion_figure(details.confusion), id="confusion-figure", config=_GRAPH_CONFIG),
    ]


def _diagnose(details: RunDetails) -> Any:
    if details.summary.mode == "plaintext":
        return html.P("This run's model was trained on plaintext; the diagnosis service only serves surrogate runs.")
    if not details.has_model:
        return html.P("No global model yet: it appears after the first round.")
    size, channels = details.input.get("image-size"), details.input.get("channels")
    return [
        html.P(
            f"Upload a {details.summary.mode} surrogate PNG ({size}x{size}, {'grey' if channels == 1 else 'RGB'}) "
            "made at a site (fesf predict does this for a folder of scans). It is classified in memory and not stored.",
            className="note",
        ),
        dcc.Upload(
            html.Div("Drop a surrogate PNG here, or click to choose one"), id="diagnose-upload", className="upload"
        ),
        html.Div(id="diagnosis-result"),
    ]


#: Run statuses during which a run page shows how far its sites' preparation has got.
_PREPARING = ("starting", "preparing")


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S")


def _preparation(details: RunDetails) -> list[html.Section]:
    """While the sites build their surrogates: each one's stage, counts, speed and time left."""
    if details.summary.status not in _PREPARING:
        return []
    if not details.preparation:
        body: Any = html.P("Waiting for the sites to answer the roll call.", className="note")
    else:
        rows = [
            [record.site, record.describe(), *(_clock(moment) for moment in (record.since, record.updated))]
            for record in details.preparation
        ]
        body = [
            html.P(
                "Each site loads its data, trains its IQEM generator, converts its images and measures "
                "their quality before the first round. Simulated sites report here; a deployed site shows "
                "its progress on its own console.",
                className="note",
            ),
            table(["site", "stage", "stage began (UTC)", "updated (UTC)"], rows, "preparation-table"),
        ]
    return [_section("Site preparation", body, section_id="preparation")]


def run_page(details: RunDetails) -> list[Any]:
    """One run: curves, per-site figures, confusion matrix, surrogate quality, participation, config, export."""
    summary = details.summary
    final = final_metrics(details)
    chosen = (
        "last round; no site validates"
        if summary.validation_f1 is None
        else f"best validation macro-F1 {_number(summary.validation_f1)}"
    )
    headline = (
        f"accuracy {_number(final.get('accuracy'))}, balanced accuracy {_number(final.get('balanced-accuracy'))}, "
        f"macro-F1 {_number(final.get('f1'))}, AUROC {_number(final.get('auroc'))} "
        f"of round {summary.model_round}'s model ({chosen})"
        if final
        else "no round finished yet"
    )
    export = f"/api/runs/{quote(summary.name)}/metrics"
    return [
        html.H1(["Run ", summary.name, " ", _status(summary.status, summary.note), *_one_class_badge(summary)]),
        html.P(
            f"{summary.mode} · {summary.model} · {summary.strategy} · sites {', '.join(summary.sites) or '–'} · "
            f"round {_rounds(summary)} · {headline}",
            id="run-headline",
        ),
        *([html.P(summary.note, id="run-note", className="run-note")] if summary.note else []),
        *_preparation(details),
        _section(
            "Global model",
            dcc.Graph(figure=global_figure(details), id="global-figure", config=_GRAPH_CONFIG),
            section_id="global",
        ),
        _section(
            "Sites",
            dcc.Graph(figure=sites_figure(details), id="sites-figure", config=_GRAPH_CONFIG),
            table(
                ["site", *map(metric_label, METRICS), "training images", "validation images", "test images"],
                _site_rows(details),
                "sites-table",
            ),
            section_id="sites",
        ),
        _section("Confusion matrix", _confusion(details), section_id="confusion"),
        _section("Surrogate quality", _quality(details), section_id="quality"),
        _section("Rounds and participating sites", _participation(details), section_id="participation"),
        _section(
            "Configuration",
            table(
                ["setting", "value"],
                [[key, str(value)] for key, value in sorted(details.config.items())],
                "config-table",
            ),
            section_id="config",
        ),
        _section(
            "Export",
            html.A("metrics.csv", href=f"{export}.csv", id="export-csv"),
            " · ",
            html.A("metrics.json", href=f"{export}.json", id="export-json"),
            section_id="export",
        ),
    ]


def diagnose_section(details: RunDetails) -> Any:
    """A run's upload box for the diagnosis service; kept apart from :func:`run_page`, which new rounds redraw."""
    return _section("Diagnose a surrogate", _diagnose(details), section_id="diagnose")


def _mean_over_sites(details: RunDetails, key: str) -> float | None:
    values = [site[key] for site in details.sites.values() if key in site]
    return sum(values) / len(values) if values else None


def _run_link(summary: RunRow) -> list[Any]:
    return [dcc.Link(summary.name, href=f"/runs/{summary.name}"), *_one_class_badge(summary)]


def compare_page(runs: list[RunDetails]) -> list[Any]:
    """Runs side by side (the paper's Table 1), with accuracy relative to the first run."""
    if len(runs) < 2:
        return [html.H1("Compare runs"), html.P("Pick two or more runs on the runs list to compare them.")]
    finals = [final_metrics(details) for details in runs]
    reference = finals[0].get("accuracy")

    def relative(final: dict[str, float]) -> str:
        accuracy = final.get("accuracy")
        return "–" if accuracy is None or not reference else f"{accuracy / reference:.3f}"

    rows: list[list[Any]] = [
        ["status", *(details.summary.status for details in runs)],
        ["mode", *(details.summary.mode for details in runs)],
        ["model", *(details.summary.model for details in runs)],
        ["strategy", *(details.summary.strategy for details in runs)],
        ["sites", *(len(details.summary.sites) for details in runs)],
        ["rounds", *(_rounds(details.summary) for details in runs)],
        ["model round", *(_number(details.summary.model_round) for details in runs)],
        ["validation macro-F1", *(_number(details.summary.validation_f1) for details in runs)],
        *([metric_label(metric), *(_number(final.get(metric)) for final in finals)] for metric in METRICS),
        [f"accuracy / {runs[0].summary.name}'s", *(relative(final) for final in finals)],
        *(
            [f"{label} (mean of sites)", *(_number(_mean_over_sites(details, key), 4) for details in runs)]
            for key, label in _QUALITY_COLUMNS
            if key.startswith("ssim")
        ),
    ]
    return [
        html.H1("Compare runs"),
        html.P(
            "Federated evaluation of each run's model (the global model of its best validation round, else its "
            "last), as in the paper's Table 1; the accuracy ratio is against the first run (put the plaintext run "
            "first). Balanced accuracy pools the sites' test images; AUROC is the sites' AUROCs averaged by their "
            "test images.",
            className="note",
        ),
        table(["", *(_run_link(details.summary) for details in runs)], rows, "compare-table"),
        dcc.Graph(figure=compare_figure(runs), id="compare-figure", config=_GRAPH_CONFIG),
    ]


def _leak_badge(result: AttackResult) -> list[html.Span]:
    """A badge, styled as the one-class one, when the attack beat its goal; none when the surrogates held."""
    if not result.leaks:
        return []
    explanation = "The attack did better than the goal the audit sets for it: the surrogates leak what it recovers."
    return [html.Span("leaks", className="leaks", title=explanation)]


def _curve(result: AttackResult) -> Any:
    if not result.curve:
        return "–"
    # Static: a table of small plots that each grab the mouse is hard to scroll past.
    return dcc.Graph(figure=curve_figure(result.curve), config={"staticPlot": True})


def _audit(entry: AuditEntry) -> Any:
    """One audit as a section with a row per attack, or a line saying why it cannot be shown."""
    if entry.report is None:
        return html.P([html.Strong(entry.name), " — ", _status("unreadable"), f": {entry.problem}"], className="audit")
    report = entry.report
    rows = [
        [
            [result.title, *_leak_badge(result)],
            figure_cells(result.figures),
            figure_cells(result.baselines),
            result.verdict,
            f"{result.seconds:.0f} s",
            _curve(result),
        ]
        for result in report.attacks
    ]
    return html.Section(
        [
            html.H2(report.name),
            html.P(
                f"Made {report.created[:19].replace('T', ' ')} UTC in {report.seconds / 60:.1f} min · "
                f"surrogates: {entry.surrogates}",
                className="note",
            ),
            table(["attack", "result", "baselines", "verdict", "time", "victim SSIM per epoch"], rows),
        ],
        className="audit",
    )


def audits_page(entries: list[AuditEntry], folder: str) -> list[Any]:
    """Every audit: its surrogate settings and each attack's figures, baselines and verdict."""
    if not entries:
        return [
            html.H1("Privacy audits"),
            html.P(f"No audits in {folder} yet. Run one with `fesf audit` (docs/privacy.md)."),
        ]
    return [
        html.H1("Privacy audits"),
        html.P(
            f"From {folder}, as `fesf audit` wrote them (privacy.json; privacy.md says the same). Each attack's "
            "figures are what it recovered from the audited surrogates, its baselines what an attacker gets "
            "without them; a red leaks badge marks an attack that did better than its goal.",
            className="note",
        ),
        html.Div([_audit(entry) for entry in entries], id="audits"),
    ]


def message_page(title: str, text: str) -> list[Any]:
    """A page that only says something (an unknown run or page)."""
    return [html.H1(title), html.P(text)]
