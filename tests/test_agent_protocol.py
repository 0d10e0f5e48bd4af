"""The HSM agent's wire helpers (no token needed): errors keep their class, the PIN hides."""

from __future__ import annotations

import pytest

from kms_hsm.crypto.agent.protocol import AgentConfig, decode_error, encode_error
from kms_hsm.errors import BackendUnavailable, DecryptionFailed, KeyMaterialMissing


@pytest.mark.parametrize(
    "error",
    [
        DecryptionFailed(log_detail="tag mismatch"),
        BackendUnavailable(log_detail="x"),
        KeyMaterialMissing(log_detail="object gone"),
    ],
)
def test_agent_errors_keep_class_message_and_detail(error) -> None:
    decoded = decode_error(encode_error(error))
    assert type(decoded) is type(error)
    assert (decoded.message, decoded.log_detail) == (error.message, error.log_detail)


def test_unexpected_agent_errors_become_503_and_unknown_names_too() -> None:
    assert isinstance(decode_error(encode_error(ValueError("boom"))), BackendUnavailable)
    assert isinstance(decode_error(("NoSuchClass", "m", None)), BackendUnavailable)
    assert isinstance(decode_error(("AgentConfig", "m", None)), BackendUnavailable)


def test_agent_config_repr_hides_the_pin() -> None:
    config = AgentConfig("/lib.so", "kms-hsm", "123456-secret", 5.0, "INFO")
    assert "123456-secret" not in repr(config)
