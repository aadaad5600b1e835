"""CLIPer (arXiv 2411.13836) as a thin, tested library, in layers that only import downwards:

    suite/    the command line, the papermill runner, the notebook runtime, the widget explorer,
    plots eval/     data sets, the metric, the evaluation loop with checkpoints, result records and
    reports weights/  where model weights come from (hub cache, local files, tiny random models);
    CLIPer.from_config method/   the paper and nothing else: each stage a function of tensors, wired
    once in method/stages.py config, images, files, provenance   (the bottom: settings, the one
    image loader, atomic files, records)

`from cliper_lib import CLIPer, CLIPerConfig` is all a user needs; docs/method.md derives the method
and docs/architecture.md shows the layers. Importing the package changes nothing in the process: the
command line asks for huge pages (`cliper_lib.heap.request_huge_pages`), a script may call it
itself.
"""

__version__ = "0.1.0"
__all__ = ["CLIPer", "CLIPerConfig", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so `import cliper_lib.config` (and the command line's --help) stays
    # light.
    if name == "CLIPer":
        from .weights.models import CLIPer

        return CLIPer
    if name == "CLIPerConfig":
        from .config import CLIPerConfig

        return CLIPerConfig
    raise AttributeError(f"module 'cliper_lib' has no attribute {name!r}")
