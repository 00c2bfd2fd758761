"""The site side of the federation: the Flower ClientApp that trains on a site's surrogates."""
