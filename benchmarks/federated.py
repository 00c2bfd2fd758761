"""A federated round against the same training done centrally, bytes sent per round, peak memory.

The federation runs in Flower's in-process simulation (``server/simulation.py``'s
apps: Ray actors host the ClientApps). The baseline does exactly the sites' work
in this process, one site after another: per round, ``fesf_fed.task.train`` from
the global model for ``local-epochs`` on each site's training surrogates, FedAvg
of the results, then ``evaluate`` on each site's test split and validation part. Both are timed in the
same run, so their ratio holds on a shared, noisy machine; the baseline runs once
before the federation and once after it, bracketing it.

Sites' surrogates are built first, in a child process, so that the build is not
timed and does not inflate this process's peak memory; they come from
``$FESF_HOME/cache`` afterwards (set FESF_HOME to keep your own ~/.fesf clean).

    PYTHONPATH=. python benchmarks/federated.py                 # 3 sites, 3 rounds
    PYTHONPATH=. python benchmarks/federated.py --sites 10      # 10 sites on 2 SuperNodes
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fesf_fed, clients, server: run from anywhere

from fesf_fed.deployment.processes import QUIET_FLOWER_ENV, process_tree

# Before Flower and Ray are imported: they read these at import.
for _name, _value in QUIET_FLOWER_ENV.items():
    os.environ.setdefault(_name, _value)

import argparse
import multiprocessing
import resource
import sqlite3
import statistics
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Self

import torch
from flwr.app import ArrayRecord, Context, Message

from fesf_fed.device import select_device
from fesf_fed.federation import protocol
from fesf_fed.federation.settings import parse_run_settings, simulated_site_configs
from fesf_fed.home import fesf_home
from fesf_fed.models import build_model
from fesf_fed.task import evaluate, train
from fesf_fed.training_data import SiteData, load_site_data
from server.run_config import app_run_config
from server.run_store import GLOBAL
from server.simulation import Handler, simulate

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
#: The metric each timed ClientApp handler adds to its reply: seconds spent inside the handler.
HANDLER_SECONDS = "bench-handler-seconds"
#: ... and the torch threads the actor computes with (Ray gives a 1-CPU actor OMP_NUM_THREADS=1).
HANDLER_THREADS = "bench-handler-threads"


# --- surrogates --------------------------------------------------------------------------


def _build_sites(config: dict[str, Any]) -> list[int]:
    """Build (or reuse) every site's surrogates; run in a child process. Returns training set sizes."""
    settings, overrides = parse_run_settings(config)
    return [
        len(load_site_data(site, settings.mode).train_labels) for site in simulated_site_configs(settings, overrides)
    ]


# --- the federation, with each ClientApp handler timed inside its actor --------------------


def _timed(handler: Handler) -> Handler:
    """Add the seconds a ClientApp handler took, and its torch threads, to its reply's metrics.

    The time is measured inside the Ray actor, so a round splits into sites' own work
    and what Flower and Ray add (queues, polling, serialisation, actor dispatch).
    """

    def timed(message: Message, context: Context) -> Message:
        start = time.perf_counter()
        reply = handler(message, context)
        if not reply.has_error() and protocol.METRICS in reply.content:
            metrics = reply.content.metric_records[protocol.METRICS]
            metrics[HANDLER_SECONDS] = time.perf_counter() - start
            metrics[HANDLER_THREADS] = torch.get_num_threads()
        return reply

    return timed


# --- memory of the process tree, from /proc -------------------------------------------------


def _rss_and_name(pid: int) -> tuple[int, str]:
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError, ValueError):
        return 0, ""
    return rss, name[:60]


class TreeMemory:
    """Peak RSS of this process and all its descendants, sampled every ``interval`` seconds.

    Ray's own processes (GCS, raylet, its workers) are children of this driver, so
    they count; each ClientApp actor is a worker whose title contains ``ClientAppActor``.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_process: tuple[int, str] = (0, "")
        self.peak_actor = 0
        self.peak_actor_total = 0
        self.actors: set[int] = set()
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tree = process_tree([os.getpid()])
        self.processes = max(self.processes, len(tree))
        total = actor_total = 0
        for pid in tree:
            rss, name = _rss_and_name(pid)
            total += rss
            if rss > self.peak_process[0]:
                self.peak_process = (rss, name)
            if "ClientAppActor" in name:
                self.actors.add(pid)
                actor_total += rss
                self.peak_actor = max(self.peak_actor, rss)
        self.peak_total = max(self.peak_total, total)
        self.peak_actor_total = max(self.peak_actor_total, actor_total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss_now() -> int:
    return _rss_and_name(os.getpid())[0]


def _peak_rss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- the centralised baseline -----------------------------------------------------------


def _fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Weighted mean of floating-point entries (as Flower's FedAvg); counters from the first state."""
    total = sum(weights)
    return {
        key: (
            sum(
                (state[key] * (weight / total) for state, weight in zip(states, weights)),
                torch.zeros_like(states[0][key]),
            )
            if states[0][key].is_floating_point()
            else states[0][key].clone()
        )
        for key in states[0]
    }


def centralised(config: dict[str, Any], sites: list[tuple[str, SiteData]], rounds: int, threads: int) -> list[float]:
    """Seconds per round of the sites' work done here, one site after another, on ``threads`` torch threads."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _centralised(config, sites, rounds)
    finally:
        torch.set_num_threads(default_threads)


def _centralised(config: dict[str, Any], sites: list[tuple[str, SiteData]], rounds: int) -> list[float]:
    settings, overrides = parse_run_settings(config)
    device = select_device(simulated_site_configs(settings, overrides)[0].device)
    classes, channels = len(sites[0][1].classes), sites[0][1].channels
    size = int(sites[0][1].train_images.shape[-1])
    torch.manual_seed(settings.seed)
    state = build_model(settings.model, classes, channels, image_size=size).state_dict()
    seconds = []
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        states, weights = [], []
        for name, data in sites:
            model = build_model(settings.model, classes, channels, image_size=size)
            model.load_state_dict(state)
            first_epoch, total_epochs = settings.epoch_position(server_round)
            train(
                model,
                data.train_images,
                data.train_labels,
                epochs=settings.local_epochs,
                lr=settings.learning_rate,
                batch_size=settings.batch_size,
                device=device,
                seed=zlib.crc32(f"{settings.seed}/{name}/{server_round}".encode()),
                recipe=settings.recipe(),
                first_epoch=first_epoch,
                total_epochs=total_epochs,
            )
            states.append({key: value.detach().cpu() for key, value in model.state_dict().items()})
            weights.append(len(data.train_labels))
        state = _fedavg(states, weights)
        for _, data in sites:
            model = build_model(settings.model, classes, channels, image_size=size)
            model.load_state_dict(state)
            # As a site's evaluate reply: its test split, then the validation part that picks the round.
            for images, labels in ((data.test_images, data.test_labels), (data.val_images, data.val_labels)):
                if len(labels):
                    evaluate(model, images, labels, num_classes=classes, batch_size=settings.batch_size, device=device)
        seconds.append(time.perf_counter() - start)
    return seconds


# --- reading the run --------------------------------------------------------------------------


def _run_metrics(run: Path) -> dict[tuple[int, str, str, str], float]:
    store = sqlite3.connect(run / "store.sqlite")
    try:
        return {
            (r, p, s, n): v for r, p, s, n, v in store.execute("SELECT round, phase, scope, name, value FROM metrics")
        }
    finally:
        store.close()


def _steady(seconds: list[float]) -> tuple[list[float], str]:
    """Rounds to average: all but the first when the first is over 20 % slower than the rest's median."""
    if len(seconds) > 1 and seconds[0] > 1.2 * statistics.median(seconds[1:]):
        return seconds[1:], f"round 1 excluded as warm-up ({seconds[0]:.2f} s)"
    return seconds, "all rounds"


def _mib(value: float) -> str:
    return f"{value / MIB:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=150, help="phantom images per class, over all sites")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument(
        "--iqem-steps",
        type=int,
        default=None,
        help="IQEM training steps of each site's surrogate build (default: the run config's); "
        "builds are not timed, and fewer steps change the surrogates' quality, not their size",
    )
    args = parser.parse_args()
    config = app_run_config(
        REPO,
        **{
            "num-server-rounds": args.rounds,
            "local-epochs": args.local_epochs,
            "num-sites": args.sites,
            "model": args.model,
            "site.data.phantom_per_class": args.per_class,
            "site.data.image_size": args.image_size,
            **({"site.iqem.steps": args.iqem_steps} if args.iqem_steps is not None else {}),
        },
    )
    settings, overrides = parse_run_settings(config)
    print(
        f"{args.sites} sites on {args.supernodes} SuperNodes, {args.rounds} rounds x {args.local_epochs} local epochs, "
        f"{args.model}, {args.image_size} px, {args.per_class} phantoms/class, batch {settings.batch_size}, mode {settings.mode}, "
        f"IQEM {overrides.get('iqem.steps')} steps"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads here, {os.cpu_count()} CPUs, FESF_HOME {fesf_home()}"
    )

    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_build_sites, config).result()
    print(f"surrogates built or reused (child process): {time.perf_counter() - start:.1f} s")

    # Centralised, before the federation.
    rss_before = _rss_now()
    sites = [(site.site, load_site_data(site, settings.mode)) for site in simulated_site_configs(settings, overrides)]
    threads = torch.get_num_threads()
    thread_counts = sorted({threads, 1}, reverse=True)
    central = {n: centralised(config, sites, args.rounds, n) for n in thread_counts}
    central_peak = _peak_rss_self()

    # Bytes of the model that travel: the ArrayRecord of the global model's state dict.
    first = sites[0][1]
    model = build_model(
        settings.model, len(first.classes), first.channels, image_size=int(first.train_images.shape[-1])
    )
    tensors = model.state_dict()
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    float_bytes = sum(t.numel() * t.element_size() for t in tensors.values() if t.is_floating_point())
    record_bytes = sum(len(array.data) for array in ArrayRecord(tensors).values())
    per_round = record_bytes * args.sites * 3  # train: down + up; evaluate: down (replies carry metrics only)

    # The federation.
    start = time.perf_counter()
    with TreeMemory() as memory:
        outcome = simulate(config, args.supernodes, instrument=_timed)
    federation_wall = time.perf_counter() - start
    run, summary = outcome.folder, outcome.summary
    metrics = _run_metrics(run)
    federated = [metrics[(r, "timing", "global", "seconds")] for r in range(1, args.rounds + 1)]
    handler = {
        (r, phase): [
            v for (rr, p, s, n), v in metrics.items() if rr == r and p == phase and s != GLOBAL and n == HANDLER_SECONDS
        ]
        for r in range(1, args.rounds + 1)
        for phase in ("train", "evaluate")
    }

    # Centralised again, after the federation.
    central_after = {n: centralised(config, sites, args.rounds, n) for n in reversed(thread_counts)}

    fed_steady, fed_note = _steady(federated)
    fed_mean = statistics.mean(fed_steady)
    central_mean = {n: statistics.mean(_steady(central[n])[0] + _steady(central_after[n])[0]) for n in thread_counts}
    best = min(central_mean, key=central_mean.__getitem__)
    actor_threads = sorted({int(v) for (_, _, s, n), v in metrics.items() if s != GLOBAL and n == HANDLER_THREADS})

    print(f"\nrun {run.name}: status {summary.status}, final accuracy {summary.final and summary.final.accuracy}")
    print(
        f"training images per site: {[len(d.train_labels) for _, d in sites]} (test: {[len(d.test_labels) for _, d in sites]})"
    )
    print(f"torch threads: {actor_threads} in each actor, {thread_counts} in the centralised runs")
    header = " | ".join(f"central {n} thr before / after (s)" for n in thread_counts)
    print(f"\nround | federated (s) | {header} | sites' train handlers sum / max (s) | evaluate sum / max (s)")
    for r in range(1, args.rounds + 1):
        train_h, eval_h = handler[(r, "train")], handler[(r, "evaluate")]
        cells = " | ".join(f"{central[n][r - 1]:14.2f} / {central_after[n][r - 1]:6.2f}     " for n in thread_counts)
        print(
            f"{r:5d} | {federated[r - 1]:13.2f} | {cells} | "
            f"{sum(train_h):22.2f} / {max(train_h, default=0):5.2f} | {sum(eval_h):13.2f} / {max(eval_h, default=0):5.2f}"
        )
    print(f"\nfederated round ({fed_note}): {fed_mean:8.2f} s")
    for n in thread_counts:
        print(
            f"centralised round, {n} torch thread(s), both passes, warm rounds: {central_mean[n]:8.2f} s   "
            f"ratio federated / centralised {fed_mean / central_mean[n]:6.2f}x"
        )
    print(
        f"ratio against the faster baseline ({best} thread(s)):  {fed_mean / central_mean[best]:6.2f}x   (target <= 1.3x)"
    )
    work = [sum(handler[(r, "train")]) + sum(handler[(r, "evaluate")]) for r in range(1, args.rounds + 1)]
    steady_rounds = range(args.rounds - len(fed_steady) + 1, args.rounds + 1)
    busy = statistics.mean(work[r - 1] for r in steady_rounds)
    print(
        f"sites' handler time per round (sum over sites, inside the actors): {busy:.2f} s; "
        f"over {min(args.supernodes, args.sites)} actors at best {busy / min(args.supernodes, args.sites):.2f} s of wall time"
    )
    print(f"whole simulation, with Ray start, roll call, prepare and shutdown: {federation_wall:.1f} s")

    print(
        f"\nmodel arrays: {tensor_bytes} B of tensors ({float_bytes} B floating point), ArrayRecord payload {record_bytes} B"
    )
    print(f"sent per round ({args.sites} sites x (train down + up + evaluate down)): {per_round / MIB:.2f} MiB")

    print("\npeak memory (RSS)")
    print(
        f"  federation, whole process tree (driver + Ray + actors): {_mib(memory.peak_total)}  ({memory.processes} processes at most)"
    )
    print(f"  largest single process:   {_mib(memory.peak_process[0])}  ({memory.peak_process[1]})")
    print(
        f"  one ClientApp actor, max: {_mib(memory.peak_actor)}  ({len(memory.actors)} actors hosting {args.sites} sites)"
    )
    print(f"  all ClientApp actors:     {_mib(memory.peak_actor_total)}")
    print(
        f"  centralised (this process, getrusage, before the federation): {_mib(central_peak)} (RSS {_mib(rss_before).strip()} before loading the sites)"
    )


if __name__ == "__main__":
    main()
