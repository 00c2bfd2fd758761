"""Privacy audit: attacks on a site's surrogates and federated updates (docs/privacy.md)."""
