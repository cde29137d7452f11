"""Conformance of the embedded engine with the official Hatchet Python SDK (pinned in
requirements.txt).

The engine is started the way the SDK starts its own embedded engine: `Hatchet.from_embedded()`
runs the binary named by HATCHET_CLIENT_EMBEDDED_BINARY_PATH with `-handshake-file` (and
`-database-url` from HATCHET_CLIENT_EMBEDDED_DATABASE_URL). A worker runs in a child process
that reuses the same engine. Exits non-zero on the first broken expectation.

    python conformance.py            # the client side (starts engine and worker)
    python conformance.py worker     # the worker side (started by the client side)
"""

import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from hatchet_sdk import Context, EmptyModel, Hatchet, V1TaskStatus

hatchet = Hatchet.from_embedded()


class Numbers(BaseModel):
    n: int


class Marker(BaseModel):
    marker: str


dag = hatchet.workflow(name="py-dag", input_validator=Numbers)


@dag.task()
def first(input: Numbers, ctx: Context) -> dict:
    return {"doubled": input.n * 2}


@dag.task(parents=[first])
def second(input: Numbers, ctx: Context) -> dict:
    return {"plus_one": ctx.task_output(first)["doubled"] + 1}


@hatchet.task(name="py-flaky", retries=2)
def flaky(input: EmptyModel, ctx: Context) -> dict:
    if ctx.retry_count < 2:
        raise RuntimeError(f"flaky attempt {ctx.retry_count}")
    return {"attempt": ctx.retry_count}


@hatchet.task(name="py-fail", retries=0)
def always_fails(input: EmptyModel, ctx: Context) -> dict:
    raise RuntimeError("this task always fails")


@hatchet.task(name="py-event", on_events=["py:event"], input_validator=Marker)
def on_event(input: Marker, ctx: Context) -> dict:
    Path(input.marker).write_text(json.dumps({"seen": input.marker}))
    return {"ok": True}


@hatchet.task(name="py-stream")
async def streams(input: EmptyModel, ctx: Context) -> dict:
    for i in range(3):
        await ctx.aio_put_stream(f"chunk {i}")
    return {"chunks": 3}


@hatchet.task(name="py-logs")
def logs(input: EmptyModel, ctx: Context) -> dict:
    ctx.log("building package core")
    ctx.log("building package data")
    return {"logged": 2}


@hatchet.task(name="py-cancellable", input_validator=Marker, execution_timeout="2m")
def cancellable(input: Marker, ctx: Context) -> dict:
    Path(input.marker + ".started").write_text("started")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if ctx.is_cancelled:
            Path(input.marker).write_text("cancelled")
            return {"cancelled": True}
        time.sleep(0.1)
    return {"cancelled": False}


def worker() -> None:
    w = hatchet.worker(
        "py-conformance", slots=4, workflows=[dag, flaky, always_fails, on_event, streams, logs, cancellable]
    )
    w.start()


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def retry_until_registered(call):
    """The worker registers the workflows; until then triggering answers NOT_FOUND."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return call()
        except Exception as e:  # noqa: BLE001
            if "not registered" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for(condition, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def operations() -> None:
    """The run list, run status, one task and its logs through the SDK's REST features."""
    ref = retry_until_registered(lambda: logs.run_no_wait())
    ref.result()
    check(hatchet.runs.get_status(ref.workflow_run_id) == V1TaskStatus.COMPLETED, "runs.get_status says COMPLETED")
    task_id = hatchet.runs.get(ref.workflow_run_id).tasks[0].task_external_id
    summary = hatchet.runs.get_task_run(task_id)
    check(summary.output == {"logged": 2} and summary.display_name == "py-logs", f"runs.get_task_run {summary.output}")
    listed = hatchet.runs.list(statuses=[V1TaskStatus.COMPLETED], limit=100)
    check(any(r.workflow_run_external_id == ref.workflow_run_id for r in listed.rows), "runs.list finds the completed run")
    check(all(r.status == V1TaskStatus.COMPLETED for r in listed.rows), "runs.list filters by status")
    failed = hatchet.runs.list(statuses=[V1TaskStatus.FAILED])
    check(any(r.display_name == "py-fail" for r in failed.rows), "runs.list lists the failed run")
    check(all(r.status == V1TaskStatus.FAILED for r in failed.rows), "only failed runs")
    paged = hatchet.runs.list(limit=1, offset=1)
    check(len(paged.rows) == 1 and paged.pagination.current_page == 2, f"runs.list pages {paged.pagination}")
    lines: list = []

    def logged() -> bool:
        lines[:] = [line.message for line in (hatchet.logs.list(task_id).rows or [])]
        return len(lines) == 2

    check(wait_for(logged, 30), f"logs.list returns the task's log lines {lines}")
    created = hatchet.runs.create("py-dag", {"n": 4}, additional_metadata={"via": "rest"})
    run_id = created.run.metadata.id
    check(created.run.additional_metadata == {"via": "rest"}, "runs.create starts a run over REST")
    check(wait_for(lambda: hatchet.runs.get_status(run_id) == V1TaskStatus.COMPLETED), "the REST-created run completes")
    check(hatchet.runs.get_result(run_id)["second"] == {"plus_one": 9}, "runs.get_result of the REST-created run")
    check(lines == ["building package core", "building package data"], f"in order {lines}")


def cancel_reaches_a_running_task() -> None:
    marker = Path(tempfile.mkdtemp()) / "cancelled"
    ref = retry_until_registered(lambda: cancellable.run_no_wait(Marker(marker=str(marker))))
    check(wait_for(lambda: Path(str(marker) + ".started").exists()), "the cancellable task started")
    hatchet.runs.cancel(ref.workflow_run_id)
    check(wait_for(marker.exists), "the running task saw its cancellation (ctx.is_cancelled)")
    check(
        wait_for(lambda: hatchet.runs.get_status(ref.workflow_run_id) == V1TaskStatus.CANCELLED, 30),
        "the run is CANCELLED",
    )


def client() -> None:
    child = subprocess.Popen([sys.executable, __file__, "worker"])
    try:
        result = retry_until_registered(lambda: dag.run(Numbers(n=20)))
        check(result["first"] == {"doubled": 40}, f"DAG first task output {result}")
        check(result["second"] == {"plus_one": 41}, "DAG second task read its parent's output")

        result = asyncio.run(dag.aio_run(Numbers(n=5)))
        check(result["second"] == {"plus_one": 11}, f"aio_run returns the result {result}")

        result = retry_until_registered(lambda: flaky.run())
        check(result == {"attempt": 2}, f"a task failing twice succeeds on its third attempt {result}")

        try:
            retry_until_registered(lambda: always_fails.run())
            check(False, "a failing task raises in the caller")
        except Exception as e:  # noqa: BLE001
            check("this task always fails" in str(e), f"the task's error reaches the caller: {e}")

        ref = retry_until_registered(lambda: streams.run_no_wait())

        async def read_stream() -> list:
            return [chunk async for chunk in hatchet.runs.subscribe_to_stream(ref.workflow_run_id)]

        chunks = asyncio.run(asyncio.wait_for(read_stream(), timeout=60))
        check(chunks == ["chunk 0", "chunk 1", "chunk 2"], f"subscribe_to_stream yields the task's chunks {chunks}")
        result = ref.result()
        check(result == {"chunks": 3}, f"the streaming task's result {result}")

        cron = hatchet.cron.create(
            workflow_name="py-dag", cron_name="nightly", expression="0 2 * * *", input={"n": 1}, additional_metadata={}
        )
        check(any(r.metadata.id == cron.metadata.id for r in hatchet.cron.list().rows), "hatchet.cron creates and lists a cron")
        hatchet.cron.delete(cron.metadata.id)
        check(all(r.metadata.id != cron.metadata.id for r in hatchet.cron.list().rows), "hatchet.cron deletes it")
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        scheduled = hatchet.scheduled.create(workflow_name="py-flaky", trigger_at=later, input={}, additional_metadata={})
        check(any(r.metadata.id == scheduled.metadata.id for r in hatchet.scheduled.list().rows),
              "hatchet.scheduled creates and lists a scheduled run")
        hatchet.scheduled.delete(scheduled.metadata.id)

        operations()
        cancel_reaches_a_running_task()

        marker = Path(tempfile.mkdtemp()) / "event-seen.json"
        hatchet.event.push("py:event", {"marker": str(marker)})
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        check(marker.exists(), "an event push started the workflow listening for its key")
    finally:
        child.terminate()
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
        hatchet.stop_embedded()
    print("python conformance: all passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
    else:
        client()
