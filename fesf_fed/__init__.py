"""FESF-Fed engine: turns a site's plaintext images into FESF surrogate images.

The modules here implement the method of "Plaintext-Free Deep Learning for
Privacy-Preserving Medical Image Analysis via Frequency Information Embedding"
(Sun et al.) as settled by docs/design.md. Nothing in the engine imports Flower
(tests/test_protocol.py imports every module of this folder to check): it can be used
on its own, and the federation (``clients/``, ``server/``) is built on top of it. Two sub-packages are not the engine but what runs around it:
``fesf_fed.federation`` (a run's settings, the wire protocol, the run summary) and
``fesf_fed.deployment`` (Flower's programs, the consortium's keys, the diagnosis client
of ``fesf predict``). An installed wheel also holds the apps, as ``fesf_fed.server`` and
``fesf_fed.clients`` (the checkout's ``server/`` and ``clients/``; docs/design.md, section 1).
"""

__version__ = "0.1.0"
