"""CLIPer (arXiv 2411.13836) as a thin, tested library: each stage a pure function of tensors.

Data flow: image -> clip_backbone (X_i, A_i) -> fusion (S_k, S_c) -> sd_attention (head maps) -> refine (S_f)
-> labels -> metrics. `pipeline.CLIPer` wires the stages and returns every intermediate; `config.CLIPerConfig`
holds every knob; `cli` is the command line.
"""

__version__ = "0.1.0"
