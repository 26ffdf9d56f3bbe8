"""Processes, devices and model wrapping: one process, DDP, or FSDP2 (`fully_shard`), kept outside the model.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; the process group uses NCCL on GPUs and gloo on CPUs. Checkpoints are
always written as full (unsharded) state dicts by rank 0, so a single process loads any run's checkpoint. Under
FSDP the functions that gather or scatter state are collectives: every rank calls them, in the same order.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from robofm.errors import UsageError
from robofm.train.config import TrainerConfig


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("trainer.device=cuda but no CUDA device is available: use trainer.device=cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init(trainer: TrainerConfig) -> Dist:
    """Join the process group when launched by torchrun (strategy ddp or fsdp)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.strategy not in ("single", "ddp", "fsdp"):
        raise UsageError(f"trainer.strategy must be single, ddp or fsdp, not {trainer.strategy!r}")
    if trainer.strategy == "single" and world > 1:
        raise UsageError(f"launched with WORLD_SIZE={world} but trainer.strategy=single: use trainer=ddp or fsdp")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(trainer.device, local)
    if trainer.strategy == "single":
        return Dist(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def wrap(model: nn.Module, trainer: TrainerConfig, d: Dist) -> nn.Module:
    """The module the training step calls: the model itself, DDP around it, or the model sharded in place (FSDP2:
    each transformer block is one all-gather unit, the root holds embeddings and heads)."""
    if trainer.compile:
        model.compile()
    if trainer.strategy == "ddp" and d.distributed:  # not static_graph: it breaks no_sync (pytorch/pytorch#187732)
        return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if trainer.strategy == "fsdp" and d.distributed:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        with torch.no_grad():  # shards are cut from each rank's copy: make the copies rank 0's (DDP does the same)
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
        mesh = init_device_mesh(d.device.type, (d.world_size,))
        for block in model.backbone.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Within it, backward all-reduces (DDP) or reduce-scatters (FSDP2) the gradients only when `enabled`: the
    micro-batches of an accumulated step before the last one keep their gradients local."""
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    if enabled or not (ddp or _sharded(model)):
        yield
    elif ddp:
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def autocast(precision: str, device: torch.device):
    """The context forward runs in: none for fp32, bf16 autocast for bf16 (`auto` is resolved before, by
    robofm.train.precision.resolve_precision)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise UsageError(f"autocast takes a resolved precision, fp32 or bf16, not {precision!r}")


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _sharded(model: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients to a total 2-norm of max_norm; returns the norm before clipping, the same on every rank.
    Under FSDP the gradients are shards (DTensors): the norm of the shards is a partial sum that full_tensor()
    reduces across ranks before it is read."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if _is_dtensor(norm):
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(model: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """Unsharded weights on the CPU (every rank must call this under FSDP; rank 0 gets them)."""
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into the model, sharded or not (every rank calls it with the same weights)."""
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(weights)


def full_tensors(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The same tensors unsharded on the CPU (e.g. an EMA kept as shards of the FSDP parameters; every rank calls
    it under FSDP)."""
    if tensors is None:
        return None
    return {k: (v.full_tensor() if _is_dtensor(v) else v).detach().cpu() for k, v in tensors.items()}


def shard_like(tensors: dict[str, torch.Tensor] | None, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full tensors (e.g. an EMA read from a checkpoint) placed like the model's state dict: sharded where the
    model's entries are DTensors, on the model's device otherwise."""
    if tensors is None:
        return None
    from torch.distributed.tensor import distribute_tensor

    current = model.state_dict()
    return {k: distribute_tensor(v.to(current[k].device_mesh.device_type), current[k].device_mesh,
                                 current[k].placements) if _is_dtensor(current[k]) else v.to(current[k].device)
            for k, v in tensors.items()}  # fmt: skip


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimizer's numbering (group after group)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _relabel(state: dict, label: dict) -> dict:
    """An optimizer state dict with its parameter keys (numbers or names) replaced through `label`."""
    return {"state": {label[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [label[k] for k in g["params"]]} for g in state["param_groups"]]}  # fmt: skip


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> dict:
    """The optimizer state, unsharded on the CPU and keyed by parameter name whatever the strategy (the form
    torch.distributed.checkpoint gives a sharded model), so any run resumes any other's checkpoint. Under FSDP
    every rank calls it; rank 0 gets the state, the others an empty dict."""
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return _relabel(optimizer.state_dict(), dict(enumerate(_param_names(model, optimizer))))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, d: Dist) -> None:
    """Load a full optimizer state keyed by parameter name (or numbered, as optimizer.state_dict() writes it)
    into the optimizer of a sharded or unsharded model (every rank calls it with the same state)."""
    names = _param_names(model, optimizer)
    numbered = any(isinstance(k, int) for g in state["param_groups"] for k in g["params"])
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = _relabel(state, dict(enumerate(names))) if numbered else state
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state if numbered else _relabel(state, {n: i for i, n in enumerate(names)}))


def mean_across(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The mean of each value over the processes (every process gets it)."""
    if not d.distributed:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world_size).tolist(), strict=True))


def memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def finish(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj, d: Dist):
    """Rank 0's value of a picklable object, on every rank (e.g. the run folder, which Hydra names from the clock
    in each process separately)."""
    if not d.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
