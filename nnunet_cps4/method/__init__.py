"""The method layer: CPS4 in plain torch, no nnU-Net imports.

Class prompts and text encoders give one embedding per class; the VLM turns an image into per-class
similarity maps; the attention losses train it (stage (i)); fusion turns its maps into one label map, and the
pseudo-label rule combines that map with the teacher's prediction (stage (ii)).
"""
