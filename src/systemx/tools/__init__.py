"""Terminal tools built on :mod:`systemx.client`: ``systemx dial``, ``answer``,
``presence`` and ``party``; and two that read the admin listener instead:
``systemx calls`` (the call history) and ``systemx tail`` (the live events).

Each client tool connects to ``--url`` (default ``$SYSTEMX_URL`` or
``ws://127.0.0.1:8080``), REGISTERs an address (``--as``; ``--token`` is sent
as REGISTER ``auth``) and exits with one of the statuses in
:mod:`systemx.tools.common`. The admin tools take ``--url`` of the admin
listener and ``--token`` (its bearer token).
"""
