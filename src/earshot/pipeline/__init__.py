"""The exactly-once object pipeline behind `earshot watch` and `earshot batch`.

Every object `SRC/<key>` ends as exactly one `DST/<key>.json` or `DST/<key>.error.json`, through a durable ledger
that survives crashes and is shared by concurrent workers. Modules, one job each:

- `storage`: local folders and S3-compatible buckets behind one `Store` interface; safe keys.
- `ledger`: the work ledger (SQLite) and `open_ledger`; `postgres`: the same ledger on PostgreSQL.
- `run`: `open_run`, the source store, sink and ledger of one run (both drivers open them there).
- `processor`: one object read, classified and written as a result or error record.
- `runner`: the thread pipeline (ledger, classifier and writer threads) that works through the ledger.
- `discovery`: listings, watchdog events and rescans that record new and changed objects.
- `notifications`: an HTTP endpoint taking S3/MinIO event notifications.
- `ray_engine`: the batch driver's Ray Data engine.
- `logs`: JSON-lines logging.
"""
