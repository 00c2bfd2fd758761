"""IQEM: the generator and discriminator, their losses, and resumable deterministic training."""

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fesf_fed.config import IqemConfig
from fesf_fed.data.phantom import phantom_dataset, phantom_hosts
from fesf_fed.errors import ConfigError, DataError
from fesf_fed.ihm import hide
from fesf_fed.iqem import (
    Discriminator,
    Generator,
    IdentityGenerator,
    IqemPairs,
    augment_hosts,
    discriminator_loss,
    generator_loss,
    load_generator,
    train_iqem,
    training,
)

CPU = torch.device("cpu")
# Tiny networks: the smallest widths the config allows, one residual block.
TINY = {"batch_size": 4, "base_channels": 4, "res_blocks": 1, "disc_channels": 8, "disc_layers": 2}


def _surrogates(size: int, per_class: int = 8, host_count: int = 4) -> tuple["TensorPairs", torch.Tensor]:
    """Phantom slices hidden in phantom hosts (the first IHM), with their hosts and plaintexts, and the bank (uint8).

    The hosts are another domain than the slices: IQEM has somewhere to carry x_sy.
    """
    plain = torch.from_numpy(phantom_dataset(per_class, size, seed=0).images).float() / 255
    hosts = torch.from_numpy(phantom_hosts(host_count, size, seed=0))
    host_index = np.arange(len(plain)) % host_count
    x_sy = hide(plain, hosts[host_index].float() / 255, 0.5, 0.5)
    return TensorPairs(x_sy=x_sy, plain=plain, host_index=host_index), hosts


class TensorPairs(IqemPairs):
    """IqemPairs whose images are tensors (as the tests make them)."""

    x_sy: torch.Tensor
    plain: torch.Tensor


def _hosts_of(pairs: IqemPairs, bank: torch.Tensor) -> torch.Tensor:
    """Each image's host, float in [0, 1]."""
    return bank[pairs.host_index].float() / 255


def _mean_ssim(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(
        np.mean([structural_similarity(a[0], b[0], data_range=1.0) for a, b in zip(first.numpy(), second.numpy())])
    )


def _weights(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu() for name, value in generator.state_dict().items()}


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height,width", [(8, 8), (17, 31), (28, 28)])
def test_untrained_generator_is_the_identity(channels: int, height: int, width: int) -> None:
    images = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(Generator(channels, base_channels=4, res_blocks=1)(images, images.flip(0)), images)
        assert torch.equal(IdentityGenerator()(images, images.flip(0)), images)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height,width", [(9, 13), (17, 31), (28, 28)])
def test_networks_keep_shapes_at_odd_and_small_sizes(channels: int, height: int, width: int) -> None:
    images = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    generator = Generator(channels, base_channels=4, res_blocks=2)
    # A trained G has a non-zero last layer; its output must still be an image in [0, 1].
    torch.nn.init.normal_(generator.head.weight, std=1.0)
    with torch.no_grad():
        output = generator(images, images.flip(-1))
    assert output.shape == images.shape
    assert 0 <= output.min() and output.max() <= 1 and not torch.equal(output, images)

    layers = Discriminator.layers_for(min(height, width), 3)
    logits = Discriminator(channels, base_channels=8, layers=layers)(images)
    assert logits.shape[:2] == (2, 1) and min(logits.shape[-2:]) >= 1


def test_default_discriminator_takes_medmnist_size() -> None:
    assert Discriminator.layers_for(28, 3) == 3
    assert Discriminator(3)(torch.rand(2, 3, 28, 28)).shape == (2, 1, 1, 1)


def test_discriminator_refuses_images_too_small_for_its_depth() -> None:
    assert Discriminator.layers_for(28, 6) == 3
    with pytest.raises(ValueError, match="at least 48 px"):
        Discriminator(1, layers=4)(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        Discriminator.layers_for(5, 3)


def test_losses_are_zero_at_their_targets_and_positive_elsewhere() -> None:
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert discriminator_loss(ones, zeros).item() == 0
    assert discriminator_loss(zeros, ones).item() == pytest.approx(1.0)

    config = IqemConfig(lambda_adv=1.0, lambda_content=10.0, lambda_host=3.0, lambda_amplitude=2.0)
    x_sy = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    loss, terms = generator_loss(ones, x_sy, x_sy, x_sy, config)
    assert loss.item() == 0 and terms == {"adversarial": 0.0, "content": 0.0, "host": 0.0, "amplitude": 0.0}

    hosts = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    fake = (x_sy + 0.1).clamp(0, 1)
    loss, terms = generator_loss(zeros, fake, x_sy, hosts, config)
    assert terms["adversarial"] == pytest.approx(1.0)
    assert terms["content"] > 0 and terms["host"] > 0 and terms["amplitude"] > 0
    expected = terms["adversarial"] + 10.0 * terms["content"] + 3.0 * terms["host"] + 2.0 * terms["amplitude"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_augment_hosts_crops_and_flips_each_sample_reproducibly() -> None:
    _, hosts = _surrogates(24)
    batch = hosts[:1].float().div(255).expand(6, -1, -1, -1)
    first = augment_hosts(batch, torch.Generator().manual_seed(3))
    again = augment_hosts(batch, torch.Generator().manual_seed(3))
    assert first.shape == batch.shape and torch.equal(first, again)
    # Each copy of the same host gets its own crop.
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 6))
    # Crops resample inside the image: no padding, no values outside the host's.
    assert batch.min() <= first.min() and first.max() <= batch.max()


#: A few dozen steps, checked every 10.
FEW_DOZEN = IqemConfig(steps=60, check_every=10, checkpoint_every=60, lr=1e-3, **TINY)


@pytest.fixture(scope="module")
def phantom_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple["TensorPairs", torch.Tensor, torch.Tensor, dict]]:
    """G trained on phantom slices hidden in phantom hosts, with the default balance and with no host term."""
    pairs, bank = _surrogates(24)
    hosts = _hosts_of(pairs, bank)
    folder = tmp_path_factory.mktemp("iqem")
    runs = {}
    for name, host_weight in (("default", IqemConfig().lambda_host), ("no host term", 0.0)):
        config = FEW_DOZEN.model_copy(update={"lambda_host": host_weight})
        checkpoint = folder / f"{name}.pt"
        # Builds hand over NumPy arrays; training takes them as well as tensors.
        generator = train_iqem(pairs, bank.numpy(), config, CPU, checkpoint, progress=False)
        with torch.no_grad():
            output = generator(pairs.x_sy, hosts)
        runs[name] = (pairs, hosts, output, torch.load(checkpoint, weights_only=True))
    return runs


def test_iqem_carries_x_sy_towards_its_host_in_a_few_dozen_steps(phantom_runs: dict) -> None:
    pairs, hosts, moved, state = phantom_runs["default"]
    before = _mean_ssim(pairs.x_sy, hosts)
    after = _mean_ssim(moved, hosts)
    assert after > before + 0.03, (before, after)
    # The checks record it, from the identity at step 0 on.
    checks = state["checks"]
    assert [check["step"] for check in checks][:2] == [0, 10]
    assert checks[0]["ssim_host"] < state["best"]["ssim_host"]
    # The content term keeps it short of the host: the plaintext's share is not erased.
    assert _mean_ssim(moved, pairs.plain) > 0.5 * _mean_ssim(pairs.x_sy, pairs.plain)


def test_on_a_distinct_domain_the_adversarial_term_alone_carries_x_sy_too(phantom_runs: dict) -> None:
    pairs, hosts, adversarial_only, state = phantom_runs["no host term"]
    assert _mean_ssim(adversarial_only, hosts) > _mean_ssim(pairs.x_sy, hosts) + 0.03
    assert all(step["host"] > 0 for step in state["history"])  # the host term is logged even when weighted 0


def test_training_stops_when_g_no_longer_gets_closer_and_keeps_the_best_check(tmp_path: Path) -> None:
    pairs, bank = _surrogates(16, per_class=4, host_count=3)
    # A gain no check can reach: training stops after `patience` checks and keeps G at step 0, the identity.
    config = FEW_DOZEN.model_copy(update={"min_gain": 1.0, "patience": 2, "check_every": 5})
    checkpoint = tmp_path / "iqem.pt"
    generator = train_iqem(pairs, bank, config, CPU, checkpoint, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 10 and "2 checks" in state["stopped"]
    with torch.no_grad():
        assert torch.equal(generator(pairs.x_sy, _hosts_of(pairs, bank)), pairs.x_sy)
    log = training.log_path(checkpoint).read_text().splitlines()
    assert log[0].split(",")[:3] == ["step", "discriminator", "adversarial"] and len(log) == 1 + 1 + 10
    assert log[-1].startswith("10,") and not log[-1].endswith(",")  # step 10 was a check: its SSIMs are there


def test_zero_steps_switch_iqem_off(small_data: "SmallData", tmp_path: Path) -> None:
    off = SHORT.model_copy(update={"steps": 0})
    assert isinstance(train_iqem(*small_data, off, CPU, tmp_path / "iqem.pt", progress=False), IdentityGenerator)
    assert isinstance(load_generator(tmp_path / "iqem.pt", CPU, off), IdentityGenerator)
    assert not (tmp_path / "iqem.pt").exists()


#: Surrogates (x_sy) with their hosts and plaintexts, and the host bank, as _surrogates makes them.
SmallData = tuple["TensorPairs", torch.Tensor]


@pytest.fixture(scope="module")
def small_data() -> SmallData:
    return _surrogates(16, per_class=4, host_count=3)


SHORT = IqemConfig(steps=12, checkpoint_every=4, check_every=4, min_gain=0.0, patience=5, **TINY)


@pytest.fixture(scope="module")
def finished(small_data: SmallData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A finished short run: its checkpoint and the weights train_iqem returned."""
    checkpoint = tmp_path_factory.mktemp("finished") / "iqem.pt"
    generator = train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    assert not generator.training
    return checkpoint, _weights(generator)


def test_same_seed_gives_the_same_weights(small_data: SmallData, finished: tuple, tmp_path: Path) -> None:
    again = train_iqem(*small_data, SHORT, CPU, tmp_path / "again.pt", progress=False)
    _assert_same_weights(_weights(again), finished[1])
    other_seed = SHORT.model_copy(update={"seed": 1})
    other = train_iqem(*small_data, other_seed, CPU, tmp_path / "other.pt", progress=False)
    assert not torch.equal(_weights(other)["stem.0.weight"], finished[1]["stem.0.weight"])


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Make the ``calls + 1``-th training step raise KeyboardInterrupt, as Ctrl-C would."""
    count = {"calls": 0}

    def interrupting(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        count["calls"] += 1
        if count["calls"] > calls:
            raise KeyboardInterrupt
        return discriminator_loss(real_logits, fake_logits)

    monkeypatch.setattr(training, "discriminator_loss", interrupting)


def _half_trained(small_data: SmallData, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``checkpoint`` of a SHORT training interrupted (Ctrl-C) after its fourth step."""
    with monkeypatch.context() as patch:
        _interrupt_after(patch, calls=6)
        with pytest.raises(KeyboardInterrupt):
            train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    return checkpoint


def test_interrupted_run_resumes_to_the_uninterrupted_weights(
    small_data: SmallData, finished: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _half_trained(small_data, tmp_path / "iqem.pt", monkeypatch)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    resumed = train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    _assert_same_weights(_weights(resumed), finished[1])
    state, reference = torch.load(checkpoint, weights_only=True), torch.load(finished[0], weights_only=True)
    _assert_same_weights(state["discriminator"], reference["discriminator"])
    assert state["step"] == 12 and len(state["history"]) == 12
    assert state.keys() == training.CHECKPOINT_KEYS


def test_finished_checkpoint_is_returned_without_training(
    small_data: SmallData, finished: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, weights = finished
    modified = os.stat(checkpoint).st_mtime_ns
    _interrupt_after(monkeypatch, calls=0)
    generator = train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    assert not generator.training
    _assert_same_weights(_weights(generator), weights)
    assert os.stat(checkpoint).st_mtime_ns == modified


@pytest.mark.parametrize("cut", ["empty", "in its header", "halfway", "in its zip directory"])
def test_a_damaged_half_trained_checkpoint_is_one_warning_and_trained_again(
    small_data: SmallData,
    finished: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cut: str,
) -> None:
    checkpoint = _half_trained(small_data, tmp_path / "iqem.pt", monkeypatch)
    whole = checkpoint.read_bytes()
    ends = {"empty": 0, "in its header": 100, "halfway": len(whole) // 2, "in its zip directory": len(whole) - 22}
    checkpoint.write_bytes(whole[: ends[cut]])
    with caplog.at_level("WARNING", logger=training.__name__):
        generator = train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"{checkpoint}: damaged IQEM checkpoint (not a readable IQEM checkpoint")
    assert warnings[0].endswith("IQEM is trained again from step 0")
    # Training from step 0 is deterministic: it ends at the uninterrupted run's weights.
    _assert_same_weights(_weights(generator), finished[1])
    assert torch.load(checkpoint, weights_only=True)["step"] == 12


def test_checkpoint_of_other_settings_is_refused(small_data: SmallData, finished: tuple) -> None:
    checkpoint = finished[0]
    with pytest.raises(ConfigError, match=r"lr 0\.0002 -> 0\.001.*delete the file"):
        train_iqem(*small_data, SHORT.model_copy(update={"lr": 1e-3}), CPU, checkpoint, progress=False)
    pairs, bank = small_data
    colour = IqemPairs(pairs.x_sy.expand(-1, 3, -1, -1), pairs.plain.expand(-1, 3, -1, -1), pairs.host_index)
    with pytest.raises(ConfigError, match="in_channels 1 -> 3"):
        train_iqem(colour, bank.expand(-1, 3, -1, -1), SHORT, CPU, checkpoint, progress=False)


def test_checkpoint_is_replaced_atomically(
    small_data: SmallData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "iqem.pt"
    real_save = torch.save
    count = {"calls": 0}

    def failing_save(state: dict, stream: BinaryIO) -> None:
        count["calls"] += 1
        if count["calls"] == 2:
            stream.write(b"half a checkpoint")
            raise OSError("disk full")
        real_save(state, stream)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train_iqem(*small_data, SHORT, CPU, checkpoint, progress=False)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == ["iqem-log.csv", "iqem.pt"]  # log_path: <name>-log.csv


def test_load_generator_gives_the_trained_generator(finished: tuple) -> None:
    checkpoint, weights = finished
    generator = load_generator(checkpoint, CPU)
    assert isinstance(generator, Generator) and not generator.training
    _assert_same_weights(_weights(generator), weights)


def test_load_generator_refuses_unfinished_missing_and_foreign_files(
    small_data: SmallData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unfinished = tmp_path / "unfinished.pt"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, calls=5)
        with pytest.raises(KeyboardInterrupt):
            train_iqem(*small_data, SHORT, CPU, unfinished, progress=False)
    with pytest.raises(DataError, match="stopped at step 4 of at most 12"):
        load_generator(unfinished, CPU)
    with pytest.raises(DataError, match="not found"):
        load_generator(tmp_path / "missing.pt", CPU)
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a checkpoint")
    with pytest.raises(DataError, match="not a readable IQEM checkpoint"):
        load_generator(foreign, CPU)


def test_unusable_images_are_refused(small_data: SmallData, tmp_path: Path) -> None:
    pairs, bank = small_data
    checkpoint = tmp_path / "iqem.pt"
    scaled = IqemPairs(pairs.x_sy * 255, pairs.plain, pairs.host_index)
    with pytest.raises(DataError, match=r"x_sy: float images must lie in \[0, 1\]"):
        train_iqem(scaled, bank, SHORT, CPU, checkpoint, progress=False)
    with pytest.raises(DataError, match="1 channel.*host bank has 3"):
        train_iqem(pairs, bank.expand(-1, 3, -1, -1), SHORT, CPU, checkpoint, progress=False)
    with pytest.raises(DataError, match="bank: expected a non-empty"):
        train_iqem(pairs, bank[:0], SHORT, CPU, checkpoint, progress=False)
    assert not checkpoint.exists()
