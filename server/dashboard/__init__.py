"""The central evaluation dashboard and the surrogate diagnosis service (``fesf-dashboard``).

It reads the run store (:mod:`server.run_store`) read-only: ``runs`` turns a store
into what the pages show, ``figures`` and ``pages`` draw it, ``api`` serves exports
and diagnoses over HTTP, ``access`` guards it with a token, ``app`` ties them into
one Dash app and ``cli`` serves it.
"""
