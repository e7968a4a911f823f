"""ModalitySpec: validated, frozen, and round-trips through the JSON form the manifest stores."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import pytest

from modalities import KINDS, ModalityError, ModalitySpec
from modalities.errors import ErrorCode


@pytest.mark.parametrize(
    "spec",
    [
        ModalitySpec("rgb", "rgb"),
        ModalitySpec("t1ce", "gray"),
        ModalitySpec("depth", "depth", depth_scale=12.5),
    ],
    ids=lambda spec: spec.kind,
)
def test_round_trip_through_json(spec: ModalitySpec) -> None:
    assert ModalitySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_depth_scale_is_written_only_for_depth() -> None:
    assert ModalitySpec("rgb", "rgb").to_dict() == {"name": "rgb", "kind": "rgb"}
    assert ModalitySpec("depth", "depth").to_dict() == {
        "name": "depth",
        "kind": "depth",
        "depth_scale": 100.0,
    }


def test_kinds_are_the_documented_three() -> None:
    assert KINDS == ("rgb", "gray", "depth")


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": "rgb", "kind": "colour"},
        {"name": "", "kind": "rgb"},
        {"name": "has space", "kind": "rgb"},
        {"name": 3, "kind": "rgb"},
        {"name": "depth", "kind": "depth", "depth_scale": 0},
        {"name": "depth", "kind": "depth", "depth_scale": -1.0},
        {"name": "depth", "kind": "depth", "depth_scale": math.nan},
        {"name": "depth", "kind": "depth", "depth_scale": math.inf},
        {"name": "depth", "kind": "depth", "depth_scale": "100"},
        {"name": "depth", "kind": "depth", "depth_scale": True},
    ],
)
def test_invalid_specs_are_rejected(arguments: dict) -> None:
    with pytest.raises(ModalityError) as caught:
        ModalitySpec(**arguments)
    assert caught.value.code == "invalid_spec"


@pytest.mark.parametrize(
    "data",
    [{"name": "rgb", "kind": "rgb", "scale": 1}, {"name": "rgb"}, ["rgb", "rgb"]],
    ids=["unknown-key", "missing-kind", "not-an-object"],
)
def test_from_dict_rejects_malformed_data(data: object) -> None:
    with pytest.raises(ModalityError) as caught:
        ModalitySpec.from_dict(data)
    assert caught.value.code == "invalid_spec"


def test_spec_is_frozen_and_hashable() -> None:
    spec = ModalitySpec("rgb", "rgb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "gray"  # type: ignore[misc]
    assert len({spec, ModalitySpec("rgb", "rgb")}) == 1


def test_error_is_a_value_error_with_a_stable_code() -> None:
    error = ModalityError("empty_file", "the file is empty")
    assert isinstance(error, ValueError)
    assert error.code == "empty_file" and error.code is ErrorCode.EMPTY_FILE
    assert error.to_dict() == {"code": "empty_file", "message": "the file is empty"}
    assert json.dumps(error.to_dict()) == '{"code": "empty_file", "message": "the file is empty"}'
    with pytest.raises(ValueError):
        ModalityError("no_such_code", "typo in a code is a programming error")


def test_error_survives_pickling_between_processes() -> None:
    restored = pickle.loads(pickle.dumps(ModalityError("truncated_image", "PNG data ends early")))
    assert isinstance(restored, ModalityError)
    assert restored.to_dict() == {"code": "truncated_image", "message": "PNG data ends early"}


def test_error_messages_are_one_bounded_line() -> None:
    error = ModalityError("corrupt_image", "decoder said:\n  line one\n\tline two " + "x" * 1000)
    assert "\n" not in error.message and "\t" not in error.message
    assert error.message.startswith("decoder said: line one line two")
    assert len(error.message) <= 300
