"""JSON hooks named by PROCRASTINATE_JSON_DUMPS / _LOADS in the settings tests."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def loads(text: str) -> Any:
    return json.loads(text)


READY_CALLS: list[object] = []


def on_ready(app: Any) -> None:
    """Named by PROCRASTINATE_ON_APP_READY in the settings tests."""
    READY_CALLS.append(app)
