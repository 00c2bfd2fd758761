"""Choice of the torch device a site computes on."""

import torch

from fesf_fed.errors import ConfigError


def select_device(spec: str = "auto") -> torch.device:
    """Return the torch device named by ``spec``.

    Parameters
    ----------
    spec : str
        ``"auto"`` (the first GPU when there is one, else the CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    ConfigError
        If a GPU is asked for that this machine does not have.
    """
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0 if spec == "cuda" else spec.removeprefix("cuda:")
        if not str(index).isdigit():
            raise ConfigError(f"device: {spec!r} is not a device; use auto, cpu or cuda:N")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ConfigError(
                f"device: {spec!r} asked for, but this machine has {count} CUDA device(s); use auto or cpu"
            )
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"device: {spec!r} is not a device; use auto, cpu or cuda:N")
