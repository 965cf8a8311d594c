"""A run's files beside the store's outputs: the run log, job.json, a folder moved aside."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from batchgen.backends.a1111 import Endpoint, resolve_endpoint
from batchgen.errors import ConfigError
from batchgen.job import JobSpec
from batchgen.outputs.shards import fingerprint
from batchgen.outputs.store import folder_in_use

log = logging.getLogger(__name__)

RUN_LOG = "run.log"


def public_job(job: JobSpec, live: tuple[Endpoint, ...]) -> dict[str, Any]:
    """The resolved job, with every secret left out (header values, URL credentials)."""
    data = job.model_dump(mode="json")
    data["endpoints"] = [
        {
            "name": endpoint.name,
            "url": resolve_endpoint(spec, job.in_flight).url,  # credentials split off
            "backend": spec.kind,
            "auth_env": spec.auth_env,
            "headers": sorted(spec.headers) + sorted(spec.headers_env),
            "headers_env": dict(spec.headers_env),  # header -> variable name, not its value
        }
        for endpoint, spec in zip(live, job.endpoints, strict=True)
    ]
    data["payload_base"] = str(job.sheet.parent.resolve())  # where the payload's paths start
    data["fingerprint"] = fingerprint(job)  # merge refuses folders of another job or sheet
    return data


def move_aside(out_dir: Path) -> None:
    """--fresh: rename a non-empty output folder with a timestamp, never over an earlier copy."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if folder_in_use(out_dir):
        raise ConfigError(f"{out_dir}: another batchgen run is writing here; --fresh left it")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir.with_name(f"{out_dir.name}.{stamp}")
    counter = 1
    while target.exists():
        target = out_dir.with_name(f"{out_dir.name}.{stamp}-{counter}")
        counter += 1
    shutil.move(str(out_dir), str(target))
    log.warning("--fresh: moved the earlier output folder to %s", target)


def open_run_log(out_dir: Path) -> logging.Handler:
    """Copy batchgen's log lines, INFO and up, to the output folder's run log."""
    handler = logging.FileHandler(out_dir / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("batchgen")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def close_run_log(handler: logging.Handler) -> None:
    logging.getLogger("batchgen").removeHandler(handler)
    handler.close()
