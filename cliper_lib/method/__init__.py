"""The paper and nothing else: the layer walk, early-layer fusion, text, SD attention capture and
extraction, the fine-grained refinement, labels, and the stage graph that wires them
(`stages.GRAPH`, run by `pipeline.CLIPer`).

Models are injected; this package imports only the bottom of `cliper_lib` (config, images, files).
docs/method.md derives every step.
"""
