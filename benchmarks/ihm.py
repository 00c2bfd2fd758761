"""Throughput of IHM, of the whole surrogate pipeline and of an IQEM training step.

IHM is measured against ``hide_reference`` (the literal per-image NumPy transcription of
Eq. 1-4) in the same run, so the ratio holds on a shared, noisy machine.

    python benchmarks/ihm.py                # CPU, the issue's sizes
    python benchmarks/ihm.py --device cuda:0
"""

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fesf_fed.config import IqemConfig, PipelineConfig
from fesf_fed.device import select_device
from fesf_fed.ihm import hide, hide_reference, host_spectrum
from fesf_fed.iqem import Generator, IqemPairs, train_iqem
from fesf_fed.pipeline import SurrogatePipeline


def _best_seconds(runs: list[Callable[[], object]], repeats: int, synchronize: Callable[[], None]) -> list[float]:
    """Fastest of ``repeats`` timed calls of each run, after one warm-up.

    The runs take turns, so a burst of load from other processes on a shared machine
    slows all of them alike instead of skewing their ratio; the minimum is the time
    least disturbed by that load.
    """
    best = [float("inf")] * len(runs)
    for repeat in range(repeats + 1):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            synchronize()
            if repeat:  # the first round warms up caches and FFT plans
                best[index] = min(best[index], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-images", type=int, default=8, help="images timed with the slow reference")
    args = parser.parse_args()
    device = select_device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    plain = torch.rand(64, 3, 256, 256, generator=generator)
    host = torch.rand(3, 256, 256, generator=generator)
    spectrum = host_spectrum(host.to(device))
    plain_on_device = plain.to(device)
    sample, host_np = plain[: args.reference_images].double().numpy(), host.double().numpy()
    fast, naive = _best_seconds(
        [lambda: hide(plain_on_device, spectrum), lambda: [hide_reference(image, host_np) for image in sample]],
        args.repeats,
        synchronize,
    )
    fast_rate, naive_rate = len(plain) / fast, len(sample) / naive
    print(f"IHM hide, 64 x 3 x 256 x 256: {fast_rate:8.1f} images/s")
    print(f"naive NumPy reference:        {naive_rate:8.1f} images/s (per image, Eq. 1-4 literally)")
    print(f"ratio hide / reference:       {fast_rate / naive_rate:8.1f}x")

    for channels in (1, 3):
        batch = torch.rand(16, channels, 128, 128, generator=generator).to(device)
        bank = host_spectrum(torch.rand(8, channels, 128, 128, generator=generator).to(device))
        network = Generator(channels, IqemConfig().base_channels, IqemConfig().res_blocks).to(device).eval()
        pipeline = SurrogatePipeline(bank, network, PipelineConfig())
        assigned = np.arange(16) % 8
        # partial binds this iteration's pipeline and batch; a lambda would close over the loop variables.
        run = functools.partial(pipeline, batch, assigned)
        (seconds,) = _best_seconds([run], args.repeats, synchronize)
        print(f"pipeline IHM + G + IHM, 16 x {channels} x 128 x 128: {16 / seconds:8.1f} images/s")

    steps = 10
    x_sy = torch.randint(0, 256, (64, 1, 128, 128), dtype=torch.uint8, generator=generator)
    hosts = torch.randint(0, 256, (8, 1, 128, 128), dtype=torch.uint8, generator=generator)
    config = IqemConfig(steps=steps, checkpoint_every=steps)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        pairs = IqemPairs(x_sy=x_sy, plain=x_sy, host_index=np.arange(64) % 8)
        train_iqem(pairs, hosts, config, device, Path(folder) / "checkpoint.pt", progress=False)
        synchronize()
        per_step = (time.perf_counter() - start) / steps
    print(f"IQEM training step, batch {config.batch_size} x 1 x 128 x 128: {1000 * per_step:8.1f} ms/step")


if __name__ == "__main__":
    main()
