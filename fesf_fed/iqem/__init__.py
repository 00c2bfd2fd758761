"""IQEM, the Image Quality Enhancement Module: a generator G that carries IHM
surrogates into the host-image domain, trained against a patch discriminator
(paper Eq. 5; docs/design.md, IQEM)."""

from fesf_fed.iqem.networks import Discriminator, Generator, IdentityGenerator
from fesf_fed.iqem.training import (
    IqemPairs,
    augment_hosts,
    discriminator_loss,
    generator_loss,
    iqem_summary,
    load_generator,
    train_iqem,
)

__all__ = [
    "Discriminator",
    "Generator",
    "IdentityGenerator",
    "IqemPairs",
    "augment_hosts",
    "discriminator_loss",
    "generator_loss",
    "iqem_summary",
    "load_generator",
    "train_iqem",
]
