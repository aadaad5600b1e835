"""CLIPer (arXiv 2411.13836) as a thin, tested library, in layers that only import downwards:

    suite/    cli (the command line), runs (segment/demo, papermill runner, notebook runtime),
              explorer (widgets, app), studies (notebook analyses),
              toolkit (plots, samples, stage cache)
    eval/     data sets, the metric, the evaluation loop with checkpoints, result records, reports
    weights/  model weights (hub cache, local files, tiny random models); CLIPer.from_config
    method/   the paper and nothing else: each stage a function of tensors, wired once in stages.py
    config, images, files, provenance
              the bottom: settings, the one image loader, atomic files, records

`from cliper_lib import CLIPer, CLIPerConfig` is all a user needs; docs/method.md derives the
method and docs/architecture.md shows the layers.

Importing the package changes nothing in the process: the command line asks for huge pages
(`cliper_lib.heap.request_huge_pages`) and keeps freed memory for reuse
(`cliper_lib.heap.keep_freed_memory`), and a script may call them itself.
"""

__version__ = "0.1.0"
__all__ = ["CLIPer", "CLIPerConfig", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import cliper_lib.config` (and the command line's --help) stays light.
    if name == "CLIPer":
        from .weights.models import CLIPer

        return CLIPer
    if name == "CLIPerConfig":
        from .config import CLIPerConfig

        return CLIPerConfig
    raise AttributeError(f"module 'cliper_lib' has no attribute {name!r}")
