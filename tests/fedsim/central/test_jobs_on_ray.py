"""Every shipped central job end to end as a Ray task on the tiny models (one loopback Ray for all)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.central.runner import run_central

ZO_SMALL = ["toy_base.enabled=false", "fo_stage.n_per_pool=2", "fo_stage.batch_size=4", "zo.steps=2",
            "zo.batch_size=4", "zo.probe_period=2", "zo.n_per_pool=2", "robustness_eval.n_per_pool=2",
            "robustness_eval.seeds=1", "robustness_eval.max_new_tokens=4", "robustness_eval.weight_noise=[0.05]",
            "robustness_eval.act_noise=[]", 'robustness_eval.quant=["w4a16"]']
ST_SMALL = ["n_per_pool=4", "eval.n_per_set=3", "eval.sampled_n=1",
            "sft={num_train_epochs = 1.0, per_device_train_batch_size = 4}", "dpo={k_samples = 2, max_steps = 1}"]
MAPE_SMALL = ["data.toy.n_test=48", "methods=['gd']", "stats.n_microbatches=4", "search.greedy_iters=2",
              "relearn.steps=2", "relearn.n=4", "baselines=['saliency']"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One loopback Ray for the module (its temp dir under the test's tmp dir), stopped afterwards."""
    import ray

    from fedsim.runtime.environment import STATIC_ENV

    for key in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED"):
        os.environ[key] = STATIC_ENV[key]
    temp = Path("/tmp") / f"fedsim-ray-{os.getpid()}"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "FEDSIM_CENTRAL_CACHE")
                                       if k in os.environ}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(("job", "overrides", "stages"), [
    ("zo-refine", ZO_SMALL, {"fo", "zo", "eval-base", "eval-fo", "eval-fo+zo", "report"}),
    ("mape-unlearn", MAPE_SMALL, {"data", "pretrain", "stats", "search", "unlearn-mape-gd", "unlearn-saliency-gd"}),
    ("safe-trigger", ST_SMALL, {"toy-base", "generate", "analyse", "assemble_sft", "sft", "sample_k", "build_pairs",
                                "dpo", "evaluate"}),
])
def test_job_runs_as_a_ray_task(job: str, overrides: list[str], stages: set[str], local_ray: str,
                                tmp_path: Path, toy_base: Path) -> None:
    seen: list[dict] = []
    out = tmp_path / "run"
    report = run_central(job, overrides=list(overrides), out=str(out), progress=seen.append, timeout=600)
    assert report["job"] == job and report["summary"]
    assert json.loads((out / "report.json").read_text())["summary"] == report["summary"]
    finished = {row["stage"] for row in seen if row["message"].startswith("finished")}
    assert stages <= finished, stages - finished
    # it ran in a Ray worker of this Ray, not in this process
    assert report["ray"]["address"] == local_ray and report["worker"]["pid"] != os.getpid()
