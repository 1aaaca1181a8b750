"""Stock nnU-Net finds the plugin's trainers through nnUNet_extTrainer, beside a user's own trainer folders."""
import os
import subprocess
import sys
import textwrap

from nnunet_cps4.nnunet.discovery import EXT_TRAINER_FOLDER, ext_trainer_value

BIN = os.path.dirname(sys.executable)


def test_console_script_prints_the_folder_and_appends_to_the_users_value(tmp_path):
    out = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_ext_trainer_path")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == EXT_TRAINER_FOLDER and os.path.isfile(os.path.join(out, "nnunet_cps4_trainers.py"))
    # only the shim lives there: nnU-Net imports every module of the folder
    assert [f for f in os.listdir(out) if f.endswith(".py")] == ["nnunet_cps4_trainers.py"]
    env = dict(os.environ, nnUNet_extTrainer=f"/my/trainers{os.pathsep}/more")
    export = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_ext_trainer_path"), "--export"], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert export == f"export nnUNet_extTrainer='/my/trainers{os.pathsep}/more{os.pathsep}{EXT_TRAINER_FOLDER}'"
    # idempotent: evaluating it twice does not add the folder twice
    assert ext_trainer_value(ext_trainer_value("")) == EXT_TRAINER_FOLDER


def test_nnunet_lookup_finds_ours_and_the_users_trainers(tmp_path):
    user = tmp_path / "my_trainers"
    user.mkdir()
    (user / "my_lab_trainers.py").write_text(textwrap.dedent("""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        class nnUNetTrainerMyLab(nnUNetTrainer):
            pass
    """))
    code = textwrap.dedent("""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        for name in ("nnUNetTrainerMyLab", "nnUNetTrainerCPS4", "nnUNetTrainerMeanTeacher_5epochs",
                     "nnUNetTrainerCPS4_noTokenLoss_50epochs", "nnUNetTrainerSupervised_250epochs",
                     "nnUNetTrainerCPS4_warmupDiceVeto", "nnUNetTrainerMeanTeacher_smoke"):
            try:
                print(name, find(name).__module__)
            except RuntimeError:
                print(name, "not found")
        import sys
        print("heavy:", [m for m in ("transformers", "open_clip") if m in sys.modules])
    """)
    env = dict(os.environ, nnUNet_extTrainer=ext_trainer_value(str(user)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("nnUNet", "heavy")))
    assert lines["nnUNetTrainerMyLab"] == "my_lab_trainers"
    assert lines["nnUNetTrainerCPS4"] == "nnunet_cps4.nnunet.trainers.cps4"
    assert lines["nnUNetTrainerCPS4_noTokenLoss_50epochs"] == "nnunet_cps4.nnunet.trainers.registry"
    assert lines["nnUNetTrainerSupervised_250epochs"] == "nnunet_cps4.nnunet.trainers.registry"
    # experiments and the benchmark's CPU schedules stay out of the user's namespace
    assert lines["nnUNetTrainerCPS4_warmupDiceVeto"] == lines["nnUNetTrainerMeanTeacher_smoke"] == "not found"
    # predict imports the trainer module: the text/VLM stack must not come with it
    assert lines["heavy:"] == "[]"
