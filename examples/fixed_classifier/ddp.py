"""Data-parallel training with ``torch.distributed`` (DDP, gloo backend, processes on one
machine): the fixed heads train correctly across processes, and the gradient that DDP
all-reduces every step loses the C x N weight of the learned head (the paper's JFT-300M
argument). Bytes are measured, not computed: a DDP communication hook adds up the gradient
buckets it all-reduces, and on Linux the loopback interface's transmit counter gives every
byte the processes exchanged (both ranks, TCP headers included).

Global batches are identical to the single-process run's (same :func:`batch_order`); each
rank takes an equal share, so with equal shares DDP's averaged gradient equals the
single-process gradient of the whole batch (tests/test_examples.py checks this).
"""

import inspect
import itertools
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from .data import Split
from .models import count_parameters
from .train import RunConfig, batch_order, build_model, evaluate, make_optimizer


@dataclass(frozen=True)
class DDPConfig:
    run: RunConfig  # batch_size is the global batch, split equally over the processes
    # DDP's default: broadcast every module buffer from rank 0 before each forward. The
    # orthogonal head's fixed C x N matrix is a buffer, so it travels every step unless off.
    forward_sync_buffers: bool = True
    max_steps: int | None = None  # stop early: communication-only measurements


@dataclass
class DDPResult:
    config: dict
    steps: int
    params_trainable: int
    grad_bytes_per_step: float  # measured: gradient buckets all-reduced (comm hook)
    allreduce_calls_per_step: float
    buffer_bytes_per_step: int  # bytes of the module buffers DDP broadcasts before each forward
    loopback_bytes_per_step: float | None  # measured: loopback transmit counter, both ranks
    step_ms: float
    wall_s: float
    test_acc: float | None
    replica_max_abs_diff: float  # largest difference of any parameter/buffer between ranks
    state: dict = field(default_factory=dict, repr=False)  # rank 0's final state_dict


@dataclass
class _CommStats:
    bytes: int = 0
    calls: int = 0


def _counting_allreduce(stats: _CommStats, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    # (No `from __future__ import annotations` in this module: DDP checks these annotations.)
    """DDP's own all-reduce hook, counting the bytes of each gradient bucket first."""
    buf = bucket.buffer()
    stats.bytes += buf.numel() * buf.element_size()
    stats.calls += 1
    return default_hooks.allreduce_hook(None, bucket)


def loopback_tx_bytes() -> int | None:
    """Bytes sent on the loopback interface since boot (Linux /proc/net/dev), else None."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])  # receive: 8 fields, then transmit bytes
    return None


def _ddp_kwargs(sync_buffers: bool) -> dict:
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": sync_buffers}
    return {"broadcast_buffers": sync_buffers}


def _train_rank(rank: int, world: int, cfg: DDPConfig, train: Split, test: Split | None) -> DDPResult:
    run = cfg.run
    device = torch.device("cpu")
    model = build_model(run, device)
    ddp = DDP(model, **_ddp_kwargs(cfg.forward_sync_buffers))
    stats = _CommStats()
    ddp.register_comm_hook(stats, _counting_allreduce)
    steps_per_epoch = -(-len(train) // run.batch_size)
    opt, sched = make_optimizer(ddp, run, run.epochs * steps_per_epoch)
    batches = (idx for epoch in range(run.epochs) for idx in batch_order(len(train), run.batch_size, run.seed, epoch))
    step = 0
    dist.barrier()
    lo_start, start = loopback_tx_bytes(), time.perf_counter()
    for idx in itertools.islice(batches, cfg.max_steps):
        keep = len(idx) // world * world  # equal shares: DDP's mean = the batch mean
        if keep == 0:
            continue
        local = idx[:keep].view(world, -1)[rank]
        loss = F.cross_entropy(ddp(train.images[local]), train.labels[local])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
    dist.barrier()
    wall, lo_end = time.perf_counter() - start, loopback_tx_bytes()

    flat = torch.cat([t.detach().reshape(-1).double() for t in model.state_dict().values()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    diff = max((g - gathered[0]).abs().max().item() for g in gathered)
    steps = max(step, 1)
    return DDPResult(
        config={**asdict(cfg), "world_size": world},
        steps=step,
        params_trainable=count_parameters(model)[0],
        grad_bytes_per_step=stats.bytes / steps,
        allreduce_calls_per_step=stats.calls / steps,
        buffer_bytes_per_step=sum(b.numel() * b.element_size() for b in model.buffers())
        if cfg.forward_sync_buffers else 0,
        loopback_bytes_per_step=None if lo_start is None or lo_end is None else (lo_end - lo_start) / steps,
        step_ms=1e3 * wall / steps,
        wall_s=wall,
        test_acc=evaluate(model, test, run.classes, device)[0] if test is not None and rank == 0 else None,
        replica_max_abs_diff=diff,
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


Job = tuple[DDPConfig, Split, Split | None]  # (config, training data, test data or None)


def _worker(rank: int, world: int, jobs: list[Job], threads: int, tmp: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        results = [_train_rank(rank, world, cfg, train, test) for cfg, train, test in jobs]
        if rank == 0:
            torch.save(results, Path(tmp) / "results.pt")
    finally:
        dist.destroy_process_group()


def ddp_run(jobs: list[Job], world_size: int = 2, threads: int = 1) -> list[DDPResult]:
    """Run each job, in order, with ``world_size`` CPU processes (gloo; one process group,
    started once) of ``threads`` torch threads each, and return rank 0's measurements.
    A job's test data, when given, is evaluated on rank 0 after its training."""
    if world_size < 1:
        raise ValueError(f"ddp_run: world_size must be >= 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="fixed_classifier_ddp_") as tmp:
        mp.spawn(_worker, args=(world_size, jobs, threads, tmp), nprocs=world_size, join=True)
        return torch.load(Path(tmp) / "results.pt", weights_only=False)
