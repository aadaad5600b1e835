"""The Solara page module `cliper app` serves: each visit's `Page` is its own `AppPage` (controls,
explorer, stage cache) over the models the server loaded once.

Imported by the Solara server only (it needs Solara); the settings come from the environment
`cliper app` set (`AppSettings.from_environment`).
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as W
import solara

from .dropzone import PhotoDrop
from .page import AppPage
from .server import EXPORTS_ROUTE
from .settings import AppSettings


def export_link(settings: AppSettings):
    """file in the export folder -> its URL on this server (the folder is served at
    EXPORTS_ROUTE)."""
    root = Path(settings.out).resolve()

    def link_of(path: Path) -> str:
        return f"{EXPORTS_ROUTE}/{Path(path).resolve().relative_to(root).as_posix()}"

    return link_of


class Visit:
    """One visit's page: the explorer's page and the drop/paste listener above it."""

    def __init__(self):
        settings = AppSettings.from_environment()
        self.page = AppPage(settings, link_of=export_link(settings))
        self.drop = PhotoDrop(self.received)
        self.widget = W.VBox([self.drop, self.page.widget])

    def received(self, name: str, content: bytes) -> None:
        explorer = self.page.explorer
        if explorer is not None and not explorer.busy:
            explorer.receive_file(name, content)

    def start(self) -> None:
        self.page.load()
        self.page.first_result()


@solara.component
def Page():
    """One visit: the controls at once, then (in a thread of this visit) the models and the first
    result."""
    visit = solara.use_memo(Visit, [])
    solara.use_thread(visit.start, dependencies=[])
    solara.Title("CLIPer explorer")
    solara.display(visit.widget)
