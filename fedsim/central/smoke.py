"""The `smoke` central job: checks a Ray cluster for central jobs (where the task ran, which device and
library versions it saw), in two stages; also the trivial job of the Ray-overhead benchmark."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

from fedsim.central.jobs import Job, JobContext, register_job


def run_smoke(ctx: JobContext) -> dict[str, Any]:
    def where(out: Path) -> dict[str, Any]:
        import torch

        info = {"host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version(),
                "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                "gpus": torch.cuda.device_count(), "device": ctx.device, "threads": torch.get_num_threads()}
        try:
            import ray

            info["ray_node_id"] = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except ImportError:  # pragma: no cover - ray is a dependency
            info["ray_node_id"] = None
        return info

    def compute(out: Path) -> dict[str, Any]:
        import torch

        gen = torch.Generator().manual_seed(int(ctx.cfg["seed"]))
        a = torch.randn(int(ctx.cfg["smoke"]["size"]), int(ctx.cfg["smoke"]["size"]), generator=gen)
        a = a.to(ctx.device)
        return {"checksum": float((a @ a.T).trace().item())}

    info = ctx.stage("where", where)
    result = ctx.stage("compute", compute)
    return {"summary": {"host": info["host"], "device": info["device"], "checksum": result["checksum"]},
            "where": info, "compute": result}


register_job(Job("smoke", run_smoke, {"smoke": {"size": 64}, "toy_base": {"enabled": False}},
                 "check a Ray cluster: where the task ran, device, versions (two stages)"))
