"""The central evaluation dashboard and the surrogate diagnosis service (``fesf-dashboard``).

It reads the run store (:mod:`server.run_store`) and the privacy audits read-only:
``runs`` turns a store and ``audits`` an audit folder into what the pages show,
``figures`` and ``pages`` draw them, ``api`` serves exports and diagnoses over HTTP,
``access`` guards it with a token, ``app`` ties them into one Dash app and ``cli``
serves it.
"""
