"""The model server that `kaizen serve-model` runs: MLflow's own scoring app, recording what it answers, behind HTTP
basic auth when credentials are set.

`mlflow models serve` starts MLflow's scoring server by name (`uvicorn mlflow.pyfunc.scoring_server.app:app`),
leaving no place for anything around it. So kaizen runs that same app (built by MLflow's `scoring_server.init` from
the same model folder, loaded as it loads it) under uvicorn itself, wrapped in
- `Capture`: each answered `POST /invocations` is handed to the capture writer (tasks/serving/capture.py) as the
  bytes that went in and out; the writer's thread decodes them with MLflow's own request parser and writes them,
  so the request pays one queue put. It wraps the HTTP app rather than the model: the model's code
  (tasks/model/served_model.py) is logged into every version and runs in Docker images too, where no workspace is.
- `BasicAuth`, with credentials set: every request must carry MLflow's credentials (MLFLOW_TRACKING_USERNAME /
  MLFLOW_TRACKING_PASSWORD, the pair `kaizen up` makes the tracking server's admin), except the health checks a
  load balancer sends. Without them the app is built only for a loopback host (security.check_model_server).
The credentials stay in the environment: never on the command line, where `ps` would show them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import secrets
from typing import Any

from kaizen.tasks.runtime import security
from kaizen.tasks.runtime.security import MLFLOW_PASSWORD, MLFLOW_USER
from kaizen.tasks.serving.capture import CaptureWriter

# What tasks/serving/champion.py's serve_command tells the server, in its environment:
MODEL_FOLDER = "KAIZEN_SERVED_MODEL"  # the model folder the server loads
SERVED_VERSION = "KAIZEN_SERVED_VERSION"  # its registered version, recorded with every answer
SERVED_HOST = "KAIZEN_SERVED_HOST"  # where it listens: no open server beyond loopback
WORKSPACE = "KAIZEN_WORKSPACE"  # the workspace whose capture settings and store it uses (as `-w` reads it)
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


class Capture:
    """An ASGI app passing everything to `app`, and each answered `POST /invocations` to `writer`: the request's
    body, content type and answer, decoded later by `decode` on the writer's thread. At the server's shutdown
    (the ASGI lifespan) the writer writes what waits."""

    def __init__(self, app: Any, writer: CaptureWriter, decode: Any) -> None:
        self.app, self.writer, self.decode = app, writer, decode

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing(receive), send)
            return
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body: list[bytes] = []
        answer: list[bytes] = []
        answered = [False]

        async def receiving() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered[0] = message["status"] == 200
            await send(message)
            if answered[0] and message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
                if not message.get("more_body"):
                    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
                    self.writer.submit(lambda: self.decode(b"".join(body), content_type, b"".join(answer)))

        await self.app(scope, receiving, sending)

    def _closing(self, receive: Any) -> Any:
        async def receiving() -> dict:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.writer.close)
            return message

        return receiving


def exchange_decoder(model: Any) -> Any:
    """(request body, content type, answer body) -> (texts, answers), parsed as MLflow's scoring server parsed the
    request (its own functions: the texts are the ones the model saw)."""
    from io import BytesIO, StringIO

    from mlflow.pyfunc import scoring_server

    from kaizen.tasks.model.servable import TEXT

    schema = model.metadata.get_input_schema()

    def decode(body: bytes, content_type: str, answer: bytes) -> tuple[list, list[dict]]:
        kind = content_type.split(";")[0].strip()
        if kind == scoring_server.CONTENT_TYPE_CSV:
            data = scoring_server.parse_csv_input(StringIO(body.decode("utf-8")), schema=schema)
        elif kind == scoring_server.CONTENT_TYPE_PARQUET:
            data = scoring_server.parse_parquet_input(BytesIO(body))
        else:  # JSON: what else was answered with a 200
            data = scoring_server._parse_json_data(body, model.metadata, schema).data
        return list(data[TEXT]), json.loads(answer)["predictions"]

    return decode


def app() -> Any:
    """The served app (`uvicorn --factory kaizen.tasks.serving.guarded:app`), from serve_command's environment."""
    from mlflow.pyfunc import scoring_server

    from kaizen.tasks.serving import capture
    from kaizen.tasks.workspace.layout import Workspace

    user, password = os.environ.get(MLFLOW_USER), os.environ.get(MLFLOW_PASSWORD)
    if not (user and password):
        security.check_model_server(os.environ.get(SERVED_HOST, ""))  # open: loopback only
    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_FOLDER])
    served: Any = scoring_server.init(model)
    writer = capture.writer(Workspace.open(os.environ[WORKSPACE]), "serve", os.environ[SERVED_VERSION])
    if writer is not None:
        served = Capture(served, writer, exchange_decoder(model))
    return BasicAuth(served, user, password) if user and password else served
