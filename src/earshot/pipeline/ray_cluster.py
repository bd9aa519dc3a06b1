"""What the Ray engine needs from a cluster: a connection, the size of its actor pool, the model bundle on every
node, and the execution provider of each actor.

The driver resolves the model once (a registry name, a bundle directory or an `s3://` bundle) and puts the
bundle's files in Ray's object store; each actor writes them to a folder of its node keyed by their digest and
loads the bundle from there. So no node needs the registry's weights, torch, the driver's file system or the
model bucket's credentials. Nothing here imports Ray at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earshot.bundle import CARD_FILE, is_bundle, read_bundle

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


@contextlib.contextmanager
def connected(address: str | None, local_cpus: int) -> Iterator[bool]:
    """Ray initialised for the duration: the cluster at `address` (`HOST:PORT` or `auto`), else a local Ray of
    `local_cpus` CPUs; a Ray already initialised by the caller is used as it is and left running. Yields whether
    this call connected (and will disconnect)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=max(1, local_cpus), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        yield True
    finally:
        ray.shutdown()


def pool_size(workers: int, num_cpus: float, num_gpus: float) -> int:
    """Actors to start: `workers` when given, else as many as the cluster's CPUs (or GPUs, when each actor asks
    for some) can hold at once."""
    if workers > 0:
        return workers
    import ray

    total = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, int(total.get("GPU", 0) // num_gpus))
    return max(1, int(total.get("CPU", 1) // max(num_cpus, 1e-9)))


@dataclass(frozen=True)
class ShippedBundle:
    """A model bundle in Ray's object store: `files` is an ObjectRef of {file name: bytes}."""

    name: str
    digest: str
    files: Any


def bundle_dir(model: Any) -> Path:
    """The local bundle directory of `model`: a Classifier's own bundle, a bundle path, an `s3://` bundle
    (fetched) or a registry name (built once from its weights)."""
    bundle = getattr(model, "bundle", None)
    if bundle is not None:
        return Path(bundle.path)
    from earshot.models import resolve

    return resolve(os.fspath(model) if model is not None else "mn04-as")


def ship_bundle(model: Any) -> ShippedBundle:
    """Put the bundle of `model` (see `bundle_dir`) into the object store of the connected cluster."""
    import json

    import ray

    path = bundle_dir(model)
    files = {name: (path / name).read_bytes() for name in read_bundle(path).files}
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    name = json.loads(files[CARD_FILE]).get("name", path.name)
    return ShippedBundle(name, h.hexdigest()[:32], ray.put(files))


def node_cache() -> Path:
    """Where shipped bundles are kept on a node: `$EARSHOT_HOME/models/shipped`, or the temp folder when that
    cannot be written."""
    from earshot.models.weights import earshot_home

    root = earshot_home() / "models" / "shipped"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / "earshot-shipped"
    root.mkdir(parents=True, exist_ok=True)
    return root


def materialize(shipped: ShippedBundle) -> Path:
    """The shipped bundle as a directory on this node (written once per digest, atomically)."""
    import ray

    dest = node_cache() / shipped.digest
    if is_bundle(dest):
        return dest
    files: dict[str, bytes] = ray.get(shipped.files)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shipped.digest}.", dir=dest.parent))
    try:
        for name, data in files.items():
            (tmp / Path(name).name).write_bytes(data)
        try:
            os.replace(tmp, dest)
        except OSError:  # another actor of this node got there first
            if not is_bundle(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def actor_providers() -> list[str]:
    """onnxruntime execution providers for this actor: CUDA first when Ray gave it a GPU and onnxruntime-gpu is
    installed, else the CPU."""
    import onnxruntime as ort
    import ray

    if ray.get_gpu_ids() and CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]
