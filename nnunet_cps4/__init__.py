"""nnunet-cps4: CPS4 (class-prompt driven semi-supervised spine segmentation) for nnU-Net v2.

Kept import-light on purpose: nnU-Net imports the trainer module at predict time, and the text/VLM stack is
only imported where it is used.
"""
__version__ = "0.1.0"
