"""The widget explorer: `widgets.Explorer` (observers, updates, history) showing an `ExplorerState`
(`state`), its `controls` and `moves` (what each control recomputes, the record of a move), `view`
(figures, panels, status line), `export` (files and the command that reproduces them), and `app/`,
the Solara page `cliper app` serves."""
