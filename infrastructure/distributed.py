"""
Data-parallel runs with torchrun: `torchrun --nproc_per_node=N script.py ...` starts N copies of a script,
one per GPU (or N CPU processes with gloo). Every rank starts from rank 0's weights (`broadcast_parameters`),
takes its share of a step's data (`shard`), divides its loss by counts summed over the ranks (`all_sum`), and
after backward the gradients are summed over the ranks (`all_reduce_gradients`): the sum is then the gradient
one process would compute on the whole step. Without torchrun, world_size() is 1 and every helper here does
nothing or returns its input: a single process never touches torch.distributed.
"""
import atexit
import os

import torch
import torch.distributed as dist


def setup(device=None) -> torch.device:
    """The device to run on. Under torchrun also join the process group: NCCL and one GPU per rank, or gloo on CPU."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (cpu or cuda)") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device {device} is not available here (cpu{' or cuda' * torch.cuda.is_available()})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(leave)
    return device


def leave():
    """At exit: wait for every rank, then tear the process group down. A rank that leaves while another
    still talks to it makes gloo abort (SIGABRT) at shutdown."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(items: list) -> list:
    """This rank's share of `items`: every world_size-th item from its rank on (all of them in one process)."""
    return items[rank()::world_size()]


def gather(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    if world_size() == 1:
        return items
    pieces = [None] * world_size()
    dist.all_gather_object(pieces, items)
    return [item for piece in pieces for item in piece]


def all_sum(value):
    """`value` summed over the ranks: the global count that a loss or a statistic is divided by."""
    return sum(gather([value]))


def barrier():
    """Wait for every rank (rank 0 saving a checkpoint, say)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_parameters(model: torch.nn.Module):
    """Every parameter set to rank 0's value, as DDP does when it wraps a model: ranks start equal."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for parameter in model.parameters():
            dist.broadcast(parameter.data, src=0)


def all_reduce_gradients(parameters: list, bucket_bytes: int = 2**25):
    """Sum each parameter's gradient over the ranks (a rank with no data contributes zeros). The gradients
    travel in flat buckets of about 32 MiB: one collective call per bucket, not per tensor."""
    if world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    bucket, size = [], 0
    for index, parameter in enumerate(parameters):
        bucket.append(parameter.grad)
        size += parameter.grad.numel() * parameter.grad.element_size()
        if size >= bucket_bytes or index == len(parameters) - 1:
            flat = torch.cat([gradient.reshape(-1) for gradient in bucket])
            dist.all_reduce(flat)
            offset = 0
            for gradient in bucket:
                gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
                offset += gradient.numel()
            bucket, size = [], 0
