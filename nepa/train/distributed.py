"""torch.distributed from the environment that SLURM/submitit or torchrun provide."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nepa.errors import NepaError


class LaunchError(NepaError):
    """The process layout does not match the run config."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(expected_world_size: int, timeout_s: int) -> DistEnv:
    """Initialise the process group from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT.

    Fails fast when the world size is not nodes x processes-per-node; never falls back
    silently to a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != expected_world_size:
        raise LaunchError(
            f"world size is {world} (WORLD_SIZE) but the run expects {expected_world_size} "
            "(train.nodes x train.procs_per_node); launch one process per device or fix the config"
        )
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", cuda_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise LaunchError(f"{', '.join(missing)} not set for a {world}-process run; launch "
                              "through nepactl, submitit or torchrun")
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=rank, world_size=world,
            # Binds the group to this device: NCCL connects eagerly and barriers use it (without
            # it a barrier guesses the device from the rank and can hang on a shared GPU).
            device_id=device if device.type == "cuda" else None,
        )
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device of this process among the `visible` ones.

    Two layouts: every task of a node sees all its GPUs (torchrun, srun without GPU binding):
    device `local_rank`; or each task sees only its own GPU (srun --gpu-bind, gpus_per_task,
    one CUDA_VISIBLE_DEVICES entry per task): device 0 whatever the local rank.
    """
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise LaunchError(
        f"local rank {local_rank} but only {visible} GPUs are visible to this process; launch "
        "one process per GPU (cluster.tasks_per_node = cluster.gpus_per_node)")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world_size
    return value


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True when `flag` is set on any rank (the ranks agree on stop requests)."""
    if not env.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_objects(obj, env: DistEnv) -> list:
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env: DistEnv):
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
