"""Process group, device and model wrapping for torchrun (DDP or FSDP; gloo on CPU, NCCL on GPU).

Without torchrun's environment (``RANK``/``WORLD_SIZE``) the trainer runs as a
single process with no process group, and every collective here is a no-op.

Every rank prints one ``[dist]`` line once it has joined (training.progress.rank_line), in
rank order, so a runbook can gate on each rank's start-up, not only on rank 0's log.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.config import RuntimeConfig
from training.policy import transformer_blocks
from training.progress import rank_line


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and tracking."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.backend is not None:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor (in place; returned for chaining)."""
        if self.backend is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (in place; returned for chaining)."""
        if self.backend is not None:
            self.all_reduce_sum(tensor)
            tensor /= self.world_size
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (small, picklable), in rank order, on every rank."""
        if self.backend is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self, clean: bool = False) -> None:
        """Tear the process group down. After a clean end every rank first meets the others: a rank that tears down
        while a peer's gloo threads still finish work with it can die at exit in C++ (`terminate called without an
        active exception`, SIGABRT: seen once in CI on a run that had saved its last checkpoint). Not after a
        failure: a peer that died would never come, and torchrun ends the survivors anyway."""
        if self.backend is not None and dist.is_initialized():
            if clean:
                with contextlib.suppress(RuntimeError):  # a peer gone after all: nothing left to wait for
                    dist.barrier()
            dist.destroy_process_group()


def pick_device(runtime: RuntimeConfig, local_rank: int) -> torch.device:
    """cuda:<local_rank> when CUDA is asked for or available (auto), else cpu."""
    want_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device=cuda but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launched_by_torchrun(env: Mapping[str, str]) -> bool:
    """Whether this process is a rank of a torchrun job, and so joins a process group. torchrun sets MASTER_ADDR
    even for one process (``--nproc_per_node=1``, the one-GPU box): WORLD_SIZE alone cannot tell."""
    return int(env.get("WORLD_SIZE", "1")) > 1 or "MASTER_ADDR" in env


def init_distributed(runtime: RuntimeConfig) -> DistContext:
    """Join torchrun's process group (if launched by torchrun) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(runtime, local_rank)
    if not launched_by_torchrun(os.environ):
        ctx = DistContext(0, 1, 0, device, None)
    else:
        backend = runtime.backend if runtime.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
        ctx = DistContext(rank, world_size, local_rank, device, backend)
    announce(ctx)
    return ctx


def announce(ctx: DistContext) -> None:
    """Each rank prints its ``[dist]`` line in turn: a barrier after each, so rank r's line precedes rank r+1's."""
    line = rank_line(ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device), ctx.backend, socket.gethostname(),
                     os.getpid(), multicast_off(os.environ))
    for turn in range(ctx.world_size):
        if turn == ctx.rank:
            print(line, flush=True)  # flushed before the barrier: the shared stdout keeps rank order
        ctx.barrier()


# NVLink SHARP / multicast (NVLS) off in NCCL, PyTorch's symmetric memory and NVSHMEM: on shared
# multi-GPU hosts a program using multicast can take the host's GPUs out of service.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def multicast_off(env: Mapping[str, str]) -> bool:
    """Whether all three switches that keep NVLink multicast off are set in ``env``."""
    return all(env.get(name) == value for name, value in MULTICAST_OFF.items())


def wrap_model(policy: nn.Module, ctx: DistContext, runtime: RuntimeConfig, bf16: bool, manual_sync: bool) -> nn.Module:
    """The module the loop calls: the policy itself, DDP around it, or the policy sharded in place by FSDP2.

    ``manual_sync``: gradients are all-reduced by the caller (CRaFT needs both of
    its gradients whole before they are combined), so no DDP wrapper.
    """
    if ctx.backend is None or manual_sync or ctx.world_size == 1:
        return policy  # one process: DDP would only add a bucket copy per step
    if runtime.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for unit in transformer_blocks(policy):  # one block's full weights at a time
            fully_shard(unit, mp_policy=mp)
        fully_shard(policy, mp_policy=mp)
        return policy
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # gradient_as_bucket_view: grads alias the all-reduce buckets, one copy less per step.
    return DDP(policy, device_ids=device_ids, find_unused_parameters=runtime.find_unused_parameters,
               gradient_as_bucket_view=True)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches that are not the last."""
    if sync:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield
