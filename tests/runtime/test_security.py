"""tasks/runtime/security.py: off loopback, `kaizen up` and `kaizen serve-model` take only credentials that will
do (set, and passwords of 12+ characters), and the refusal names which one falls short without repeating it."""

from __future__ import annotations

import pytest

from kaizen.tasks.runtime import security
from kaizen.tasks.workspace.layout import Workspace

GOOD = {security.PREFECT_AUTH: "kaizen:prefect-secret-4711", security.MLFLOW_USER: "kaizen-admin",
        security.MLFLOW_PASSWORD: "mlflow-secret-4711"}


@pytest.fixture
def given(monkeypatch):
    """Set these credentials (None: unset) over the good ones."""

    def set_them(**changes: str | None) -> None:
        for name, value in {**GOOD, **{security.__dict__[k]: v for k, v in changes.items()}}.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return set_them


def test_up_off_loopback_refuses_short_or_malformed_credentials_naming_which(copy_workspace, given) -> None:
    ws = copy_workspace({}, servers__host="0.0.0.0")
    given()
    security.check(ws)  # 12+ characters each: open
    for changes, named in (({"PREFECT_AUTH": "a:b"}, "the password in PREFECT_API_AUTH_STRING has 1 characters"),
                           ({"PREFECT_AUTH": "kaizen-without-a-colon"}, "PREFECT_API_AUTH_STRING is not user:password"),
                           ({"MLFLOW_PASSWORD": "short-pass"}, "MLFLOW_TRACKING_PASSWORD has 10 characters"),
                           ({"MLFLOW_USER": None}, "MLFLOW_TRACKING_USERNAME is not set")):
        given(**changes)
        with pytest.raises(security.Unprotected, match="not a loopback address") as caught:
            security.check(ws)
        message = str(caught.value)
        assert named in message and "at least 12 characters" in message, message
        assert not [v for v in changes.values() if v and v in message]  # the weak value itself is never shown
    given(PREFECT_AUTH="a:b", MLFLOW_PASSWORD="x")
    security.check(Workspace(ws.root, ws.settings.with_overrides({"servers.host": "127.0.0.1"})))  # loopback: open


def test_the_model_server_off_loopback_needs_mlflows_pair_only(given) -> None:
    given(PREFECT_AUTH=None)
    security.check_model_server("0.0.0.0")
    given(PREFECT_AUTH=None, MLFLOW_PASSWORD="hunter2")
    with pytest.raises(security.Unprotected, match="MLFLOW_TRACKING_PASSWORD has 7 characters") as caught:
        security.check_model_server("0.0.0.0")
    assert "kaizen serve-model will not serve the model" in str(caught.value)
    assert "PREFECT_API_AUTH_STRING" not in str(caught.value)
    security.check_model_server("localhost")
