"""The storage contract suite: every case runs against every backend in `tests.contract.backends`.

The cases use only the Protocols of `storage.blobs`, `storage.metadata` and `storage.coordination` (through
`storage.factory.Stores`), never a driver's files, tables or keys, so a new backend passes by being added to
`BACKENDS`, not by new tests. The one exception, test_postgres_replicas.py, is PostgreSQL's own: races between
replicas and lost connections, which need two instances of the driver and, at times, its connections.
"""
