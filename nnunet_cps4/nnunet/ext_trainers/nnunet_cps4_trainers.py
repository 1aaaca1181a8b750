"""Shim read by nnU-Net's `nnUNet_extTrainer` lookup (see nnunet_cps4/discovery.py).

It only re-exports; the trainer classes live in the installed package `nnunet_cps4.nnunet.trainers`, so they stay
importable after nnU-Net removes this module from sys.modules.
"""
from nnunet_cps4.nnunet.trainers.registry import *  # noqa: F401,F403
