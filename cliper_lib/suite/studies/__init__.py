"""What the notebooks measure: `analysis` (notebook 01: spatial locality per layer, query-patch
attention), `refinements` (notebook 04: refinements side by side), `examples` (notebook 05: the best
and worst images of an evaluation) and `layer_sweep` (notebook 06 and the paper plan: fused layer
ranges scored on images with ground truth)."""
