"""Where Prefect keeps its state and which API the user set up, read without importing Prefect
(the import costs a second, and a command decides from this whether it needs the shared local
server of flows/ops/local_server.py at all)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def configured_api_url() -> str | None:
    """The Prefect API the user set up, if any, from the sources Prefect reads it from, without
    importing Prefect (which costs a second): ``PREFECT_API_URL``; ``.env``, ``prefect.toml``
    (``[api] url``) and ``pyproject.toml`` (``[tool.prefect.api] url``) in the working directory;
    the active profile in ``profiles.toml`` (``PREFECT_PROFILES_PATH``, else
    ``PREFECT_HOME/profiles.toml``; the profile ``PREFECT_PROFILE`` names, else its ``active``).
    """
    if url := os.environ.get("PREFECT_API_URL"):
        return url

    def toml(path: Path) -> dict:
        try:
            return tomllib.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def dig(data: dict, *keys: str):
        for key in keys:
            data = data.get(key) if isinstance(data, dict) else None
        return data if isinstance(data, str) and data else None

    try:
        for line in Path(".env").read_text().splitlines():
            key, _, value = line.strip().removeprefix("export ").partition("=")
            if key.strip() == "PREFECT_API_URL" and value.strip().strip("'\""):
                return value.strip().strip("'\"")
    except (OSError, UnicodeDecodeError):
        pass
    if url := dig(toml(Path("prefect.toml")), "api", "url") or dig(toml(Path("pyproject.toml")), "tool", "prefect", "api", "url"):
        return url
    profiles = toml(Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser())
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    return dig(profiles, "profiles", name or "", "PREFECT_API_URL")
