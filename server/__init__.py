"""The server side of the federation: the Flower ServerApp that aggregates weights, and the dashboard."""
