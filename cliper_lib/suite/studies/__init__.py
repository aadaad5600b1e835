"""What the notebooks measure and draw: `analysis` (notebooks 01 and 03: spatial locality per layer,
query-patch attention), `refinements` (notebook 04: refinements side by side, the threshold sweep),
`examples` (notebook 05: the best and worst images of an evaluation), `layer_sweep` (notebook 06
and the paper plan: fused layer ranges scored on images with ground truth), `figures` (the
notebooks' multi-step figures) and `teaching` (the exercises' checks, the smoke label threshold)."""
