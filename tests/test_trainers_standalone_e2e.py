"""End-to-end trainer tests that need no model of another test (run beside test_trainers_e2e.py): CPS4 on
3d_fullres, and the fold check on a dataset with too few labeled cases."""
import os
import shutil

from nnunet_commands import EXT_TRAINERS, cli, model_folder, predict, train
from toy_data import make_toy_dataset


def test_cps4_trains_and_predicts_3d_fullres(env, tmp_path):
    result = train(env, "nnUNetTrainerCPS4_tick", "all", "3d_fullres")
    assert "No stage-(i) VLM" in result.stdout  # the single command runs stage (i) first
    files = predict(env, "nnUNetTrainerCPS4_tick", str(tmp_path / "pred3d"), "3d_fullres", "all")
    assert files == ["t10.nii.gz", "t9.nii.gz"]
    assert os.path.isfile(os.path.join(model_folder(env, "nnUNetTrainerCPS4VLM_tick", "3d_fullres"), "fold_all",
                                       "checkpoint_final.pth"))


def test_too_few_labeled_cases_for_a_fold_is_a_clear_error(tmp_path):
    e = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
             nnUNet_results=str(tmp_path / "res"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
             nnUNet_extTrainer=EXT_TRAINERS)
    make_toy_dataset(e["nnUNet_raw"], dataset_id=502, n_labeled=2, n_unlabeled=2)
    cli("nnUNetv2_plan_and_preprocess", "-d", 502, "-c", "2d", "-np", 1, "-npfp", 1, env=e)
    e["nnUNet_n_proc_DA"] = "0"
    result = cli("nnUNetv2_train", 502, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher_smoke", "-device", "cpu",
                 env=e, check=False)
    assert result.returncode != 0
    assert "2 labeled case(s)" in result.stderr and "fold 'all'" in result.stderr
    # CPS4 checks the fold and the unlabeled images before it trains stage (i), and names the trainer the user ran
    result = cli("nnUNetv2_train", 502, "2d", 0, "-tr", "nnUNetTrainerCPS4_smoke", "-device", "cpu", env=e,
                 check=False)
    assert result.returncode != 0 and "-tr nnUNetTrainerCPS4_smoke" in result.stderr.strip().splitlines()[-1]
    shutil.rmtree(os.path.join(e["nnUNet_raw"], "Dataset502_Toy", "imagesUnlabeled"))
    result = cli("nnUNetv2_train", 502, "2d", "all", "-tr", "nnUNetTrainerCPS4_smoke", "-device", "cpu", env=e,
                 check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "imagesUnlabeled does not exist" in last and "Fix" in last, last
    results = os.path.join(e["nnUNet_results"], "Dataset502_Toy")
    assert not any(d.startswith("nnUNetTrainerCPS4VLM") for d in (os.listdir(results) if os.path.isdir(results)
                                                                    else [])), "stage (i) ran before the check"
