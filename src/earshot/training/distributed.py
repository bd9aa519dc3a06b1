"""Multi-process training (`earshot train --devices N`): torchrun launches N processes that train one model with
DistributedDataParallel (gloo on CPU, NCCL with one GPU per process).

`launch` runs `torchrun --standalone --nproc-per-node N -m earshot.training.distributed SPEC.json`; every process
runs the same `fit` (same manifest, split, seed and batch order), `train` on rank 0 only, so only rank 0 exports
and writes the bundle. The transfer features are computed once: rank 0 fills the on-disk cache while the others
wait (`primary_first`), then they read it. In the training loops each rank takes its share of every batch
(`part`), its loss weighted so that the averaged gradient is the whole batch's (`weight`); validation runs on
every rank with the same weights and rank 0's decision to stop is the one all ranks follow (`agree`).

Outside torchrun every helper is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from earshot import cores
from earshot.errors import DataError, EarshotError

TIMEOUT = datetime.timedelta(hours=6)  # a barrier waits this long for rank 0 (features of a large data set)
BACKEND_ENV = "EARSHOT_DDP_BACKEND"


def backend() -> str:
    """The process group's backend: `$EARSHOT_DDP_BACKEND`, else NCCL with CUDA (one GPU per process) and gloo on
    the CPU. gloo with CUDA lets several processes share GPUs (process i on GPU i mod count)."""
    return os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")


def active() -> bool:
    """Whether this process is one of several training together."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_primary() -> bool:
    return rank() == 0


@contextlib.contextmanager
def primary_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling a cache), the other ranks after it (reading the cache)."""
    import torch.distributed as dist

    if not active():
        yield
        return
    if not is_primary():
        dist.barrier()
    yield
    if is_primary():
        dist.barrier()


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when training with several processes, else `model` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=ids)


def part(size: int) -> slice:
    """This rank's share of a batch of `size` that every rank holds: every world-th element (a view, no copy);
    the whole batch with one process, or when the batch has fewer elements than ranks."""
    n = world()
    return slice(None) if n == 1 or size < n else slice(rank(), None, n)


def weight(local: int, total: int) -> float:
    """Factor on a rank's mean loss over `local` of the batch's `total` elements so that DDP's average of the
    ranks' gradients is the gradient of the whole batch's mean loss."""
    n = world()
    if n == 1 or total < n:
        return 1.0
    return local * n / total


def agree(flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (stopping decisions must be the same everywhere)."""
    if not active():
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so validation scores the same model."""
    if not active():
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, 0)


def describe() -> dict[str, Any] | None:
    """What the card records of a multi-process run: processes and backend (None for one process)."""
    if not active():
        return None
    import torch.distributed as dist

    return {"processes": world(), "backend": dist.get_backend(), "launcher": "torchrun (DistributedDataParallel)"}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def launch(devices: int, data: str | Path, out: str | Path, *, quiet: bool = False, name: str | None = None,
           **options: Any) -> Path:
    """Train with `devices` processes under torchrun (one GPU each when CUDA is there, else CPU processes sharing
    the cores); returns the bundle directory written by rank 0. `options` are those of `earshot.train`."""
    if devices < 2:
        raise DataError("--devices launches at least 2 processes", reason="bad_option")
    if options.get("finetune"):
        raise DataError("--finetune trains in one process; leave out --devices", reason="bad_option")
    if options.get("pooling") or str(data).endswith((".h5", ".hdf5", ".npz")):
        raise DataError("--devices trains the single-label families (transfer, cnn)", reason="bad_option")
    if str(data).startswith("s3://") or str(out).startswith("s3://"):
        raise DataError("--devices reads and writes local folders (copy s3:// data first)", reason="bad_option")
    if not options.get("synthesize") and not options.get("words"):  # data errors reported here, not N times
        from earshot.training.loading import load_manifest

        load_manifest(data, label_regex=options.get("label_regex"), group_regex=options.get("group_regex"),
                      filters=options.get("filters") or ())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and devices > gpus and backend() == "nccl":
        raise DataError(f"--devices {devices} but only {gpus} GPUs (NCCL needs one each; "
                        f"{BACKEND_ENV}=gloo shares them)", reason="bad_option")
    spec = {"data": str(data), "out": str(out), "quiet": quiet, "name": name,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    env = dict(os.environ)
    if not gpus and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, cores.usable() // devices))  # CPU processes share the cores
    with tempfile.TemporaryDirectory(prefix="earshot-ddp-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
               "-m", "earshot.training.distributed", str(path)]
        r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        raise DataError(f"distributed training failed (torchrun exited with {r.returncode})", reason="ddp_failed")
    return Path(out)


def _feature_lines(event: dict[str, Any]) -> None:
    """What the other ranks say: only where their transfer features came from (rank 0 computed them)."""
    if event.get("stage") == "features" and "cached" in event:
        print(f"[rank {rank()}] {event['message']}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """One torchrun process: join the group, run `fit` (rank 0: `train`, which exports), leave the group."""
    import torch.distributed as dist

    from earshot.training.families import fit, train

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend(), timeout=TIMEOUT)
    try:
        if is_primary():
            train(spec["data"], spec["out"], quiet=spec["quiet"], name=spec["name"], **spec["options"])
        else:
            accepted = inspect.signature(fit).parameters
            fit(spec["data"], quiet=True, progress=None if spec["quiet"] else _feature_lines,
                **{k: v for k, v in spec["options"].items() if k in accepted})
    except EarshotError as e:
        print(f"earshot: rank {rank()}: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
