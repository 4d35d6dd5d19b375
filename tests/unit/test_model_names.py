"""Model and version names, and the settings model control refuses: the rules on their own
(served behaviour: tests/service/test_model_control.py)."""

from __future__ import annotations

import pytest

from contract.model import is_model_name, version_number


def test_name_and_version_rules() -> None:
    for good in ("mlp", "cnn", "my-model_2.onnx", "A", "9lives", "x" * 128):
        assert is_model_name(good), good
    for bad in ("", ".", "..", "../x", "/etc", "a/b", "a\\b", ".hidden", "-x", "a b",
                "x" * 129, "mlp\n", "m²", "é"):  # fmt: skip
        assert not is_model_name(bad), bad
    assert version_number("7") == 7
    assert version_number("9" * 18) == int("9" * 18)
    for bad in ("", "0", "07", "²", "①", "٣", "7 ", "+7", "-1", "1.0", "9" * 19, "9" * 5000):
        assert version_number(bad) is None, bad


def test_settings_refuse_what_model_control_cannot_do() -> None:
    from pydantic import ValidationError

    from services.settings import Settings

    assert str(Settings(model_control="poll").versions) == "latest:1"
    assert str(Settings(model_control="explicit").versions) == "all"
    assert Settings(version_policy="latest:3").versions.latest == 3
    for bad in (
        {"version_policy": "latest:0"},
        {"version_policy": "newest"},
        {"models": ["../x"]},
        {"model_control": "explicit", "workers": 2, "grpc_port": 50051},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]
