"""What the dashboard shows of privacy audits: each ``$FESF_HOME/audits/<name>/privacy.json`` that ``fesf audit`` wrote.

The reports are read as :class:`~fesf_fed.audit.result.AuditReport`, never edited. A folder
without a report that validates (an audit still running, or a file from another version)
is listed with the reason instead, so one bad folder never hides the others.
"""

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fesf_fed.audit.result import REPORT_FILE, AuditReport


@dataclass(frozen=True)
class AuditEntry:
    """One audit folder: its report and the surrogate settings it audited, or why it cannot be shown."""

    name: str
    report: AuditReport | None = None
    #: The audited surrogates' strengths and host bank, in one line.
    surrogates: str = ""
    problem: str | None = None


def audit_folders(folder: Path) -> list[Path]:
    """The audit folders directly under ``folder``, by name (none when it does not exist)."""
    if not folder.is_dir():
        return []
    # fesf audit refuses names starting with a dot, so such folders are no audits.
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def surrogate_settings(report: AuditReport) -> str:
    """``alpha 0.5 · beta 0.5 · alpha' 0.5 · beta' 0.1 · noise 0 · 16 hosts`` of ``report``.

    Raises
    ------
    KeyError
        If the report's settings or scenario lack one of these; a missing amplitude noise reads as 0, as
        in ``privacy.md``.
    """
    pipeline = report.settings["pipeline"]
    return (
        f"alpha {pipeline['alpha']} · beta {pipeline['beta']} · alpha' {pipeline['refine_alpha']} · "
        f"beta' {pipeline['refine_beta']} · noise {pipeline.get('amplitude_noise', 0.0)} · "
        f"{report.scenario['host_bank']} hosts"
    )


def read_audit(path: Path) -> AuditEntry:
    """The audit in folder ``path``, or an entry that says why its report cannot be shown."""
    report_file = path / REPORT_FILE
    if not report_file.is_file():
        return AuditEntry(path.name, problem=f"no {REPORT_FILE} (the audit has not finished, or this is no audit)")
    try:
        report = AuditReport.model_validate_json(report_file.read_bytes())
        return AuditEntry(path.name, report, surrogate_settings(report))
    except OSError as exc:
        return AuditEntry(path.name, problem=f"{REPORT_FILE} cannot be read ({exc.strerror or exc})")
    except ValidationError as exc:
        first, more = exc.errors()[0], exc.error_count() - 1
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        also = f"; {more} more problem{'s' * (more > 1)}" if more else ""
        return AuditEntry(path.name, problem=f"{REPORT_FILE} is not an audit report ({where}: {first['msg']}{also})")
    except (KeyError, TypeError) as exc:
        # The report validated, but its free-form settings are not a site config's dump.
        return AuditEntry(
            path.name,
            problem=f"{REPORT_FILE} does not hold a site config's surrogate settings ({type(exc).__name__} {exc})",
        )


def list_audits(folder: Path) -> list[AuditEntry]:
    """Every audit folder under ``folder``, newest first; those without a readable report last."""
    entries = [read_audit(path) for path in audit_folders(folder)]
    return sorted(entries, key=lambda entry: (entry.report.created if entry.report else "", entry.name), reverse=True)
