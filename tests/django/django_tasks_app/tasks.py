"""django.tasks tasks (module level, as Django requires) run by our worker in the tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.tasks import TaskContext, task

from procrastinate_django import app
from tests.django.testapp.models import TaskRun

#: Opened by a test to let `wait_for_gate` finish (it blocks in the worker's thread until then).
gate = threading.Event()


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=10)
def send_email(to: str, *, subject: str = "") -> dict[str, Any]:
    return {"to": to, "subject": subject}


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def describe_context(context: TaskContext, label: str) -> dict[str, Any]:
    result = context.task_result
    return {
        "label": label,
        "id": result.id,
        "attempt": context.attempt,
        "status": str(result.status),
        "worker_ids": result.worker_ids,
        "started": result.started_at is not None,
        "task": result.task.module_path,
    }


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task
def returns_a_set() -> Any:
    return {1, 2}


@task
def record(label: str) -> str:
    """Writes through the ORM from the worker's thread: one ledger row per run."""
    TaskRun.objects.create(task="django_tasks.record", value=label)
    return label


@task
def wait_for_gate() -> str:
    if not gate.wait(30):
        raise TimeoutError("the test never opened the gate")
    return "opened"


@app.task(queue="default")
def native_double(x: int) -> int:
    """A native task (procrastinate's @app.task), whose result is stored the same way."""
    return 2 * x


@task
def exits(code: int) -> None:
    """A task calling sys.exit(): its result is FAILED, the worker goes on."""
    import sys

    sys.exit(code)


@task
async def async_interrupts() -> None:
    raise KeyboardInterrupt
