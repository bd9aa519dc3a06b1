"""What one run works on: the source store, where results go (a sink store, or one results file), and the ledger.

Both drivers (`earshot watch`, `earshot batch`) open these through `open_run`, so a source, a sink and a ledger
spec name the same ledger rows whichever driver runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from earshot.pipeline.ledger import Ledger, open_ledger
from earshot.pipeline.storage import LocalStore, Store, open_store, pid_alive


@dataclass
class Run:
    """The stores and ledger of a run. `dst` holds one result per object; it is None when the results are kept in
    the ledger and written as one file at the end (`results_file`: its store and key). `sink` is the URL that the
    ledger rows of this run are keyed by, with `src.url`."""

    src: Store
    dst: Store | None
    sink: str
    ledger: Ledger
    results_file: tuple[Store, str] | None = None

    def recover(self) -> tuple[int, int]:
        """Clean up after workers that died on this host: their leases become claimable now, and their temp files
        under a local `dst` are removed. Returns (leases released, temp files removed)."""
        released = self.ledger.release_dead(self.src.url, self.sink, pid_alive)
        swept = self.dst.sweep_temp() if isinstance(self.dst, LocalStore) else 0
        return released, swept

    def unfinished(self) -> int:
        """Items of this run still pending or leased."""
        return self.ledger.unfinished(self.src.url, self.sink)

    def status(self) -> dict:
        """The ledger status of this run's source and sink."""
        return self.ledger.status(self.src.url, self.sink)


def results_file_target(dst: str | os.PathLike, endpoint_url: str | None = None) -> tuple[Store, str]:
    """(store, key) of a single results file: DST itself when it ends in `.jsonl`, else `DST/results.jsonl`."""
    s = os.fspath(dst)
    if s.endswith(".jsonl"):
        parent, _, name = s.rstrip("/").rpartition("/")
        if s.startswith("s3://"):
            return open_store(parent + "/", endpoint_url=endpoint_url), name
        parent, name = os.path.split(os.path.abspath(s))
        return LocalStore(parent, create=True), name
    return open_store(s, endpoint_url=endpoint_url, create=True), "results.jsonl"


def open_run(src: str | os.PathLike | Store, dst: str | os.PathLike | Store, *,
             ledger: str | os.PathLike | Ledger | None = None, endpoint_url: str | None = None,
             one_file: bool = False) -> Run:
    """Open SRC, the sink and the ledger of a run. The sink is DST as a store of per-object results (created when
    missing), or with `one_file` the single results file that DST names (see `results_file_target`). `ledger`: a
    Ledger, a SQLite path, a `postgresql://` URL, or None for the default ledger of this source and sink."""
    src_store = src if isinstance(src, Store) else open_store(src, endpoint_url=endpoint_url)
    if one_file:
        out_store, out_key = results_file_target(dst.url if isinstance(dst, Store) else dst, endpoint_url)
        dst_store, sink, results_file = None, out_store.child_url(out_key), (out_store, out_key)
    else:
        dst_store = dst if isinstance(dst, Store) else open_store(dst, endpoint_url=endpoint_url, create=True)
        sink, results_file = dst_store.url, None
    return Run(src_store, dst_store, sink, open_ledger(ledger, src_store.url, sink), results_file)
