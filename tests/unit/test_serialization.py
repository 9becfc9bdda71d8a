import datetime
import decimal
import json

import pytest

from procrastinate_core import exceptions
from procrastinate_core.serialization import dumps_checked, dumps_result


@pytest.mark.parametrize(
    "value, type_name, fragment",
    [
        (datetime.datetime(2026, 1, 1), "datetime", "not JSON serializable"),
        ({1, 2}, "set", "not JSON serializable"),
        (object(), "object", "not JSON serializable"),
        (b"raw", "bytes", "not JSON serializable"),
        (decimal.Decimal("1.5"), "Decimal", "not JSON serializable"),
        (float("nan"), "float", "NaN"),
        (float("inf"), "float", "Infinity"),
        ("a\x00b", "str", "NUL"),
        ({"nested": [float("-inf")]}, "dict", "Infinity"),
    ],
)
def test_bad_argument_is_named_with_its_type(value, type_name, fragment):
    with pytest.raises(exceptions.ArgumentSerializationError) as info:
        dumps_checked({"ok": 1, "bad": value}, json.dumps, what="cannot defer task 't'")
    message = str(info.value)
    assert "cannot defer task 't'" in message
    assert "argument 'bad'" in message
    assert f"of type {type_name}" in message
    assert fragment in message
    assert "json_dumps=" in message  # says how to fix it


def test_serialization_error_is_a_type_error():
    with pytest.raises(TypeError):
        dumps_checked({"a": {1}}, json.dumps, what="x")


def test_good_arguments_are_encoded_once():
    calls = []

    def counting_dumps(value):
        calls.append(value)
        return json.dumps(value)

    assert json.loads(dumps_checked({"a": [1, "x", None, 1.5]}, counting_dumps, what="x")) == {
        "a": [1, "x", None, 1.5]
    }
    assert len(calls) == 1


def test_custom_encoder_accepts_its_types():
    def dumps(value):
        return json.dumps(value, default=lambda o: o.isoformat())

    text = dumps_checked({"when": datetime.date(2026, 1, 2)}, dumps, what="x")
    assert json.loads(text) == {"when": "2026-01-02"}


def test_result_that_cannot_be_stored_is_dropped_not_raised():
    assert dumps_result({1, 2}, json.dumps) is None
    assert dumps_result(float("nan"), json.dumps) is None
    assert dumps_result(None, json.dumps) is None
    assert dumps_result({"n": 3}, json.dumps) == '{"n": 3}'
