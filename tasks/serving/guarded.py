"""The model server behind HTTP basic auth: `kaizen serve-model` with credentials set.

MLflow's scoring server has no authentication of its own, and `mlflow models serve` starts it by name
(`uvicorn mlflow.pyfunc.scoring_server.app:app`), leaving no place for one. So kaizen runs that same app (built by
MLflow's `scoring_server.init` from the same model folder, loaded as it loads it) under uvicorn itself, wrapped in
this check: every request must carry MLflow's credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD,
the pair `kaizen up` makes the tracking server's admin), except the health checks a load balancer sends.
The credentials stay in the environment: never on the command line, where `ps` would show them.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from typing import Any

from kaizen.tasks.runtime.security import MLFLOW_PASSWORD, MLFLOW_USER

MODEL_FOLDER = "KAIZEN_SERVED_MODEL"  # the model folder the server loads (tasks/serving/champion.py sets it)
OPEN_PATHS = frozenset({"/ping", "/health"})  # answer whether the model is loaded, nothing more


class BasicAuth:
    """An ASGI app answering 401 to any request without the user and password, passing the others to `app`."""

    def __init__(self, app: Any, user: str, password: str) -> None:
        self.app, self.user, self.password = app, user.encode(), password.encode()

    def allowed(self, header: bytes | None) -> bool:
        scheme, _, encoded = (header or b"").partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # both compared, each in constant time: the answer's timing tells nothing about either
        return bool(colon) & secrets.compare_digest(user, self.user) & secrets.compare_digest(password, self.password)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or \
                self.allowed(dict(scope["headers"]).get(b"authorization")):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"www-authenticate", b'Basic realm="kaizen model", charset="UTF-8"'), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"authentication required\n"})


def app() -> BasicAuth:
    """The guarded scoring app (`uvicorn --factory kaizen.tasks.serving.guarded:app`)."""
    from mlflow.pyfunc import scoring_server

    user, password = os.environ.get(MLFLOW_USER), os.environ.get(MLFLOW_PASSWORD)
    if not (user and password):
        raise RuntimeError(f"the guarded model server needs {MLFLOW_USER} and {MLFLOW_PASSWORD} in its environment")
    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_FOLDER])
    return BasicAuth(scoring_server.init(model), user, password)
