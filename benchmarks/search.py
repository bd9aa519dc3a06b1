"""Vector index libraries for `earshot search`: faiss-cpu, hnswlib and usearch on synthetic 384-d float32 vectors.

For each size: build rate (vectors/s), single-query latency p50/p99 (k=10, one thread, as a request runs),
recall@10 against exact inner-product search on the same L2-normalised vectors, index file size, the rate of
incremental adds into the built index (one 5-window file per call on one thread, as `earshot index` adds a file),
load time (and whether the file can be memory-mapped), and whether a fresh process reading the file answers the
same. Prints figures; no thresholds are asserted.

The vectors are clusters in an anisotropic space calibrated on real window embeddings (`--data clustered`, default;
see `Shape`), or isotropic Gaussians (`--data gaussian`: no structure at all, the worst case for graph indexes).

    pip install -c constraints.txt faiss-cpu hnswlib usearch    # the three candidates
    python benchmarks/search.py --sizes 10000,100000
    python benchmarks/search.py --sizes 1000000 --libs faiss,hnswlib --queries 300
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the exact baseline answers one query on one core too

import numpy as np  # noqa: E402

DIM = 384
K = 10


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


class Shape:
    """The synthetic distribution: a common direction, 2000 cluster centres and per-vector noise in a space whose
    variance decays as i^-1.2 over a random basis. Calibrated on mn04-as 1 s window embeddings of the ESC-50
    subset (3,255 vectors): mean cosine 0.40 / 0.41 synthetic, nearest neighbour 0.88 / 0.87, 10th neighbour
    0.80 / 0.71 (a little harder than the real ones), 90 % of the variance in 107 / 112 principal axes."""

    def __init__(self, kind: str, seed: int = 99) -> None:
        self.kind = kind
        g = np.random.default_rng(seed)
        scale = (np.arange(1, DIM + 1) ** -0.6).astype(np.float32)
        self.scale = scale / np.sqrt((scale**2).sum())
        self.basis = np.linalg.qr(g.standard_normal((DIM, DIM)))[0].astype(np.float32)
        self.mean = normalise(g.standard_normal((1, DIM)).astype(np.float32))[0] * 0.9
        self.centres = (g.standard_normal((2000, DIM)).astype(np.float32) * self.scale) @ self.basis

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n unit vectors, generated in chunks."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, DIM), np.float32)
        for i in range(0, n, 100_000):
            m = min(100_000, n - i)
            x = rng.standard_normal((m, DIM), dtype=np.float32)
            if self.kind == "clustered":
                x = (x * (self.scale * 0.5)) @ self.basis
                x += self.mean + self.centres[rng.integers(len(self.centres), size=m)]
            out[i : i + m] = normalise(x)
        return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k by inner product (= cosine on unit vectors), in chunks of the data."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for i in range(0, len(data), 200_000):
        s = queries @ data[i : i + 200_000].T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + i], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


@dataclass
class Lib:
    name: str
    build: Callable[[np.ndarray, int], object]
    add: Callable[[object, np.ndarray, int], None]
    search: Callable[[object, np.ndarray, int], np.ndarray]
    save: Callable[[object, str], None]
    load: Callable[[str, int], object]
    view: Callable[[str, int], object] | None
    reload_code: str  # a fresh process: loads `path`, prints the ids of the first queries as JSON


M, EF_CONSTRUCTION = 16, 128


def faiss_lib(threads: int) -> Lib:
    import faiss

    def build(x: np.ndarray, _n: int):
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(x)
        return index

    def search(index, q: np.ndarray, ef: int) -> np.ndarray:
        return index.search(q, K, params=faiss.SearchParametersHNSW(efSearch=ef))[1]

    def load(path: str, _n: int):
        return faiss.read_index(path)

    def view(path: str, _n: int):
        return faiss.read_index(path, faiss.IO_FLAG_MMAP)

    code = ("import faiss,numpy as np,json,sys; faiss.omp_set_num_threads(1); i=faiss.read_index(sys.argv[1]); "
            "q=np.load(sys.argv[2]); p=faiss.SearchParametersHNSW(efSearch=int(sys.argv[3])); "
            f"print(json.dumps(i.search(q,{K},params=p)[1].tolist()))")
    def add(index, x: np.ndarray, _start: int) -> None:
        faiss.omp_set_num_threads(1)
        index.add(x)

    return Lib("faiss HNSWFlat", build, add, search, lambda i, p: faiss.write_index(i, p), load,
               view, code)


def hnswlib_lib(threads: int) -> Lib:
    import hnswlib

    def build(x: np.ndarray, capacity: int):
        index = hnswlib.Index(space="ip", dim=DIM)
        index.init_index(max_elements=capacity, ef_construction=EF_CONSTRUCTION, M=M)
        index.add_items(x, np.arange(len(x)), num_threads=threads)
        return index

    def add(index, x: np.ndarray, start: int) -> None:
        if index.get_current_count() + len(x) > index.get_max_elements():
            index.resize_index(index.get_current_count() + len(x))
        index.add_items(x, np.arange(start, start + len(x)), num_threads=1)

    def search(index, q: np.ndarray, ef: int) -> np.ndarray:
        index.set_ef(ef)
        return index.knn_query(q, k=K, num_threads=1)[0]

    def load(path: str, n: int):
        index = hnswlib.Index(space="ip", dim=DIM)
        index.load_index(path, max_elements=n)
        return index

    code = (f"import hnswlib,numpy as np,json,sys; i=hnswlib.Index(space='ip',dim={DIM}); i.load_index(sys.argv[1]); "
            "i.set_ef(int(sys.argv[3])); q=np.load(sys.argv[2]); "
            f"print(json.dumps(i.knn_query(q,k={K},num_threads=1)[0].tolist()))")
    return Lib("hnswlib", build, add, search, lambda i, p: i.save_index(p), load, None, code)


def usearch_lib(threads: int, dtype: str) -> Lib:
    from usearch.index import Index

    def make() -> Index:
        return Index(ndim=DIM, metric="ip", dtype=dtype, connectivity=M, expansion_add=EF_CONSTRUCTION)

    def build(x: np.ndarray, _n: int):
        index = make()
        index.add(np.arange(len(x)), x, threads=threads)
        return index

    def search(index, q: np.ndarray, ef: int) -> np.ndarray:
        index.expansion_search = ef
        return index.search(q, K, threads=1).keys

    def load(path: str, _n: int):
        index = make()
        index.load(path)
        return index

    def view(path: str, _n: int):
        index = make()
        index.view(path)
        return index

    code = ("from usearch.index import Index; import numpy as np,json,sys; "
            "i=Index.restore(sys.argv[1], view=True); i.expansion_search=int(sys.argv[3]); q=np.load(sys.argv[2]); "
            f"print(json.dumps(np.asarray(i.search(q,{K},threads=1).keys).tolist()))")
    return Lib(f"usearch {dtype}", build,
               lambda i, x, start: i.add(np.arange(start, start + len(x)), x, threads=1), search,
               lambda i, p: i.save(p), load, view, code)


def latencies(lib: Lib, index, queries: np.ndarray, truth: np.ndarray, ef: int) -> tuple[dict, np.ndarray]:
    """Single-query latency percentiles and recall@10 at one search beam; also the ids found."""
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids = lib.search(index, q[None], ef)
        lat.append(time.perf_counter() - t)
        found.append(np.asarray(ids).reshape(-1)[:K])
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / K for f, g in zip(found, truth)]))
    ms = np.asarray(lat) * 1000
    return ({"ef": ef, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
             "recall@10": recall}, np.stack(found))


def measure(lib: Lib, data: np.ndarray, extra: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            efs: list[int], folder: Path) -> list[dict]:
    """One row per search beam; build, file and add figures are the same on every row of a library."""
    n = len(data)
    gc.collect()
    t = time.perf_counter()
    index = lib.build(data, n + len(extra))
    build_s = time.perf_counter() - t
    searched = [latencies(lib, index, queries, truth, ef) for ef in efs]
    found = searched[0][1][:20]

    path = str(folder / f"{lib.name.replace(' ', '_')}.index")
    lib.save(index, path)
    size = os.path.getsize(path)
    t = time.perf_counter()
    for i in range(0, len(extra), 5):
        lib.add(index, extra[i : i + 5], n + i)
    add_s = time.perf_counter() - t
    del index
    gc.collect()

    t = time.perf_counter()
    loaded = lib.load(path, n + len(extra))
    load_s = time.perf_counter() - t
    same = np.array_equal(np.asarray(lib.search(loaded, queries[:20], efs[0])), found)
    del loaded
    view_s: float | str | None = None
    if lib.view is not None:
        try:
            t = time.perf_counter()
            viewed = lib.view(path, n)
            view_s = time.perf_counter() - t
            del viewed
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            view_s = f"no ({type(e).__name__})"
    qfile = folder / "queries.npy"
    np.save(qfile, queries[:20])
    out = subprocess.run([sys.executable, "-c", lib.reload_code, path, str(qfile), str(efs[0])],
                         capture_output=True, text=True)
    fresh = out.returncode == 0 and np.array_equal(np.asarray(json.loads(out.stdout)), found)
    os.remove(path)
    common = {"lib": lib.name, "build_per_s": n / build_s, "build_s": build_s, "file_mb": size / 1e6,
              "add_per_s": len(extra) / add_s, "load_s": load_s, "mmap_s": view_s,
              "same_after_load": bool(same), "fresh_process": bool(fresh)}
    return [{**common, **row} for row, _ in searched]


def exact_row(data: np.ndarray, queries: np.ndarray) -> dict:
    lat = []
    for q in queries[:100]:
        t = time.perf_counter()
        s = data @ q
        np.argpartition(-s, K)[:K]
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1000
    return {"lib": "numpy exact", "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "recall@10": 1.0, "file_mb": data.nbytes / 1e6}


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--libs", default="faiss,hnswlib,usearch,usearch-f16")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ef", default="64,128", help="search beams (efSearch / expansion_search), comma-separated")
    ap.add_argument("--threads", type=int, default=2, help="threads for building")
    ap.add_argument("--data", choices=("clustered", "gaussian"), default="clustered")
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    args = ap.parse_args()
    efs = [int(e) for e in args.ef.split(",")]
    makers = {"faiss": lambda: faiss_lib(args.threads), "hnswlib": lambda: hnswlib_lib(args.threads),
              "usearch": lambda: usearch_lib(args.threads, "f32"),
              "usearch-f16": lambda: usearch_lib(args.threads, "f16")}
    cols = ["lib", "ef", "build_per_s", "build_s", "p50_ms", "p99_ms", "recall@10", "file_mb", "add_per_s", "load_s",
            "mmap_s", "fresh_process"]
    shape = Shape(args.data)
    print(f"{os.cpu_count()} cores, dim {DIM}, {args.data} data, M={M} efConstruction={EF_CONSTRUCTION} "
          f"efSearch {args.ef}, build threads {args.threads}, queries one at a time on one thread", flush=True)
    for n in [int(s) for s in args.sizes.split(",")]:
        t = time.perf_counter()
        data = shape.sample(n, 1)
        extra = shape.sample(max(100, n // 100), 2)
        queries = shape.sample(args.queries, 3)
        truth = exact_top(data, queries)
        print(f"\n## {n:,} vectors ({data.nbytes / 1e6:,.0f} MB; data + ground truth {time.perf_counter() - t:.1f} s;"
              f" incremental add of {len(extra):,}; load average {os.getloadavg()[0]:.1f})", flush=True)
        rows = [exact_row(data, queries)]
        if not args.json:
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            print("| " + " | ".join(fmt(rows[0].get(c)) for c in cols) + " |", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.libs.split(","):
                for row in measure(makers[name](), data, extra, queries, truth, efs, Path(tmp)):
                    row["n"] = n
                    rows.append(row)
                    if args.json:
                        print(json.dumps(row), flush=True)
                    else:
                        print("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |", flush=True)
        del data, extra, truth
        gc.collect()


if __name__ == "__main__":
    main()
