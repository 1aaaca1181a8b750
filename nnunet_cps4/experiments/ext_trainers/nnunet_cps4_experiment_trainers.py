"""Shim read by nnU-Net's `nnUNet_extTrainer` lookup during benchmark runs (see nnunet_cps4/experiments/variants.py).

It only re-exports; the classes live in the installed module `nnunet_cps4.experiments.variants`, so they stay
importable after nnU-Net removes this module from sys.modules.
"""
from nnunet_cps4.experiments.variants import *  # noqa: F401,F403
