"""Per-region stores: cache, time series and audit search.

Each store has a production backend and an embedded default with the same API, chosen by a
URL (``redis://…``, ``postgresql://…``, ``http://…:9200``, ``sqlite:///path``,
``memory://``). :class:`~nethical_grpc.storage.backend.BackendChoice` records which backend
a store ended up on and why.
"""
