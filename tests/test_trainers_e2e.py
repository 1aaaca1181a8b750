"""The trainers through nnU-Net's own console scripts, the way a user runs them.

One toy dataset (5 labeled, 4 unlabeled, 2 test cases) is planned once; every test trains short-schedule
variants (`_smoke`: 2 epochs x 10 iterations) with `nnUNetv2_train`, resumes with `--c`, validates with `--val`
and predicts with the stock `nnUNetv2_predict`. The tests of this module build on each other's models (the
mean teacher's, the stage-(i) VLM): they run in order, in one worker; end-to-end tests that need none of them are in
test_trainers_standalone_e2e.py.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_commands import BIN, DATASET, cli, dice_on_test_set, load, model_folder, predict, train


def test_mean_teacher_trains_predicts_and_keeps_the_checkpoint_contract(env, tmp_path):
    train(env, "nnUNetTrainerMeanTeacher_smoke")
    fold = os.path.join(model_folder(env, "nnUNetTrainerMeanTeacher_smoke"), "fold_0")
    for f in ("checkpoint_final.pth", "progress.png", "progress_semi_supervised.png", "validation/summary.json"):
        assert os.path.isfile(os.path.join(fold, f)), f
    ckpt = load(os.path.join(fold, "checkpoint_final.pth"))
    # network_weights is the student alone: exactly the keys of the stock network nnU-Net builds at predict time
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_cps4.nnunet.trainers.mean_teacher import nnUNetTrainerMeanTeacher
    pm = PlansManager(os.path.join(model_folder(env, "nnUNetTrainerMeanTeacher_smoke"), "plans.json"))
    net = nnUNetTrainerMeanTeacher.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3, False)
    assert set(ckpt["network_weights"]) == set(net.state_dict())
    state = ckpt["cps4_state"]
    assert state["global_step"] == 20
    assert set(state["teacher_weights"]) == set(net.state_dict())
    assert any(not torch.equal(state["teacher_weights"][k], ckpt["network_weights"][k])
               for k in ckpt["network_weights"]), "the EMA teacher must differ from the student"
    log = open([os.path.join(fold, f) for f in os.listdir(fold) if f.startswith("training_log")][0]).read()
    assert "ssl_lambda" in log and "teacher_confidence" in log
    assert len(ckpt["logging"]["ssl_lambda"]) == 2

    files = predict(env, "nnUNetTrainerMeanTeacher_smoke", str(tmp_path / "pred"))
    assert files == ["t10.nii.gz", "t9.nii.gz"]
    pred = sitk.ReadImage(str(tmp_path / "pred" / "t9.nii.gz"))
    ref = sitk.ReadImage(os.path.join(env["nnUNet_raw"], DATASET, "labelsTs", "t9.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and pred.GetSpacing() == ref.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
    assert dice_on_test_set(env, str(tmp_path / "pred")) > 0.2

    # the benchmark's pseudo-label analysis scores a mean-teacher checkpoint on its teacher alone
    from nnunet_cps4.experiments.pseudo_label_quality import pseudo_label_quality
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    quality = pseudo_label_quality(model_folder(env, "nnUNetTrainerMeanTeacher_smoke"), "0",
                                   {"t9": [os.path.join(raw, "imagesTs", "t9_0000.nii.gz")]},
                                   {"t9": os.path.join(raw, "labelsTs", "t9.nii.gz")})
    assert set(quality["mean_Dice"]) == {"teacher"} and 0.0 <= quality["mean_Dice"]["teacher"] <= 1.0
    assert "teacher_text_agreement" not in quality
    assert quality["foreground_volume_ratio"]["teacher"] > 0  # it segments t9 (Dice > 0.2 above)

    # --val reruns the final validation from checkpoint_final
    os.remove(os.path.join(fold, "validation", "summary.json"))
    train(env, "nnUNetTrainerMeanTeacher_smoke", "0", "2d", "--val")
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))


def _kill_after_first_checkpoint(env, trainer, fold_folder):
    """Start training, SIGKILL it as soon as checkpoint_latest.pth is complete; return that checkpoint."""
    latest = os.path.join(fold_folder, "checkpoint_latest.pth")
    proc = subprocess.Popen([os.path.join(BIN, "nnUNetv2_train"), "501", "2d", "0", "-tr", trainer, "-device",
                             "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(latest):
            try:
                ckpt = load(latest)
                if "cps4_state" in ckpt:
                    break
            except Exception:  # still being written
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "training ended or timed out before writing checkpoint_latest.pth"
    assert not os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")), "killed too late"
    return ckpt


def test_killed_mean_teacher_resumes_with_its_teacher(env, monkeypatch):
    fold = os.path.join(model_folder(env, "nnUNetTrainerMeanTeacher_smoke"), "fold_0")
    shutil.rmtree(os.path.dirname(fold), ignore_errors=True)
    latest = _kill_after_first_checkpoint(env, "nnUNetTrainerMeanTeacher_smoke", fold)
    assert latest["current_epoch"] == 1 and latest["cps4_state"]["global_step"] == 10

    # what --c restores, checked in-process: the saved teacher and step, not a copy of the student
    from nnunetv2.run.run_training import get_trainer_from_args
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(k, env[k])
    t = get_trainer_from_args("501", "2d", 0, "nnUNetTrainerMeanTeacher_smoke", continue_training=True,
                              device=torch.device("cpu"))
    t.load_checkpoint(os.path.join(fold, "checkpoint_latest.pth"))
    teacher = t.teacher.state_dict()
    for k, v in latest["cps4_state"]["teacher_weights"].items():
        assert torch.equal(teacher[k], v)
    student = t.unwrapped_student().state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    assert t.global_step == 10 and t.current_epoch == 1

    train(env, "nnUNetTrainerMeanTeacher_smoke", "0", "2d", "--c")
    final = load(os.path.join(fold, "checkpoint_final.pth"))
    assert final["cps4_state"]["global_step"] == 20
    assert len(final["logging"]["ssl_lambda"]) == 2
    # the log says that it resumed, from which file and epoch, and what was restored
    logs = "".join(open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log"))
    assert f"Resumed from {os.path.join(fold, 'checkpoint_latest.pth')} at epoch 1; restored: student, optimizer, " \
           f"teacher, step 10" in logs

    # a checkpoint truncated by a kill: one line naming the file and the fix, not a zip-reader traceback
    os.rename(os.path.join(fold, "checkpoint_final.pth"), os.path.join(fold, "final.bak"))
    data = open(os.path.join(fold, "final.bak"), "rb").read()
    with open(os.path.join(fold, "checkpoint_latest.pth"), "wb") as f:
        f.write(data[:len(data) // 2])
    result = train(env, "nnUNetTrainerMeanTeacher_smoke", "0", "2d", "--c", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "checkpoint_latest.pth is damaged" in last and "Fix:" in last, last


def test_stage1_console_script_then_cps4_predicts(env, tmp_path):
    cli("nnUNetv2_cps4_pretrain_vlm", 501, "2d", 0, "-tr", "nnUNetTrainerCPS4VLM_smoke", "-device", "cpu", env=env)
    vlm_fold = os.path.join(model_folder(env, "nnUNetTrainerCPS4VLM_smoke"), "fold_0")
    for f in ("checkpoint_final.pth", "progress.png", "validation_vlm/summary.json"):
        assert os.path.isfile(os.path.join(vlm_fold, f)), f
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(vlm_fold, "validation_vlm")))
    with open(os.path.join(vlm_fold, "validation_vlm", "summary.json")) as f:
        assert set(json.load(f)["fused_map_dice_per_class"]) == {"a", "b"}
    vlm_ckpt = load(os.path.join(vlm_fold, "checkpoint_final.pth"))
    assert vlm_ckpt["cps4_state"]["vlm_metadata"]["text_encoder"] == "hf:all-MiniLM-L6-v2-builtin"
    assert len(vlm_ckpt["logging"]["token_loss"]) == 2

    result = train(env, "nnUNetTrainerCPS4_smoke")
    assert "Stage-(i) VLM loaded" in result.stdout and "No stage-(i) VLM" not in result.stdout
    fold = os.path.join(model_folder(env, "nnUNetTrainerCPS4_smoke"), "fold_0")
    ckpt = load(os.path.join(fold, "checkpoint_final.pth"))
    state = ckpt["cps4_state"]
    assert state["vlm_metadata"]["class_names"] == ["a", "b"]
    assert "vlm_weights" in state and "teacher_weights" in state
    assert not any(k.startswith("vlm") or "text" in k for k in ckpt["network_weights"])
    # the rule's statistics of the whole-case labels; the VLM's Dice on the labeled batch needs a VLM pass per
    # batch, which the default (whole-case labels, stored VLM votes) does not make
    for key in ("teacher_text_agreement", "refined_fraction", "teacher_confidence"):
        assert len(ckpt["logging"][key]) == 2 and not np.isnan(ckpt["logging"][key][-1])
    assert np.isnan(ckpt["logging"]["vlm_dice_labeled"][-1])
    assert os.path.isfile(os.path.join(fold, "pseudo_labels_epoch_0001.png"))

    # the stock predictor, from the model folder, on the student alone
    out = tmp_path / "pred"
    cli("nnUNetv2_predict_from_modelfolder", "-i", os.path.join(env["nnUNet_raw"], DATASET, "imagesTs"),
        "-o", out, "-m", model_folder(env, "nnUNetTrainerCPS4_smoke"), "-f", 0, "-device", "cpu", "-npp", 1,
        "-nps", 1, env=env)  # this entry point needs at least one export worker
    assert sorted(f for f in os.listdir(out) if f.endswith(".nii.gz")) == ["t10.nii.gz", "t9.nii.gz"]

    # the VLM's own fused maps, for inspection
    vlm_out = tmp_path / "vlm"
    cli("nnUNetv2_cps4_predict_vlm", "-i", os.path.join(env["nnUNet_raw"], DATASET, "imagesTs"), "-o", vlm_out,
        "-d", 501, "-c", "2d", "-f", 0, "-tr", "nnUNetTrainerCPS4VLM_smoke", "-device", "cpu", env=env)
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(vlm_out / "t9.nii.gz")))
    assert fused.shape == (4, 32, 16) and set(np.unique(fused)) <= {0, 1, 2}


def test_cps4_resume_uses_the_checkpointed_vlm(env):
    """--c needs no stage-(i) folder: the VLM comes back from the CPS4 checkpoint, bit for bit."""
    fold = os.path.join(model_folder(env, "nnUNetTrainerCPS4_smoke"), "fold_0")
    vlm_dir = model_folder(env, "nnUNetTrainerCPS4VLM_smoke")
    if not os.path.isdir(vlm_dir):
        pytest.skip("needs the stage-(i) run of test_stage1_console_script_then_cps4_predicts")
    shutil.rmtree(fold, ignore_errors=True)
    latest = _kill_after_first_checkpoint(env, "nnUNetTrainerCPS4_smoke", fold)
    moved = vlm_dir + "_moved"
    os.rename(vlm_dir, moved)
    try:
        result = train(env, "nnUNetTrainerCPS4_smoke", "0", "2d", "--c")
        assert "No stage-(i) VLM" not in result.stdout
        final = load(os.path.join(fold, "checkpoint_final.pth"))
        for k, v in latest["cps4_state"]["vlm_weights"].items():
            assert torch.equal(final["cps4_state"]["vlm_weights"][k], v)
        assert final["cps4_state"]["global_step"] == 20
    finally:
        os.rename(moved, vlm_dir)


def test_cps4_with_precomputed_vlm_maps_stores_the_vlms_fused_maps_and_reuses_them(env):
    """The pretrained encoder's mode (here forced on the scratch VLM, for speed): the VLM's vote on every unlabeled
    case is computed once, is the VLM's own fused map, and a resumed run reuses it."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
    from nnunet_cps4.nnunet.checkpoints import load_vlm
    from nnunet_cps4.nnunet.vlm_map_cache import decode_vote
    from nnunet_cps4.nnunet.vlm_prediction import fused_case_prediction, vlm_predictor

    vlm_fold = os.path.join(model_folder(env, "nnUNetTrainerCPS4VLM_smoke"), "fold_0")
    if not os.path.isfile(os.path.join(vlm_fold, "checkpoint_final.pth")):
        pytest.skip("needs the stage-(i) run of test_stage1_console_script_then_cps4_predicts")
    trainer = "nnUNetTrainerCPS4_precomputed_smoke"
    result = train(env, trainer)
    assert "Stage-(i) VLM loaded" in result.stdout and "VLM maps: 4/4 unlabeled cases" in result.stdout
    maps = os.path.join(model_folder(env, trainer), "fold_0", "vlm_maps")
    with open(os.path.join(maps, "manifest.json")) as f:
        assert json.load(f)["cases"] == ["u5", "u6", "u7", "u8"]
    ckpt = load(os.path.join(model_folder(env, trainer), "fold_0", "checkpoint_final.pth"))
    assert np.isnan(ckpt["logging"]["vlm_dice_labeled"][-1])  # no VLM pass in training
    assert not np.isnan(ckpt["logging"]["teacher_text_agreement"][-1])

    pre = os.path.join(env["nnUNet_preprocessed"], DATASET)
    pm = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    cm = pm.get_configuration("2d")
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    vlm, _ = load_vlm(os.path.join(vlm_fold, "checkpoint_final.pth"), cm, torch.device("cpu"))
    predictor = vlm_predictor(vlm, pm, cm, dataset_json, torch.device("cpu"))
    stored = nnUNetDatasetBlosc2(os.path.join(pre, "nnUNetPlans_2d_unlabeled"),
                                 folder_with_segs_from_previous_stage=maps)
    data, _, codes, _ = stored.load_case("u6")
    _, fused = fused_case_prediction(predictor, torch.from_numpy(np.asarray(data[:])).float(), PseudoLabelRule())
    y_text, vote = decode_vote(torch.from_numpy(np.asarray(codes[:]))[None], 2)
    assert np.array_equal(y_text[0].numpy(), fused)
    assert ((vote.sum(1) >= 0) & (vote.sum(1) <= 1)).all()

    stamp = os.stat(os.path.join(maps, "u6.b2nd")).st_mtime_ns
    result = train(env, trainer, "0", "2d", "--c")
    assert "VLM maps of 4 unlabeled case(s) reused" in result.stdout
    assert os.stat(os.path.join(maps, "u6.b2nd")).st_mtime_ns == stamp


def test_cps4_with_whole_case_teacher_labels_stores_vlm_refined_labels_and_predicts(env, tmp_path):
    """whole_case_teacher_labels: when the unlabeled loss starts (epoch 1 of 2) the teacher labels every unlabeled
    case whole, the VLM's stored votes refine them (a fired, disagreeing VLM pixel is never kept as the teacher's
    class), and the loader trains on them; the student predicts with the stock command."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnunet_cps4.nnunet.teacher_label_cache import decode_labels
    from nnunet_cps4.nnunet.vlm_map_cache import decode_vote

    if not os.path.isfile(os.path.join(model_folder(env, "nnUNetTrainerCPS4VLM_smoke"), "fold_0",
                                       "checkpoint_final.pth")):
        pytest.skip("needs the stage-(i) run of test_stage1_console_script_then_cps4_predicts")
    trainer = "nnUNetTrainerCPS4_wholeCase_smoke"
    result = train(env, trainer)
    assert "VLM maps: 4/4 unlabeled cases" in result.stdout
    fold = os.path.join(model_folder(env, trainer), "fold_0")
    log = open([os.path.join(fold, f) for f in os.listdir(fold) if f.startswith("training_log")][0]).read()
    assert "teacher labels of 4 whole unlabeled case(s)" in log and "(epoch 1;" in log
    with open(os.path.join(fold, "teacher_labels", "manifest.json")) as f:
        assert json.load(f)["cases"] == ["u5", "u6", "u7", "u8"]
    unlabeled = os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans_2d_unlabeled")
    for case in ("u5", "u8"):
        labels = nnUNetDatasetBlosc2(unlabeled, folder_with_segs_from_previous_stage=os.path.join(
            fold, "teacher_labels")).load_case(case)[2]
        codes = nnUNetDatasetBlosc2(unlabeled, folder_with_segs_from_previous_stage=os.path.join(
            fold, "vlm_maps")).load_case(case)[2]
        labels = decode_labels(torch.from_numpy(np.asarray(labels[:]))[None, None], 3)[0, 0]
        y_text = decode_vote(torch.from_numpy(np.asarray(codes[:]))[None], 2)[0][0]
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3}
        kept_where_fired = (labels != 3) & (y_text > 0)
        assert torch.equal(labels[kept_where_fired], y_text[kept_where_fired])
    ckpt = load(os.path.join(fold, "checkpoint_final.pth"))
    assert ckpt["logging"]["ssl_lambda"][-1] > 0 and ckpt["logging"]["unlabeled_loss"][-1] != 0
    assert ckpt["cps4_state"]["settings"]["whole_case_teacher_labels"] is True
    assert predict(env, trainer, str(tmp_path / "pred")) == ["t10.nii.gz", "t9.nii.gz"]


def test_cps4_refuses_a_vlm_trained_with_other_prompts(env, tmp_path):
    vlm_dir = model_folder(env, "nnUNetTrainerCPS4VLM_smoke")
    if not os.path.isdir(vlm_dir):
        pytest.skip("needs the stage-(i) run of test_stage1_console_script_then_cps4_predicts")
    # fold 1 gets fold 0's VLM (trained with the label-name template prompts); this run asks for other prompts
    shutil.rmtree(os.path.join(vlm_dir, "fold_1"), ignore_errors=True)
    shutil.copytree(os.path.join(vlm_dir, "fold_0"), os.path.join(vlm_dir, "fold_1"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"format": "cps4-class-prompts/1",
                                   "classes": {"a": ["first box"], "b": ["second box"]}}))
    result = train(dict(env, nnUNet_cps4_prompts=str(prompts)), "nnUNetTrainerCPS4_smoke", "1", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "prompt_fingerprint" in last and os.path.join("fold_1", "checkpoint_final.pth") in last and "Fix" in last
