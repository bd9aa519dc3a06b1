"""Find every recording like this one: an index of window embeddings, built from folders or buckets and searched
with a clip or the id of an indexed one.

`vectors` (faiss, the HNSW library: imported only there, only when used), `index` (the index and its portable
on-disk format), `indexer` (`earshot index`: listing, change detection, embedding), `silence` (which windows count),
`query` (window hits merged per file).
"""

from __future__ import annotations

from earshot.search.index import FileEntry, SearchIndex
from earshot.search.indexer import Report, index_sources, list_sources
from earshot.search.query import Hit, load_classifier, query_embeddings, search
from earshot.search.vectors import SearchError

__all__ = ["FileEntry", "Hit", "Report", "SearchError", "SearchIndex", "index_sources", "list_sources",
           "load_classifier", "query_embeddings", "search"]
