"""Flower's aggregation strategies, built by name from the run settings, and their resumable state."""

from collections.abc import Callable
from typing import TypedDict

import numpy as np
import torch
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

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


def build_strategy(settings: RunSettings) -> Strategy:
    """The strategy named by ``settings.strategy``, with the run's fractions and minimums."""
    return _BUILDERS[settings.strategy](settings)


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
    return {
        name: _to_tensors(getattr(strategy, name))
        for name in _STATE_ATTRIBUTES
        if getattr(strategy, name, None) is not None
    }


def restore_strategy_state(strategy: Strategy, state: dict[str, TensorState]) -> None:
    """Put back what :func:`strategy_state` saved."""
    for name, value in state.items():
        setattr(strategy, name, _to_arrays(value))
