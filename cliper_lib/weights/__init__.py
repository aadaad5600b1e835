"""Where model weights come from: open_clip and diffusers loading through the Hugging Face hub cache
or local files (paper profile), tiny random models built from configs (smoke profile), and the clear
error when offline.

`CLIPer.from_config(cfg)` (from `models`) builds both models of a config and wraps them in the
method.
"""
