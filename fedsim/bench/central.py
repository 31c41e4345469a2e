"""`fedsim bench central`: costs of the central LLM jobs' building blocks.

(a) Memory of one MeZO step against forward-only inference on the same model and batch (target ≤ 1.1×), with a
    first-order step (backward + AdamW) as the reference MeZO is meant to avoid. A tiny Llama widened so that its
    parameters dominate (default hidden 640, 4 layers: ~19 M fp32 parameters, ~77 MB). Each measurement runs in a
    fresh Python process: on CPU the kernel's resident-set high-water mark (VmHWM) after the operation minus VmRSS
    before the model was built (so parameters + activations + transients of the operation count; the interpreter
    and libraries do not: the same operation first runs once on a micro model, before the baseline, so that lazy
    imports and kernel initialisation are charged to no mode), with the peak reset through /proc/self/clear_refs
    after one forward of the measured model and glibc's mmap threshold pinned
    (MALLOC_MMAP_THRESHOLD_) so that freed large buffers leave the heap; without clear_refs, ru_maxrss (peak since
    process start) stands in. On GPU: torch.cuda.max_memory_allocated after the operation minus the allocated
    bytes before the model was built. tracemalloc is not used: it does not see torch's allocator.
(b) Seconds per optimizer step of TRL SFT and DPO (`fedsim.central.train`) and of one MeZO step, on the built-in
    tiny Llama with toy-world records (TRL's `train_runtime` / steps: trainer construction is reported apart).
(c) Ray job overhead: the trivial `smoke` central job through `runner.submit` (a local loopback Ray started and
    stopped around it) against the same job in process; the runner's own split into Ray start-up and task
    overhead is reported too.

Settings (`--set key=value`); `quick=1` is the test setting (a small model, few steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedsim.bench import bench_params, save_report
from fedsim.rundir import environment_info

DEFAULTS: dict[str, Any] = {
    "quick": 0,  # 1: test setting (see the module doc)
    "hidden": 640,  # memory model: tiny-llama widened
    "intermediate": 1792,
    "layers": 4,
    "batch": 8,  # memory batch: sequences x tokens
    "seq_len": 64,
    "memory_modes": "inference,zo,backprop",
    "train_records": 8,  # per toy pool (harmful, jailbreak, general) for the SFT / DPO timing
    "train_batch": 8,
    "train_steps": 6,  # optimizer steps timed (SFT and DPO)
    "zo_steps": 6,
    "ray": 1,  # the Ray overhead part
    "ray_repeats": 1,
    "threads": 1,  # torch threads in every measurement
    "out_dir": "",  # where the Ray part's run directories go (default: a temporary directory)
}
QUICK = {"hidden": 128, "intermediate": 256, "layers": 2, "batch": 2, "seq_len": 32, "train_records": 2,
         "train_batch": 4, "train_steps": 2, "zo_steps": 2}
TARGET_ZO_OVER_INFERENCE = 1.1
MMAP_THRESHOLD = 1 << 17
MEMORY_MODES = ("inference", "zo", "backprop")


# --------------------------------------------------------------------------------------------- (a) memory
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_probe(mode: str, p: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: warm the libraries up on a micro model, take the baseline, build the model,
    then measure the peak memory of one `mode` operation (inference forward, MeZO step, backward + AdamW)."""
    import resource

    import torch

    from fedsim.central.models import tiny_model, tiny_tokenizer
    from fedsim.central.zo.mezo import spsa_step
    from fedsim.central.zo.refine import LMBatch, mean_nll

    torch.set_num_threads(int(p["threads"]))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tok = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(tok), (int(p["batch"]), int(p["seq_len"])), generator=gen)
    labels = ids.clone()
    labels[:, : int(p["seq_len"]) // 2] = -100
    batch = LMBatch(ids.to(device), torch.ones_like(ids).to(device), labels.to(device))

    def build(hidden: int, intermediate: int, layers: int) -> Any:
        return tiny_model("tiny-llama", tok, seed=0, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=layers).to(device).eval()

    def op(model: Any) -> None:
        loss_fn = lambda: mean_nll(model, batch)  # noqa: E731  the same objective for every mode
        if mode == "inference":
            loss_fn()
        elif mode == "zo":
            spsa_step(model, list(model.named_parameters()), loss_fn, eps=1e-3, lr=1e-6, seed=1)
        elif mode == "backprop":
            model.train()
            optim = torch.optim.AdamW(model.parameters(), lr=1e-6)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            out.loss.backward()
            optim.step()
            model.eval()
        else:
            raise ValueError(f"unknown memory mode {mode!r}")

    import gc

    # Library warm-up on a micro model of the same architecture: lazy imports and kernel / allocator
    # initialisation happen here, before the baseline, and are charged to no mode.
    micro = build(16, 32, 1)
    op(micro)
    del micro
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
    else:
        base = _status_kb("VmRSS")
    model = build(int(p["hidden"]), int(p["intermediate"]), int(p["layers"]))
    n_params = sum(t.numel() for t in model.parameters())
    mean_nll(model, batch)  # one forward on the measured model before the window
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_op = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        op(model)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated()
        method = "cuda.max_memory_allocated"
    else:
        before_op = _status_kb("VmRSS")
        reset = _reset_peak()
        t0 = time.perf_counter()
        op(model)
        seconds = time.perf_counter() - t0
        if reset:
            peak, method = _status_kb("VmHWM"), "VmHWM (clear_refs reset after warm-up)"
        else:
            peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (no reset)"
    return {"mode": mode, "device": device, "method": method, "params": n_params, "param_bytes": 4 * n_params,
            "peak_bytes": peak - base, "op_delta_bytes": peak - before_op, "resident_before_op_bytes": before_op - base,
            "op_seconds": seconds}


def _probe_in_subprocess(mode: str, p: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "OMP_NUM_THREADS": str(p["threads"]),
           "TOKENIZERS_PARALLELISM": "false"}
    code = ("import json, sys; from fedsim.bench.central import memory_probe; "
            "print('RESULT ' + json.dumps(memory_probe(sys.argv[1], json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, mode, json.dumps(p)], capture_output=True, text=True,
                          env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {mode!r} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def memory(p: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of each mode in its own process, and the ratios to inference."""
    modes = [m.strip() for m in str(p["memory_modes"]).split(",") if m.strip()]
    bad = [m for m in modes if m not in MEMORY_MODES]
    if bad or "inference" not in modes:
        raise ValueError(f"bench central: memory_modes must include inference and come from "
                         f"{', '.join(MEMORY_MODES)}; got {p['memory_modes']!r}")
    runs = {m: _probe_in_subprocess(m, p) for m in modes}
    inf = runs["inference"]["peak_bytes"]
    out: dict[str, Any] = {"params": runs["inference"]["params"], "param_bytes": runs["inference"]["param_bytes"],
                           "runs": runs, "target_zo_over_inference_max": TARGET_ZO_OVER_INFERENCE}
    for m in modes:
        if m != "inference":
            out[f"{m}_over_inference"] = runs[m]["peak_bytes"] / inf if inf > 0 else None
            out[f"{m}_op_delta_over_inference_op_delta"] = (
                runs[m]["op_delta_bytes"] / runs["inference"]["op_delta_bytes"]
                if runs["inference"]["op_delta_bytes"] > 0 else None)
    if "zo" in runs and out.get("zo_over_inference") is not None:
        out["zo_meets_target"] = out["zo_over_inference"] <= TARGET_ZO_OVER_INFERENCE
    return out


# ----------------------------------------------------------------------------------------- (b) step times
def train_steps(p: dict[str, Any]) -> dict[str, Any]:
    """Seconds per SFT / DPO optimizer step (TRL) and per MeZO step on the built-in tiny Llama."""
    import torch

    from fedsim.central import train
    from fedsim.central.models import tiny_model, tiny_tokenizer
    from fedsim.central.zo.job import fo_pairs, fo_records
    from fedsim.central.zo.mezo import spsa_step
    from fedsim.central.zo.refine import build_batch, mean_nll, safety_examples

    torch.set_num_threads(int(p["threads"]))
    tok = tiny_tokenizer()
    pools = ["harmful", "jailbreak", "general"]
    n, bs, steps = int(p["train_records"]), int(p["train_batch"]), int(p["train_steps"])
    per_epoch = -(-3 * n // bs)
    epochs = steps / per_epoch
    out: dict[str, Any] = {"model": "tiny-llama", "records": 3 * n, "batch": bs}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sft", "dpo"):
            model = tiny_model("tiny-llama", tok, seed=0)
            t0 = time.perf_counter()
            if kind == "sft":
                metrics = train.sft(model, tok, fo_records(tok, pools, n, 0), Path(tmp) / kind, "cpu",
                                    num_train_epochs=epochs, per_device_train_batch_size=bs, learning_rate=1e-4)
            else:
                metrics = train.dpo(model, tok, fo_pairs(tok, pools, n, 0), Path(tmp) / kind, "cpu",
                                    num_train_epochs=epochs, per_device_train_batch_size=bs, learning_rate=1e-6)
            wall = time.perf_counter() - t0
            runtime = float(metrics["train_runtime"])
            out[kind] = {"steps": int(metrics["steps"]), "train_runtime_seconds": runtime,
                         "seconds_per_step": runtime / max(1, int(metrics["steps"])),
                         "wall_seconds_incl_setup": wall}
    model = tiny_model("tiny-llama", tok, seed=0).eval()
    prompts, targets = safety_examples(tok, "train", ("harmful", "jailbreak"), n, 0)
    batch = build_batch(tok, prompts, targets)
    sub = batch.select(range(min(bs, len(batch))))
    times = []
    for t in range(int(p["zo_steps"])):
        t0 = time.perf_counter()
        spsa_step(model, list(model.named_parameters()), lambda: mean_nll(model, sub), 1e-3, 1e-6, t)
        times.append(time.perf_counter() - t0)
    out["zo"] = {"steps": len(times), "seconds_per_step": statistics.median(times) if times else None,
                 "batch": len(sub)}
    sft = out["sft"]["seconds_per_step"]
    out["dpo_over_sft"] = out["dpo"]["seconds_per_step"] / sft if sft > 0 else None
    out["zo_over_sft"] = out["zo"]["seconds_per_step"] / sft if sft > 0 and times else None
    return out


# ---------------------------------------------------------------------------------------------- (c) Ray
def ray_overhead(p: dict[str, Any]) -> dict[str, Any]:
    """The `smoke` job in process vs through `runner.submit` on a local Ray (median over `ray_repeats`)."""
    import fedsim.central.smoke  # noqa: F401  (registers the trivial job without importing every job module)
    from fedsim.central.runner import run_central

    overrides = ["smoke.size=8", f"resources.num_cpus={max(1, int(p['threads']))}"]
    root_ctx = tempfile.TemporaryDirectory() if not p["out_dir"] else None
    root = Path(root_ctx.name if root_ctx else p["out_dir"])
    rows = []
    try:
        for i in range(max(1, int(p["ray_repeats"]))):
            t0 = time.perf_counter()
            local = run_central("smoke", overrides=overrides, out=str(root / f"inproc-{i}"), use_ray=False)
            in_process = time.perf_counter() - t0
            t0 = time.perf_counter()
            remote = run_central("smoke", overrides=overrides, out=str(root / f"ray-{i}"), use_ray=True)
            via_ray = time.perf_counter() - t0
            rows.append({"in_process_seconds": in_process, "ray_seconds": via_ray,
                         "job_seconds_in_process": local["wall_seconds"], "job_seconds_in_ray": remote["wall_seconds"],
                         "ray_startup_seconds": remote["ray"]["startup_seconds"],
                         "ray_task_overhead_seconds": remote["ray"]["task_overhead_seconds"]})
    finally:
        if root_ctx:
            root_ctx.cleanup()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"job": "smoke", "repeats": len(rows), "runs": rows, **med,
            "overhead_seconds": med["ray_seconds"] - med["in_process_seconds"],
            "ray_over_in_process": med["ray_seconds"] / med["in_process_seconds"]}


def bench_central(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    p = bench_params("central", DEFAULTS, overrides)
    if int(p["quick"]):
        given = {item.partition("=")[0] for item in overrides or []}
        p.update({k: v for k, v in QUICK.items() if k not in given})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "central", "params": p, "method": (__doc__ or "").strip()}
    with contextlib.redirect_stdout(sys.stderr):  # TRL and Ray print; stdout stays the report's JSON
        report["memory"] = memory(p)
        report["train_steps"] = train_steps(p)
        report["ray"] = ray_overhead(p) if int(p["ray"]) else {"skipped": "ray=0"}
    report["seconds"] = time.perf_counter() - t0
    report["environment"] = environment_info()
    return save_report(report, out)
