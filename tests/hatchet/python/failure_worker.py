"""A Hatchet Python SDK worker for the engine's failure tests (tests/tests/engine_failures.rs).

Configured by the environment only, as production workers are: HATCHET_CLIENT_TOKEN (the
engine address comes from the token), SFP_WORKER_NAME, SFP_WORKER_SLOTS and SFP_EFFECTS_DIR.
Each execution of `fx-effect` and `fx-slow` appends one line "<run id> <attempt> <worker>" to
effects.log in SFP_EFFECTS_DIR, the side effect the tests count; `fx-hang` never finishes
by itself; `fx-quick` returns at once.
"""

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from hatchet_sdk import Context, EmptyModel, Hatchet

hatchet = Hatchet()
WORKER = os.environ["SFP_WORKER_NAME"]
EFFECTS = Path(os.environ["SFP_EFFECTS_DIR"])


class Effect(BaseModel):
    ms: int = 300


# A short timeout and retries: a report the SDK fails to deliver (see the test) costs a
# timeout, not the run.
@hatchet.task(name="fx-effect", execution_timeout="8s", retries=2)
def effect(input: Effect, ctx: Context) -> dict:
    return side_effect(input, ctx)


# No retries: a run that completes after its worker died did so on a new attempt the
# engine made without spending one.
@hatchet.task(name="fx-slow", execution_timeout="60s", retries=0)
def slow(input: Effect, ctx: Context) -> dict:
    return side_effect(input, ctx)


def side_effect(input: Effect, ctx: Context) -> dict:
    (EFFECTS / f"started.{ctx.workflow_run_id}.{ctx.retry_count}.{WORKER}").write_text("")
    time.sleep(input.ms / 1000)
    with open(EFFECTS / "effects.log", "a") as log:
        log.write(f"{ctx.workflow_run_id} {ctx.retry_count} {WORKER}\n")
    return {"worker": WORKER, "attempt": ctx.retry_count}


@hatchet.task(name="fx-hang", execution_timeout="2s")
async def hang(input: EmptyModel, ctx: Context) -> dict:
    await asyncio.sleep(600)
    return {"finished": True}


@hatchet.task(name="fx-quick")
def quick(input: EmptyModel, ctx: Context) -> dict:
    return {"worker": WORKER}


if __name__ == "__main__":
    slots = int(os.environ.get("SFP_WORKER_SLOTS", "10"))
    hatchet.worker(WORKER, slots=slots, workflows=[effect, slow, hang, quick]).start()
