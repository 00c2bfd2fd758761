"""Differential privacy as run settings: DP-SGD at the sites (Opacus), Flower's DP wrappers for the aggregate."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity

from clients.app import clip_when_asked
from fesf_fed import dp_sgd
from fesf_fed.errors import ConfigError
from fesf_fed.federation import protocol
from fesf_fed.federation.run_summary import GLOBAL, RunSummary
from fesf_fed.federation.settings import parse_run_settings
from fesf_fed.models import build_model
from fesf_fed.recipe import Recipe
from fesf_fed.task import train
from server.federation import run_federation
from server.run_store import runs_folder
from server.strategies import build_strategy, restore_strategy_state, strategy_state
from tests.simulation import TINY_RUN, run_config, simulate

CPU = torch.device("cpu")
#: DP-SGD as a run turns it on: balanced class weights would make each image's loss depend on the others'.
DP_SGD = {"dp-sgd-noise-multiplier": 1.0, "class-weighting": "none"}


def _random_set(count: int = 20) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (count, 1, 16, 16), dtype=np.uint8), generator.integers(0, 2, count)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_dp_sgd_adds_noise_the_run_seed_does_not_repeat_and_epsilon_grows_with_the_epochs() -> None:
    images, labels = _random_set()
    torch.manual_seed(0)
    start = _weights(build_model("smallcnn", 2, 1))
    recipe = Recipe(class_weighting="none", dp_sgd_noise_multiplier=1.0)
    trained, spent = [], []
    for _ in range(2):
        model = build_model("smallcnn", 2, 1)
        model.load_state_dict(start)
        accountant = dp_sgd.new_accountant()
        for epoch in range(2):
            train(
                model,
                images,
                labels,
                epochs=1,
                lr=1e-2,
                batch_size=4,
                device=CPU,
                seed=3,
                recipe=recipe,
                first_epoch=epoch,
                total_epochs=2,
                accountant=accountant,
            )
            spent.append(accountant.get_epsilon(recipe.dp_sgd_delta))
        trained.append(_weights(model))
        # A plain module again: no Opacus hooks, the same tensors (Flower's clipping mod matches them by name).
        assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())
        assert list(trained[-1]) == list(start)
    assert all(not torch.equal(trained[0][name], start[name]) for name in start)
    # The noise is drawn afresh, not from the run's public seed: the same seed gives other weights.
    assert any(not torch.equal(trained[0][name], trained[1][name]) for name in start)
    assert 0 < spent[0] < spent[1] < math.inf


def test_a_noise_multiplier_of_0_is_the_plain_training_bit_for_bit() -> None:
    images, labels = _random_set()
    results = []
    for recipe in (Recipe(class_weighting="none"), Recipe(class_weighting="none", dp_sgd_max_grad_norm=1e-3)):
        torch.manual_seed(0)
        model = build_model("smallcnn", 2, 1)
        loss = train(model, images, labels, epochs=2, lr=1e-2, batch_size=4, device=CPU, seed=3, recipe=recipe)
        results.append((loss, _weights(model)))
    (loss, weights), (dp_off_loss, dp_off_weights) = results
    assert loss == dp_off_loss and all(torch.equal(weights[name], dp_off_weights[name]) for name in weights)


def test_a_sites_accountant_read_back_goes_on_adding_up(tmp_path) -> None:
    path = tmp_path / "privacy" / "run" / "site-1.json"
    assert dp_sgd.read_accountant(path).get_epsilon(1e-5) == 0  # a site's first round
    kept, whole = dp_sgd.new_accountant(), dp_sgd.new_accountant()
    for _ in range(50):
        kept.step(noise_multiplier=1.0, sample_rate=0.1)
    dp_sgd.write_accountant(kept, path)
    resumed = dp_sgd.read_accountant(path)
    for _ in range(50):
        resumed.step(noise_multiplier=1.0, sample_rate=0.1)
    for _ in range(100):
        whole.step(noise_multiplier=1.0, sample_rate=0.1)
    assert resumed.get_epsilon(1e-5) == pytest.approx(whole.get_epsilon(1e-5))
    assert resumed.get_epsilon(1e-5) > kept.get_epsilon(1e-5)


def test_dp_sgd_refuses_a_model_opacus_cannot_train_in_one_line() -> None:
    dp_sgd.check_model(build_model("smallcnn", 2, 1), "smallcnn")  # GroupNorm: fine
    settings, site_defaults = parse_run_settings(run_config(**DP_SGD, model="resnet18", **{"run-name": "bn"}))
    message = "run config dp-sgd-noise-multiplier: Opacus cannot train model resnet18 with DP-SGD .*BatchNorm"
    with pytest.raises(ConfigError, match=message) as raised:
        run_federation(None, settings, site_defaults, "ignored")  # type: ignore[arg-type]  # refused before any grid use
    assert "\n" not in str(raised.value)
    summary = RunSummary.read(runs_folder() / "bn" / "summary.json")
    assert summary.status == "failed" and summary.error == str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"dp-aggregate": "local"},
            "run config dp-aggregate: Input should be 'none', 'server-fixed' or 'client-fixed'",
        ),
        ({"dp-aggregate-clipping-norm": 0}, "run config dp-aggregate-clipping-norm: Input should be greater than 0"),
        ({"dp-sgd-noise-multiplier": -1}, "run config dp-sgd-noise-multiplier: Input should be greater than or"),
        ({"dp-sgd-noise-multiplier": 1.0}, "run config class-weighting: 'balanced' weighs each image by its site's"),
        ({**DP_SGD, "strategy": "fedprox"}, "run config strategy: fedprox's proximal term cannot be trained with"),
    ],
)
def test_dp_settings_that_cannot_work_are_refused_in_one_line_naming_the_key(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_run_settings(run_config(**overrides))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "wrapper"),
    [
        ("none", None),
        ("server-fixed", DifferentialPrivacyServerSideFixedClipping),
        ("client-fixed", DifferentialPrivacyClientSideFixedClipping),
    ],
)
def test_dp_aggregate_wraps_the_strategy_and_a_resumed_run_restores_the_wrapped_ones_state(value, wrapper) -> None:
    overrides = {"dp-aggregate-noise-multiplier": 0.8, "dp-aggregate-clipping-norm": 2.5}
    settings, _ = parse_run_settings(
        run_config(**overrides, strategy="fedadam", **{"dp-aggregate": value, "fraction-train": 0.5})
    )
    strategy = build_strategy(settings, num_sites=6)
    inner = strategy
    if wrapper is not None:
        assert isinstance(strategy, wrapper)
        # Half of the six sites train each round: the noise is divided among three.
        assert (strategy.noise_multiplier, strategy.clipping_norm, strategy.num_sampled_clients) == (0.8, 2.5, 3)
        inner = strategy.strategy
    assert type(inner) is FedAdam
    moments = {"w": np.ones(2, np.float32)}
    inner.m_t, inner.v_t = moments, moments  # FedAdam's, after a round
    saved = strategy_state(strategy)
    assert set(saved) == {"m_t", "v_t"}
    resumed = build_strategy(settings, num_sites=6)
    restore_strategy_state(resumed, saved)
    restored = getattr(resumed, "strategy", resumed)
    assert isinstance(restored, FedAdam) and restored.m_t is not None
    assert np.array_equal(restored.m_t["w"], moments["w"])


def test_a_site_clips_its_update_when_the_client_side_dp_wrapper_asks(monkeypatch) -> None:
    assert protocol.CLIPPING_NORM == KEY_CLIPPING_NORM  # what Flower's wrapper sends and its mod reads
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)  # Flower's messages need a run, as inside Flower
    start = ArrayRecord({"w": torch.zeros(4)})
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})

    def site(message: Message, _: Context) -> Message:  # an update of norm 6
        arrays = ArrayRecord({"w": torch.full((4,), 3.0)})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 4})}), reply_to=message)

    for config, norm in (({protocol.CLIPPING_NORM: 1.0}, 1.0), ({}, 6.0)):
        content = RecordDict({"arrays": start, "config": ConfigRecord({protocol.SERVER_ROUND: 1, **config})})
        reply = clip_when_asked(Message(content, 0, "train"), context, site)
        update = reply.content.array_records["arrays"].to_torch_state_dict()["w"]
        assert float(update.norm()) == pytest.approx(norm)


def test_a_federation_with_dp_sgd_records_each_sites_epsilon_every_round(fesf_home) -> None:
    # Client-side clipping of the aggregate too, so Flower's mod works on this app's messages end to end. Plaintext:
    # no surrogates to build. Batches of 2 sample each site's images at its own rate: the sites spend different epsilons.
    overrides = {"mode": "plaintext", "site.data.phantom_per_class": 16, "batch-size": 2}
    overrides |= {"dp-aggregate": "client-fixed", "run-name": "dp"}
    outcome = simulate(run_config(**{**TINY_RUN, **DP_SGD, **overrides}))
    history = outcome.summary.history
    assert outcome.summary.status == "finished" and [entry.round for entry in history] == [1, 2]
    sites = ("site-1", "site-2", "site-3")
    spent = {site: [entry.train[site]["dp-sgd-epsilon"] for entry in history] for site in sites}
    for site in sites:
        # Cumulative: round 2 adds its steps to round 1's, kept by the site between rounds.
        assert 0 < spent[site][0] < spent[site][1] < math.inf, spent
        assert (fesf_home / "privacy" / "dp" / f"{site}.json").is_file()
    # The run's guarantee is its weakest site's, not an average.
    assert len({spent[site][0] for site in sites}) > 1, spent
    for index, entry in enumerate(history):
        assert entry.train[GLOBAL]["dp-sgd-epsilon"] == max(spent[site][index] for site in sites)
