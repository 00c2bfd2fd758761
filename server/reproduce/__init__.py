"""``fesf-reproduce``: the paper's Tables 1-3 on real data, federated and central, over seeds.

:mod:`~server.reproduce.experiment` runs the cells and keeps ``results.json``,
:mod:`~server.reproduce.paper` holds the paper's published figures,
:mod:`~server.reproduce.report` writes the Markdown tables, and
:mod:`~server.reproduce.cli` is the command.
"""
