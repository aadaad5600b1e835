"""The suite around the method, in rooms that import only downwards (pyproject.toml's contracts):

cli/       the command line: every argument parser and `main` (the `cliper` command)
runs/      running things headlessly: `cliper segment | demo` over images, the papermill runner,
           its run plans and records, and the runtime every notebook imports
explorer/  the widget explorer (controls, figures, export) and `cliper app`, its Solara page
studies/   what the notebooks measure: locality per layer, refinements side by side, layer
           ranges
toolkit/   what the rooms share: plots, the bundled sample photos, the background-word rule, the
           stage cache, and the one writer of a segmented image's files
"""
