"""Colour scales of heatmaps (`viz.heatmap_grid`): a nearly flat map gets a narrow range around its
middle instead of stretched rounding noise, and colour bars read as plain numbers."""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import ScalarFormatter


def widen_flat_scale(im: Any) -> bool:
    """A map whose values differ by < 0.1% of their size gets a colour range of ±0.05% around its
    middle.

    Otherwise matplotlib stretches the rounding noise over the whole colour map and labels the bar
    with an offset (`1e-6+1.4936e-1`); the title then says the map is flat instead.
    """
    lo, hi = im.get_clim()
    if hi - lo >= 1e-3 * max(abs(lo), abs(hi), 1e-6):
        return False
    middle = (lo + hi) / 2
    pad = 5e-4 * max(abs(middle), 1e-3)
    im.set_clim(middle - pad, middle + pad)
    return True


def plain_ticks(colorbar: Any) -> None:
    """Colour-bar ticks as plain numbers (no offset like `1e-6+1.49e-1`; scientific only below
    1e-3)."""
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_powerlimits((-3, 4))
    colorbar.formatter = formatter
    colorbar.update_ticks()
