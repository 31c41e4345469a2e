"""What every fedsim ServerApp shares: the run-config keys a runtime passes, and the app wrapper around a
protocol's `serve(grid, run_config)`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.config import ExperimentConfig, from_dict
from fedsim.rundir import RunDir

CONFIG_KEY = "fedsim-config"  # run-config key: the resolved experiment config as JSON
RUN_DIR_KEY = "fedsim-run-dir"  # run-config key: where the ServerApp writes the run
RESUME_KEY = "fedsim-resume-round"  # run-config key: resume after this round's checkpoint ("0": start over)

ServeFn = Callable[[Grid, Mapping[str, Any]], Any]
RunBody = Callable[[Grid, ExperimentConfig, RunDir, Mapping[str, Any]], dict[str, Any]]


def server_run_config(cfg: ExperimentConfig, run_dir: RunDir, resume_round: int | None = None) -> dict[str, str]:
    """The run config a runtime hands a ServerApp (`resume_round`: a resumed run, see `resume_round`)."""
    config = {CONFIG_KEY: cfg.to_json(), RUN_DIR_KEY: str(run_dir.path)}
    if resume_round is not None:
        config[RESUME_KEY] = str(int(resume_round))
    return config


def resume_round(run_config: Mapping[str, Any]) -> int | None:
    """The round a resumed run continues after (0: a resumed run without a checkpoint starts over), or None for a
    fresh run."""
    value = run_config.get(RESUME_KEY)
    if value is None or str(value) == "":
        return None
    try:
        rnd = int(str(value))
    except ValueError:
        raise ValueError(f"run config {RESUME_KEY} = {value!r} is not a round number") from None
    if rnd < 0:
        raise ValueError(f"run config {RESUME_KEY} = {value!r} is negative")
    return rnd


def serve_run(grid: Grid, run_config: Mapping[str, Any], body: RunBody) -> dict[str, Any]:
    """Read the run config, run `body`, write result.json; status.json says running, then finished or failed
    (with the error) whatever happens."""
    missing = [k for k in (CONFIG_KEY, RUN_DIR_KEY) if not run_config.get(k)]
    if missing:
        raise ValueError(f"ServerApp run config lacks {missing}; start runs with `fedsim run`")
    cfg = from_dict(json.loads(str(run_config[CONFIG_KEY])))
    run_dir = RunDir(str(run_config[RUN_DIR_KEY]))
    resumed = resume_round(run_config)
    extra = {} if resumed is None else {"resumed_from": resumed}
    run_dir.set_status("running", **extra)
    try:
        result = body(grid, cfg, run_dir, run_config)
        if resumed is not None:
            result["resumed_from"] = resumed
        run_dir.write_json("result.json", result)
        run_dir.set_status("finished", **extra)
        return result
    except BaseException as err:
        run_dir.set_status("failed", error=f"{type(err).__name__}: {err}", **extra)
        raise


def serving_app(serve: ServeFn, run_config_override: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp running `serve`; `run_config_override` supplies the run config where Flower passes none
    (the simulation's `run_simulation` leaves `context.run_config` empty)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        run_config.update(run_config_override or {})
        serve(grid, run_config)

    return app
