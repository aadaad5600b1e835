"""The suite around the method: the command line (every argument parser lives in `cli`), the papermill runner
and its run plans, the runtime notebooks import, the widget explorer and its stage cache, analysis and plots.
"""
