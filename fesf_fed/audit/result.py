"""What an audit records: one typed result per attack, and the file it is stored in.

``privacy.json`` (written by :func:`fesf_fed.audit.run.run_audit`, read by the dashboard)
holds an :class:`AuditReport`; every figure is a fraction or an SSIM, higher meaning a
more successful attack.
"""

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from fesf_fed.home import fesf_home

__all__ = ["ATTACKS", "REPORT_FILE", "AttackResult", "AuditReport", "CurvePoint", "audits_folder"]

#: The file in an audit's folder that holds its :class:`AuditReport` (``privacy.md`` says the same for people).
REPORT_FILE = "privacy.json"


def audits_folder() -> Path:
    """Where ``fesf audit`` keeps every audit: ``$FESF_HOME/audits/<name>/``."""
    return fesf_home() / "audits"


#: The attacks an audit runs, in order, with their table titles.
ATTACKS: dict[str, str] = {
    "linkage": "Linkage: name each surrogate's plaintext by Fourier amplitude",
    "retrieval": "Retrieval: the public image whose amplitude best matches",
    "inversion": "Learned inversion: U-Net trained on the attacker's own pairs",
    "known_host": "Known host (key leaked): amplitude recovery, then phase retrieval",
    "gradient_inversion": "Gradient inversion of a site's update (Geiping et al. 2020)",
    "membership": "Membership inference on an overfitted model",
}


class CurvePoint(BaseModel):
    """One point of a learning attack's curve: the victim SSIM after ``epoch`` epochs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epoch: int
    ssim: float


class AttackResult(BaseModel):
    """One attack's outcome.

    ``figures`` are the attack's own numbers, ``baselines`` what an attacker gets without
    the surrogates (chance, the mean image, the nearest public image); ``leaks`` says
    whether the attack beat the issue's goal for it, and ``verdict`` says so in a line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    attack: str
    figures: dict[str, float]
    baselines: dict[str, float]
    leaks: bool
    verdict: str
    curve: list[CurvePoint] = []
    #: How long the attack took; :func:`fesf_fed.audit.run.run_audit` times it.
    seconds: float = 0.0
    details: dict[str, Any] = {}

    @field_validator("attack")
    @classmethod
    def _known(cls, attack: str) -> str:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
        return attack

    @property
    def title(self) -> str:
        """The attack's name in tables (:data:`ATTACKS`)."""
        return ATTACKS[self.attack]


class AuditReport(BaseModel):
    """A whole audit: its scenario, settings and the results of the attacks that ran."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    created: str
    settings: dict[str, Any]
    scenario: dict[str, Any]
    attacks: list[AttackResult]
    seconds: float
