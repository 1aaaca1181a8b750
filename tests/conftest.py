"""Shared fixtures: every test gets its own nnU-Net folders and the 2-core CPU settings (DESIGN.md section 3)."""
import os

import pytest


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results under tmp_path, exported to this process."""
    paths = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / var
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
        paths[var] = str(folder)
    monkeypatch.setenv("nnUNet_def_n_proc", "2")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "false")
    return paths
