"""Flower's aggregation strategies, built by name from the run settings, and their resumable state.

With ``dp-aggregate`` set, the strategy is wrapped in Flower's differential-privacy wrapper
for fixed clipping: each site's update (its weights minus the global model's) is clipped to
``dp-aggregate-clipping-norm``, at the server ("server-fixed") or by the site itself
("client-fixed", with Flower's ``fixedclipping_mod`` in the ClientApp), and Gaussian noise of
standard deviation ``dp-aggregate-noise-multiplier x clipping norm / sampled sites`` is added to
the aggregate. The clipping and the noise are Flower's.
"""

from collections.abc import Callable
from typing import TypedDict

import numpy as np
import torch
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from fesf_fed.federation.settings import RunSettings

#: Server-side optimiser state that a strategy carries from round to round; a resumed
#: run restores it so that FedAdam, FedYogi and FedAvgM continue where they stopped.
_STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")


class _Common(TypedDict):
    """The arguments every strategy takes."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


def _common(settings: RunSettings) -> _Common:
    return {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_train_nodes,
        "min_evaluate_nodes": settings.min_evaluate_nodes,
        "min_available_nodes": settings.min_available_nodes,
    }


_BUILDERS: dict[str, Callable[[RunSettings], Strategy]] = {
    "fedavg": lambda s: FedAvg(**_common(s)),
    "fedprox": lambda s: FedProx(**_common(s), proximal_mu=s.fedprox_mu),
    "fedadam": lambda s: FedAdam(**_common(s), eta=s.fedopt_eta, tau=s.fedopt_tau),
    "fedyogi": lambda s: FedYogi(**_common(s), eta=s.fedopt_eta, tau=s.fedopt_tau),
    "fedavgm": lambda s: FedAvgM(
        **_common(s),
        server_learning_rate=s.fedavgm_server_lr,
        server_momentum=s.fedavgm_momentum,
    ),
    "fedmedian": lambda s: FedMedian(**_common(s)),
    "fedtrimmedavg": lambda s: FedTrimmedAvg(**_common(s), beta=s.fedtrimmedavg_beta),
}


#: Flower's wrappers by ``dp-aggregate`` value; they keep the wrapped strategy as ``strategy``.
_DP_WRAPPERS: dict[str, type[DifferentialPrivacyFixedClippingBase]] = {
    "server-fixed": DifferentialPrivacyServerSideFixedClipping,
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
}


def build_strategy(settings: RunSettings, num_sites: int) -> Strategy:
    """The strategy named by ``settings.strategy``, with the run's fractions and minimums, in ``dp-aggregate``'s wrapper.

    ``num_sites``, the run's site count, gives the wrapper the number of sites each round samples
    (as Flower's ``configure_train`` does), which divides the noise on the aggregate.
    """
    strategy = _BUILDERS[settings.strategy](settings)
    if settings.dp_aggregate == "none":
        return strategy
    sampled = max(int(num_sites * settings.fraction_train), settings.min_train_nodes)
    return _DP_WRAPPERS[settings.dp_aggregate](
        strategy, settings.dp_aggregate_noise_multiplier, settings.dp_aggregate_clipping_norm, sampled
    )


def _optimiser_holder(strategy: Strategy) -> Strategy:
    """The strategy that holds the optimiser state: the wrapped one, behind a DP wrapper."""
    return strategy.strategy if isinstance(strategy, DifferentialPrivacyFixedClippingBase) else strategy


#: One attribute of that state: arrays by parameter name (FedAdam's, FedYogi's m_t and v_t) or in
#: order (FedAvgM's momentum_vector); as NumPy arrays in the strategy, as tensors in a checkpoint.
ArrayState = dict[str, np.ndarray] | list[np.ndarray]
TensorState = dict[str, torch.Tensor] | list[torch.Tensor]


def _to_tensors(value: ArrayState) -> TensorState:
    if isinstance(value, dict):
        return {key: torch.from_numpy(np.asarray(array)) for key, array in value.items()}
    return [torch.from_numpy(np.asarray(array)) for array in value]


def _to_arrays(value: TensorState) -> ArrayState:
    if isinstance(value, dict):
        return {key: tensor.numpy() for key, tensor in value.items()}
    return [tensor.numpy() for tensor in value]


def strategy_state(strategy: Strategy) -> dict[str, TensorState]:
    """The strategy's optimiser state as tensors (what ``torch.load(weights_only=True)`` reads back)."""
    holder = _optimiser_holder(strategy)
    return {
        name: _to_tensors(getattr(holder, name))
        for name in _STATE_ATTRIBUTES
        if getattr(holder, name, None) is not None
    }


def restore_strategy_state(strategy: Strategy, state: dict[str, TensorState]) -> None:
    """Put back what :func:`strategy_state` saved."""
    for name, value in state.items():
        setattr(_optimiser_holder(strategy), name, _to_arrays(value))
