"""A normal (non-editable) install ships what the package reads at run time."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_prompts_and_the_trainer_shim(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(tmp_path / "site"), REPO], check=True, capture_output=True)
    package = tmp_path / "site" / "nnunet_cps4"
    assert (package / "text_prompts" / "mrspineseg.json").is_file()
    assert (package / "text_prompts" / "README.md").is_file()
    assert (package / "nnunet" / "ext_trainers" / "nnunet_cps4_trainers.py").is_file()
    # the installed copy finds its shipped prompt file through importlib.resources
    code = ("from nnunet_cps4.method.prompts import shipped_prompt_files; import nnunet_cps4; "
            "print(nnunet_cps4.__file__); print(shipped_prompt_files())")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")),
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert str(package) in out and "mrspineseg" in out
