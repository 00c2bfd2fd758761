"""Running FESF-Fed across real hospitals: starting Flower's programs, the consortium's keys, the diagnosis client.

Nothing here computes surrogates; it is what ``fesf-server``, ``fesf-client`` and
``fesf predict`` need around the engine. None of it imports Flower (Flower's programs run
as separate processes).
"""
