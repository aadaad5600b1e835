"""Serve the app with Solara in this process (README "The app"): one server, the models loaded once
and shared by every visit, each visit its own explorer.

Why one process (measured in benchmarks/README.md "app"): a Voila visit is a kernel that imports
torch and loads its own models (about 1.1 GB on the smoke profile, 5.8 GB on the paper one), so five
reloads on a laptop run out of memory; here a visit costs its widgets and its stage cache. Model
calls take turns (`page.COMPUTE_LOCK`); the others see a busy state.

Server settings, and why:
- the socket is bound here, before anything loads: a port in use or out of range fails with one
  line, and the address printed is the one served;
- `SOLARA_KERNEL_CULL_TIMEOUT` (`--cull-idle-after`, default 60 s): a visit whose page went away
  without saying so (a closed laptop, a killed browser) is dropped after that long; a closed tab
  says so and is dropped at once;
- the page's JavaScript, CSS and fonts come from the `solara-assets` package through Solara's asset
  proxy (`SOLARA_ASSETS_PROXY`), and the proxy's upstream is pointed at a closed local port, so a
  missing asset fails here instead of being fetched from the internet; Solara's telemetry is off;
- `--host 127.0.0.1` unless told otherwise: the app is for this machine; sharing it is a choice.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import webbrowser
from collections.abc import Mapping, Sequence
from pathlib import Path

from .settings import AppSettings

#: seconds a visit with no page connected is kept (closed tabs are dropped at once).
CULL_IDLE_SECONDS = 60
#: the Solara page module (its `Page` component is each visit's page).
SOLARA_APP = "cliper_lib.suite.explorer.app.session"
#: where the export folder is served from (download links point here).
EXPORTS_ROUTE = "/cliper-exports"
#: Solara's asset proxy fetches a missing asset from this "CDN": a closed port on this machine.
OFFLINE_CDN = "http://127.0.0.1:9/"


def check_port(port: int | None) -> int:
    """The port to bind: 0 (any free one) for None; one clear line for anything out of range."""
    if port is None:
        return 0
    if not 1 <= port <= 65535:
        raise ValueError(
            f"--port {port} is out of range: use 1-65535, or leave it out for a free one"
        )
    return port


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket on `host`:`port` (a free port for None), or one line saying why not."""
    wanted = check_port(port)
    try:
        infos = socket.getaddrinfo(host, wanted, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"--host {host!r} is not an address of this machine ({error})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ValueError(
                f"port {wanted} on {host} is in use: pick another --port, or leave it out for a "
                f"free one"
            ) from None
        raise ValueError(f"cannot listen on {host}:{wanted}: {error.strerror}") from None
    sock.listen(128)
    return sock


def served_url(sock: socket.socket, host: str) -> str:
    """The address the socket actually serves (the real port, IPv6 hosts bracketed)."""
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def solara_environment(cull_idle: int) -> dict[str, str]:
    """Solara's settings for the app (read by Solara when it is imported)."""
    return {
        "SOLARA_APP": SOLARA_APP,
        "SOLARA_MODE": "production",
        "SOLARA_TELEMETRY_MIXPANEL_ENABLE": "False",
        "SOLARA_ASSETS_PROXY": "True",
        "SOLARA_ASSETS_CDN": OFFLINE_CDN,
        "SOLARA_KERNEL_CULL_TIMEOUT": f"{max(int(cull_idle), 1)}s",
        "SOLARA_THEME_LOADER": "plain",
    }


def app_settings(
    cfg_preset: str,
    profile: str | None,
    device: str | None,
    dtype: str | None,
    images: Sequence[Path],
    classes: str | None,
    background: str | None,
    out: str,
    refinement: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> AppSettings:
    """Settings with absolute paths (the page may run in another folder)."""
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
        refinement=refinement,
        overrides=dict(overrides or {}),
    )


def _mount_exports(app, folder: Path) -> None:
    """Serve the export folder as files at EXPORTS_ROUTE (before Solara's catch-all page route)."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    folder.mkdir(parents=True, exist_ok=True)
    app.router.routes.insert(0, Mount(EXPORTS_ROUTE, app=StaticFiles(directory=folder)))


def _preload(settings: AppSettings) -> None:
    """Load the models while the first visitor's page draws (errors show on the page instead)."""
    from .page import PAGE_ERRORS, load_model

    try:
        load_model(settings)
    except PAGE_ERRORS:
        pass


def serve(
    settings: AppSettings,
    port: int | None,
    open_browser: bool,
    host: str = "127.0.0.1",
    cull_idle: int = CULL_IDLE_SECONDS,
) -> None:
    """Serve the app until Ctrl-C: bind first (one line when the port is taken), then Solara."""
    sock = bind(host, port)
    url = served_url(sock, host)
    os.environ.update({**settings.to_environment(), **solara_environment(cull_idle)})
    # Solara reads its settings from the environment when imported: only now
    import uvicorn
    from solara.server.starlette import app

    _mount_exports(app, Path(settings.out))
    threading.Thread(target=_preload, args=(settings,), daemon=True).start()
    print(
        f"cliper app: {url} (profile {settings.profile or 'paper'}, preset {settings.preset}); "
        f"models loaded once for every visit; Ctrl-C stops it",
        flush=True,
    )
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
