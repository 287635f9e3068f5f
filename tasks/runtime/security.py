"""Who may talk to the servers `kaizen up` starts: nobody from another web page, and nobody at all without
credentials once they listen beyond this machine.

- CORS: each server answers cross-origin requests only from its own address (Prefect's default is `*`; MLflow's
  is any localhost origin), so no web page a browser visits can drive the servers behind its user's back.
- Authentication: with PREFECT_API_AUTH_STRING (`user:password`, Prefect's own setting) and
  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's own) in the environment, `kaizen up` starts the
  Prefect server with that auth string and MLflow's basic-auth app with that admin (no permission for anyone
  else); every kaizen command, MLflow client and Prefect client of that environment then sends them.
- With `servers.host` other than a loopback address, `kaizen up` refuses to start without both, or with a password
  (Prefect's after the colon, MLflow's) of fewer than 12 characters; `kaizen serve-model` off loopback refuses
  likewise without MLflow's pair, which its auth front then asks of every caller (tasks/serving/guarded.py).
Credentials stay in the environment: never in params.yaml (committed), a deployment (stored on the server) or a
log line. The auth store of MLflow's admin is `.kaizen/servers/mlflow-auth.db`; the admin's password is fixed
the first time the server starts (MLflow's rule): change it with MLflow's update-password API.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass

from kaizen.tasks.workspace.layout import Workspace

PREFECT_AUTH = "PREFECT_API_AUTH_STRING"
MLFLOW_USER, MLFLOW_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


class Unprotected(RuntimeError):
    """The servers would listen beyond this machine without authentication."""


MIN_PASSWORD = 12  # characters: short enough to type, long enough that guessing over the network is hopeless


@dataclass(frozen=True)
class Credentials:
    prefect_auth: str | None  # user:password
    mlflow_user: str | None
    mlflow_password: str | None

    def weaknesses(self, prefect: bool = True) -> list[str]:
        """What is missing or too short, each named by its variable (never its value); [] when they will do.
        `prefect`: whether Prefect's auth string counts (not for the model server, which takes MLflow's pair)."""
        problems = []
        if prefect:
            user, colon, password = (self.prefect_auth or "").partition(":")
            if not self.prefect_auth:
                problems.append(f"{PREFECT_AUTH} is not set")
            elif not (colon and user):
                problems.append(f"{PREFECT_AUTH} is not user:password")
            elif len(password) < MIN_PASSWORD:
                problems.append(f"the password in {PREFECT_AUTH} has {len(password)} characters")
        if not self.mlflow_user:
            problems.append(f"{MLFLOW_USER} is not set")
        if not self.mlflow_password:
            problems.append(f"{MLFLOW_PASSWORD} is not set")
        elif len(self.mlflow_password) < MIN_PASSWORD:
            problems.append(f"{MLFLOW_PASSWORD} has {len(self.mlflow_password)} characters")
        return problems


def credentials() -> Credentials:
    return Credentials(os.environ.get(PREFECT_AUTH), os.environ.get(MLFLOW_USER), os.environ.get(MLFLOW_PASSWORD))


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check(ws: Workspace) -> None:
    """Refuse to open `kaizen up`'s servers to the network without credentials (Unprotected names what to set)."""
    _refuse_unprotected(ws.settings.servers.host, "kaizen up will not open the Prefect and MLflow servers",
                        f"{PREFECT_AUTH}=user:password and {MLFLOW_USER}, {MLFLOW_PASSWORD}", prefect=True)


def check_model_server(host: str) -> None:
    """Refuse to serve a model beyond this machine without MLflow's credentials, which its callers must then send."""
    _refuse_unprotected(host, "kaizen serve-model will not serve the model", f"{MLFLOW_USER} and {MLFLOW_PASSWORD}",
                        prefect=False)


def _refuse_unprotected(host: str, refusal: str, wanted: str, prefect: bool) -> None:
    problems = credentials().weaknesses(prefect)
    if loopback(host) or not problems:
        return
    raise Unprotected(
        f"servers.host is {host!r}, not a loopback address: {refusal} to the network without authentication "
        f"({'; '.join(problems)}). Set {wanted} (passwords of at least {MIN_PASSWORD} characters) in the "
        "environment of this command and of every kaizen command, worker and client that uses it; or keep "
        "servers.host at 127.0.0.1")


def hardening(ws: Workspace, name: str, url: str) -> tuple[list[str], dict[str, str]]:
    """Extra command-line arguments and environment of one server: CORS limited to its own address, and
    authentication when credentials are set."""
    given = credentials()
    if name == "prefect":
        env = {"PREFECT_SERVER_CORS_ALLOWED_ORIGINS": url}
        if given.prefect_auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = given.prefect_auth
        return [], env
    args = ["--cors-allowed-origins", url]
    if not (given.mlflow_user and given.mlflow_password):
        return args, {}
    config = ws.servers_dir / "basic_auth.ini"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(  # no secret in it: the password goes by the environment
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{ws.servers_dir / 'mlflow-auth.db'}\n"
        f"admin_username = {given.mlflow_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n", encoding="utf-8")
    # The UI's CSRF protection signs with a key: the user's, or a fresh one per start (one server: nothing to share).
    key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    return [*args, "--app-name", "basic-auth"], {"MLFLOW_AUTH_CONFIG_PATH": str(config),
                                                "MLFLOW_AUTH_ADMIN_PASSWORD": given.mlflow_password,
                                                "MLFLOW_FLASK_SERVER_SECRET_KEY": key}
