"""weakpaste.models.weights: the meaning of a --weights value, parsed and resolved once."""

from __future__ import annotations

import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.models.weights import (
    WeightsSource,
    is_default,
    is_none,
    parse_weights,
    resolve_weights,
)


@pytest.mark.parametrize(("text", "value"), [("none", None), ("None", None), ("NONE", None),
                                             ("DEFAULT", "DEFAULT"), ("w.pth", "w.pth")])
def test_parse_weights(text, value):
    assert parse_weights(text) == value


def test_is_none_and_is_default():
    assert is_none(None) and is_none("none") and not is_none("DEFAULT")
    assert is_default("DEFAULT") and is_default("default") and not is_default(None)


def test_resolve_weights(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert resolve_weights(None) == WeightsSource("none")
    assert not resolve_weights("none").pretrained
    assert resolve_weights("DEFAULT") == WeightsSource("default")
    assert resolve_weights(str(path)) == WeightsSource("file", path)
    assert resolve_weights(path).pretrained


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeakpasteError) as err:
        resolve_weights(str(path))
    assert str(err.value) == (f"{path}: weights file not found; pass --weights PATH to a "
                              f"torchvision state_dict, --weights DEFAULT or --weights none")
