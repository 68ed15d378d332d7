"""Which process of a multi-process (DDP/FSDP) run this is, for the writes made before Lightning starts.

Lightning starts the process group inside ``trainer.fit``; from then on ``trainer.is_global_zero`` says
which process writes. Before it, the run folder is prepared, and only the first process may do that:

- ``recogen ... --devices N --strategy ddp`` (Lightning's subprocess launcher): the command is run again
  with ``LOCAL_RANK=1..N-1`` (and ``NODE_RANK``, ``WORLD_SIZE``) in the environment of the copies;
- ``torchrun``: every process has ``RANK`` (global), ``LOCAL_RANK`` and ``WORLD_SIZE``;
- SLURM's ``srun``: every task has ``SLURM_PROCID`` (global) and ``SLURM_NTASKS``.
"""
from __future__ import annotations

import os


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (a plain single-process run is)."""
    env = os.environ
    if env.get("RANK", "").isdigit():  # torchrun (and Lightning once it set up the process group)
        return int(env["RANK"]) == 0
    if env.get("SLURM_PROCID", "").isdigit() and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("LOCAL_RANK", "0") or 0) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")) or 0) == 0


def end_process_group() -> None:
    """End the process group after ``trainer.fit`` (Lightning's advice for work after a DDP fit): what
    global rank 0 does next (evaluation, plots) runs alone, so nothing may wait for the other processes
    (torchmetrics syncs its metrics across processes while a group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
