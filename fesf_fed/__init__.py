"""FESF-Fed engine: turns a site's plaintext images into FESF surrogate images.

The modules here implement the method of "Plaintext-Free Deep Learning for
Privacy-Preserving Medical Image Analysis via Frequency Information Embedding"
(Sun et al.) as settled by DESIGN.md. Nothing in this package imports Flower:
it can be used on its own, and the federation (``clients/``, ``server/``) is
built on top of it.
"""

__version__ = "0.1.0"
