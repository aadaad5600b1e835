"""What the other rooms of the suite share, importing none of them: `viz` (plots, overlays, label
PNGs; `colorbars` for its heatmaps), `samples` (the bundled photos and their suggested classes),
`background` (the background-word rule), `stage_cache` (the method's stages memoised) and `outputs`
(the one writer of a segmented image's files)."""
