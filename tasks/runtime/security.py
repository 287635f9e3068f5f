"""Who may talk to the servers `kaizen up` starts: nobody from another web page, and nobody at all without
credentials once they listen beyond this machine.

- CORS: each server answers cross-origin requests only from its own address (Prefect's default is `*`; MLflow's
  is any localhost origin), so no web page a browser visits can drive the servers behind its user's back.
- Authentication: with PREFECT_API_AUTH_STRING (`user:password`, Prefect's own setting) and
  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's own) in the environment, `kaizen up` starts the
  Prefect server with that auth string and MLflow's basic-auth app with that admin (no permission for anyone
  else); every kaizen command, MLflow client and Prefect client of that environment then sends them.
- With `servers.host` other than a loopback address, `kaizen up` refuses to start without both.
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


@dataclass(frozen=True)
class Credentials:
    prefect_auth: str | None  # user:password
    mlflow_user: str | None
    mlflow_password: str | None

    @property
    def complete(self) -> bool:
        return bool(self.prefect_auth and ":" in self.prefect_auth and self.mlflow_user and self.mlflow_password)


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
    """Refuse to open servers to the network without credentials (Unprotected names what to set)."""
    host = ws.settings.servers.host
    if loopback(host) or credentials().complete:
        return
    raise Unprotected(
        f"servers.host is {host!r}, not a loopback address: kaizen up will not open the Prefect and MLflow servers "
        f"to the network without authentication. Set {PREFECT_AUTH}=user:password and {MLFLOW_USER}, "
        f"{MLFLOW_PASSWORD} (at least 12 characters) in the environment of kaizen up and of every kaizen command, "
        "worker and browser session that uses them; or keep servers.host at 127.0.0.1")


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
