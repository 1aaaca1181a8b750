"""Shared fixtures: every test gets its own nnU-Net folders and the 2-core CPU settings (docs/ARCHITECTURE.md)."""
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


@pytest.fixture(scope="session")
def planned_toy(tmp_path_factory):
    """A toy dataset (5 labeled, 4 unlabeled, 2 test) planned and preprocessed by stock nnU-Net for 2d and
    3d_fullres, shared by the test modules; tests that change it work on copies. Returns an environment dict."""
    import subprocess
    import sys

    from toy_data import make_toy_dataset

    base = tmp_path_factory.mktemp("planned_toy")
    env = dict(os.environ, nnUNet_raw=str(base / "raw"), nnUNet_preprocessed=str(base / "pre"),
               nnUNet_results=str(base / "res"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="1",
               nnUNet_compile="false", PYTHONUNBUFFERED="1")
    env.pop("nnUNet_cps4_prompts", None)
    env.pop("nnUNet_cps4_text_encoder", None)
    make_toy_dataset(env["nnUNet_raw"], n_test=2)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"), "-d", "501",
                    "-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1"], env=env, check=True, capture_output=True)
    env["nnUNet_n_proc_DA"] = "0"  # training: augmentation in the main process (2 cores)
    return env


@pytest.fixture(scope="module")
def env(planned_toy):
    """The shared planned toy dataset (2d, 3d_fullres) with nnUNet_extTrainer finding the plugin's trainers and the
    benchmark's short schedules (`_smoke`), for tests that run nnU-Net's console scripts (nnunet_commands.py)."""
    from nnunet_commands import EXT_TRAINERS

    return dict(planned_toy, nnUNet_extTrainer=EXT_TRAINERS)
