"""Evaluation: data sets (the 8 benchmarks, any folder, a synthetic set), the confusion-matrix
metric, the evaluation loop with checkpoints and a per-sample hook, result records, reports, and
`cliper eval` (runner).
"""
