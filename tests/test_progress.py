"""A site's progress records: their JSON form, the throttled meter and the files of a simulation."""

import json
from types import SimpleNamespace

import pytest

import clients.site as site_module
import fesf_fed.progress as progress_module
from clients.site import progress_file, site_data
from fesf_fed.config import load_config
from fesf_fed.progress import (
    ProgressFile,
    ProgressMeter,
    SiteProgress,
    Stage,
    progress_folder,
    read_progress,
    remove_progress,
)


class _Clock:
    """Stands in for the ``time`` module in :mod:`fesf_fed.progress`: time passes only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000 + self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=fake.monotonic, time=fake.time))
    return fake


def test_a_record_survives_json_and_reads_as_words() -> None:
    record = SiteProgress("site-2", Stage.IQEM, since=10.0, updated=23.0, done=40, total=100, rate=3.1, eta=19.4)
    assert SiteProgress.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.to_json()["stage"] == "iqem"
    assert record.describe() == "IQEM step 40/100 (3.1 step/s, ETA 19 s)"
    loading = SiteProgress("site-1", Stage.LOADING, since=10.0, updated=10.0)
    assert loading.describe() == "loading data"
    assert loading.describe(now=45.0) == "loading data (35 s so far)"
    assert SiteProgress.at("site-3", Stage.CACHED).describe(now=1e10) == "ready (surrogates from cache)"


@pytest.mark.parametrize(
    "data",
    [
        {"site": "A", "stage": "baking", "since": 0, "updated": 0},
        {"site": "A", "stage": "iqem", "since": 0},
        {"site": "A", "stage": "iqem", "since": 0, "updated": 0, "colour": "red"},
        {"site": "A", "stage": "iqem", "since": 0, "updated": "soon"},
        ["A", "iqem"],
    ],
)
def test_anything_else_is_not_a_record(data: object) -> None:
    with pytest.raises(ValueError, match="progress record|is not a valid Stage"):
        SiteProgress.from_json(data)  # type: ignore[arg-type]  # a non-record on purpose


def test_the_meter_reports_stages_at_once_and_counts_at_most_every_interval(clock: _Clock) -> None:
    records: list[SiteProgress] = []
    meter = ProgressMeter(records.append, "A", interval=2.0)
    meter.stage(Stage.IQEM, total=100, done=20)  # resumed at step 20
    for _ in range(30):  # 30 steps, one every 0.25 s: a report at 2, 4 and 6 s
        clock.now += 0.25
        meter.advance()
    meter.stage(Stage.READY)
    assert [(r.stage, r.done) for r in records] == [
        (Stage.IQEM, 20),
        (Stage.IQEM, 28),
        (Stage.IQEM, 36),
        (Stage.IQEM, 44),
        (Stage.READY, None),
    ]
    first, last = records[0], records[3]
    assert first.rate is None and first.eta is None
    # Steps before the resume do not count towards the speed: 24 steps in 6 s.
    assert last.rate == pytest.approx(4.0) and last.eta == pytest.approx(56 / 4.0)
    assert last.since == first.since and last.updated == first.since + 6.0


def test_a_meter_without_a_callback_does_nothing(clock: _Clock) -> None:
    meter = ProgressMeter(None, "A", interval=0.0)
    meter.stage(Stage.CONVERTING, total=5)
    meter.advance(5)  # nothing to call: no error


def test_a_progress_file_holds_the_latest_record_until_the_folder_is_removed(fesf_home) -> None:
    reporter = ProgressFile(7, "site-1")
    reporter(SiteProgress.at("site-1", Stage.LOADING))
    latest = SiteProgress.at("site-1", Stage.CONVERTING)
    reporter(latest)
    (progress_folder(7) / "stray.json").write_text("{not json")
    assert reporter.path == fesf_home / "progress" / "7" / "site-1.json"
    assert read_progress("7") == {"site-1": latest}
    remove_progress(7)
    assert not progress_folder(7).exists() and read_progress(7) == {}


def test_only_a_simulated_site_reports_and_its_data_is_cached_whoever_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A deployed site's FESF_HOME is not the server's: it writes no progress file there.
    assert progress_file({"site": "A"}, 7, "A") is None
    assert progress_file({"partition-id": 0, "num-partitions": 2}, 7, "site-1") == ProgressFile(7, "site-1")
    loads = []

    def load_site_data(config: object, mode: str, report: object) -> str:
        loads.append(report)
        return mode

    monkeypatch.setattr(site_module, "load_site_data", load_site_data)
    config = load_config(command_line={"site": "cached-site"})
    reporter = ProgressFile(7, "cached-site")
    loaded: list[object] = [site_data(config, "x_su", reporter), site_data(config, "x_su")]
    assert loaded == ["x_su", "x_su"]
    assert loads == [reporter]  # loaded once, by the call that reports
