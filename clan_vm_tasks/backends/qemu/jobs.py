"""QMP background jobs (snapshot-save/-load/-delete): start, wait until concluded, dismiss."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from clan_vm_tasks.backends.qemu.qmp import Monitor, QMPCommandFailed

_counter = itertools.count()


def run_job(mon: Monitor, command: str, arguments: dict[str, Any], timeout: float) -> None:
    """Run one job to its end; its error (if any) becomes a QMPCommandFailed.

    The job is always dismissed, so a failed job leaves nothing behind in QEMU.
    """
    job_id = f"clan-{command}-{os.getpid()}-{next(_counter)}"
    mon.execute(command, {"job-id": job_id, **arguments})
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["id"]: j for j in mon.execute("query-jobs")}
        job = jobs.get(job_id)
        if job is None:
            raise QMPCommandFailed(f"QEMU lost the {command} job")
        if job["status"] == "concluded":
            mon.execute("job-dismiss", {"id": job_id})
            if "error" in job:
                raise QMPCommandFailed(f"{command} failed: {job['error']}")
            return
        if time.monotonic() >= deadline:
            # Not cancellable (snapshot jobs ignore job-cancel); say so instead of hanging.
            raise QMPCommandFailed(f"{command} did not finish within {timeout:g}s")
        time.sleep(0.05)
