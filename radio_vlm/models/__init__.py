"""The model code that `save_pretrained(export_code=True)` copies next to the weights.

Flat on purpose: these files import only each other (relative imports) plus torch and transformers, so a
folder with them loads with `trust_remote_code=True` where radio_vlm is not installed.
"""
