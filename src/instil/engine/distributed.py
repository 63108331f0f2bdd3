"""Data-parallel training under `torchrun`: one process per device, PyTorch's own
DistributedDataParallel, nothing home-made.

What each rank does, and why:
- it trains on its own shard of every epoch's order (the order is the same on all ranks, so
  the shards are disjoint and cover the part); the global batch is the per-rank batch times
  the world size;
- it wraps the method's loss in one module (`LossModule`) around the trainable module, so
  that DDP sees every forward of every method, whatever its loss does inside;
- it draws its own randomness for training (dusting noise, mixing) but the same for what
  must be identical everywhere (initialisation, exemplar choices, EMA), so the teacher and
  every memory stay the same on every rank; at each epoch's end the trainable module's
  buffers (BatchNorm statistics, which each rank updated on its shard) are broadcast from
  rank 0 before the method's epoch hooks (KC-EMA) read them;
- evaluation is sharded and the predictions gathered, so every rank computes the same metrics;
- only rank 0 writes files and prints.
A digest of the deployed model is compared across ranks after every phase: replicas that
drifted apart stop the run instead of producing silently different models.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from instil.errors import InstilError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_world = World()


def world() -> World:
    """This process's place in the job (a single process unless launched by torchrun)."""
    return _world


def start(device_type: str) -> World:
    """Joins the torchrun job described by the environment, if there is one."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _world = World()
        return _world
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        # NCCL's object collectives work on the current device: it must be the rank's own.
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    return _world


def stop() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


class LossModule(nn.Module):
    """The trainable module with the method's loss as its forward, for DDP to wrap: the
    method's forwards run inside DDP's forward, so its gradient hooks see all of them."""

    def __init__(self, trainable: nn.Module, loss) -> None:
        super().__init__()
        self.trainable = trainable
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(x, y)


def data_parallel(module: nn.Module, loss, device: torch.device,
                  unused_parameters: bool) -> nn.Module:
    """`unused_parameters`: the method may leave part of its trainable module out of a step
    (DDP must then look for them, an extra walk of the graph every step)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(module, loss), device_ids=ids,
                                   find_unused_parameters=unused_parameters)


Swapped = list[tuple[nn.Module, str, nn.Module]]


def to_sync_batchnorm(module: nn.Module) -> Swapped:
    """Puts a SyncBatchNorm in place of every BatchNorm inside `module`, sharing its
    parameters and buffers (so the optimiser and the method keep theirs); returns what
    `from_sync_batchnorm` puts back, so that no SyncBatchNorm outlives the phase (the
    deployed model, its checkpoint and the next phase's teacher keep plain BatchNorm)."""
    swapped: Swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or \
                    isinstance(child, nn.SyncBatchNorm):
                continue
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum,
                                    child.affine, child.track_running_stats)
            sync.weight, sync.bias = child.weight, child.bias
            sync.running_mean, sync.running_var = child.running_mean, child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(parent, name, sync)
            swapped.append((parent, name, child))
    return swapped


def from_sync_batchnorm(swapped: Swapped) -> None:
    for parent, name, original in swapped:
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank."""
    if world().distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if world().distributed:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of every rank's `tensor` (itself when alone): one collective."""
    if world().distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value):
    """Rank 0's value of a picklable object on every rank."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_interleaved(local: torch.Tensor, total: int) -> torch.Tensor:
    """The inverse of taking order[rank::size]: every rank's slice put back in place."""
    w = world()
    if not w.distributed:
        return local
    parts: list = [None] * w.size
    dist.all_gather_object(parts, local.cpu())
    out = torch.empty(total, dtype=local.dtype)
    for rank, part in enumerate(parts):
        out[rank::w.size] = part
    return out


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_replicas(module: nn.Module, what: str) -> str:
    """Under torchrun, the module's digest, which every rank must share or the run stops."""
    w = world()
    if not w.distributed:
        return ""
    mine = digest(module)
    digests: list = [None] * w.size
    dist.all_gather_object(digests, mine)
    if len(set(digests)) > 1:
        raise InstilError(f"{what}: the ranks' models differ ({', '.join(digests)}); "
                          "a method keeps rank-dependent state (report it)")
    return mine


def check_same(value, what: str) -> None:
    """Every rank must hold the same (picklable) value, or the run stops."""
    w = world()
    if w.distributed:
        values: list = [None] * w.size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise InstilError(f"{what} differs between the ranks ({values}); delete the run "
                              "folder's state/ files of it to restart that method and seed")


def barrier() -> None:
    if world().distributed:
        dist.barrier()
