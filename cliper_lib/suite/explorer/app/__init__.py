"""`cliper app`: the explorer served by one Solara process as a page of its own, the models shared
by every visit (settings from the command line, passed through the environment)."""
