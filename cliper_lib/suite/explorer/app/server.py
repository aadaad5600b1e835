"""Start Voila on the app notebook with the settings of `cliper app` (README "The app").

Server settings, and why:
- `--VoilaConfiguration.progressive_rendering=True`: the page shows the controls as soon as the cell
  displays them, instead of after the whole notebook has run.
- `--MappingKernelManager.cull_idle_timeout` (default 600 s, `--cull-idle-after`) and
  `cull_interval` (60 s): each visit gets a kernel holding its own models; a kernel idle that long
  with no page connected is shut down, so closed visits free their memory. `cull_connected` stays
  False: an open tab keeps its kernel, however idle.
- `--Voila.ip=127.0.0.1` unless `--host` says otherwise: the app is for this machine; sharing it is
  a choice.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .settings import AppSettings

CULL_IDLE_SECONDS = 600
CULL_INTERVAL_SECONDS = 60


def notebook_path() -> Path:
    """The app notebook shipped inside the package."""
    return Path(str(resources.files(__package__) / "app.ipynb"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def voila_command(
    port: int,
    open_browser: bool,
    host: str = "127.0.0.1",
    cull_idle: int = CULL_IDLE_SECONDS,
    cull_interval: int = CULL_INTERVAL_SECONDS,
) -> list[str]:
    """The Voila command line that serves the app notebook."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook_path()),
        f"--port={port}",
        f"--Voila.ip={host}",
        f"--Voila.open_browser={open_browser}",
        "--VoilaConfiguration.progressive_rendering=True",
        f"--MappingKernelManager.cull_idle_timeout={cull_idle}",
        f"--MappingKernelManager.cull_interval={min(cull_interval, max(cull_idle, 1))}",
        "--MappingKernelManager.cull_connected=False",
    ]


def app_settings(
    cfg_preset: str,
    profile: str | None,
    device: str | None,
    dtype: str | None,
    images: Sequence[Path],
    classes: str | None,
    background: str | None,
    out: str,
) -> AppSettings:
    """Settings with absolute paths (the kernel runs in the notebook's folder, not here)."""
    return AppSettings(
        preset=str(Path(cfg_preset).resolve())
        if Path(cfg_preset).suffix in (".yaml", ".yml")
        else cfg_preset,
        profile=profile,
        device=device,
        dtype=dtype,
        images=[str(Path(p).resolve()) for p in images],
        classes=classes,
        background=background,
        out=str(Path(out).resolve()),
    )


def serve(
    settings: AppSettings,
    port: int | None,
    open_browser: bool,
    host: str = "127.0.0.1",
    cull_idle: int = CULL_IDLE_SECONDS,
) -> None:
    """Replace this process with the Voila server (so stopping `cliper app` stops the server and its
    kernels)."""
    port = port or free_port()
    command = voila_command(port, open_browser, host, cull_idle)
    env = {**os.environ, **settings.to_environment()}
    print(
        f"cliper app: http://{host}:{port}/ (profile {settings.profile or 'paper'}, "
        f"preset {settings.preset}); "
        f"idle kernels culled after {cull_idle} s; Ctrl-C stops it",
        flush=True,
    )
    os.execve(sys.executable, command, env)
