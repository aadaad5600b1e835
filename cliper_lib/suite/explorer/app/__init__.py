"""`cliper app`: the explorer served by Voila as a page of its own (app.ipynb, settings from the
environment)."""
