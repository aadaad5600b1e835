"""The paper and nothing else: each step of the method, and the stage graph that wires them.

The steps: the layer walk, early-layer fusion, text, SD attention capture and extraction, the
fine-grained refinement, labels. The graph is `stages.GRAPH`, run by `pipeline.CLIPer`.

Models are injected; this package imports only the bottom of `cliper_lib` (config, images, files).
docs/method.md derives every step.
"""
