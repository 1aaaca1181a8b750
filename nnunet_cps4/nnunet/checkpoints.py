"""The plugin's checkpoint format, in one place.

- nnU-Net's contract is kept: `network_weights` is the network alone (for stage (ii) the student), so the stock
  predictor loads it strictly. Everything else a trainer needs to resume (teacher, step counter, settings, the
  VLM) goes under the extra key `cps4_state` (`ExtraCheckpointStateMixin`).
- Checkpoints are written once, atomically: nnU-Net's own `save_checkpoint` serialises its dict into memory, the
  extra state is added, and the file is written under a temporary name and renamed; a kill leaves the previous
  checkpoint intact.
- Reading: `read_checkpoint` loads with `weights_only=True` (tensors, plain containers and numpy scalars only: no
  code runs) and turns a damaged file into one `CPS4Error` naming it and the fix.
- The stage-(i) VLM checkpoint: its metadata (dataset, plans, configuration, fold, classes, prompts, text
  encoder, VLM settings) is checked against the run that wants to use it before its weights are loaded.
"""
import io
import os
from typing import Optional

import numpy as np
import torch
from nnunetv2.paths import nnUNet_results

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.vlm import ClassPromptVLM, VLMConfig
from nnunet_cps4.nnunet.vlm_from_plans import build_vlm

EXTRA_STATE_KEY = "cps4_state"
VLM_METADATA_FORMAT = "cps4-vlm/1"
# what must agree between a VLM checkpoint and the run that wants to use it
METADATA_MUST_MATCH = ("vlm_trainer", "dataset", "plans", "configuration", "fold", "class_names", "label_ids",
                       "prompt_fingerprint", "text_encoder")
# besides tensors and containers, nnU-Net's checkpoints hold numpy scalars (logged values)
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
_SAFE_GLOBALS = [np.dtype, _NUMPY_CORE.multiarray.scalar] + [
    getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "BoolDType")
    if hasattr(np, "dtypes") and hasattr(np.dtypes, name)]


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint's dict, loaded without running code from the file; a CPS4Error for a damaged file."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CPS4Error(f"{path} not found. Fix: check the path, or train first") from None
    except Exception as e:  # truncated zip, wrong file, or content that is not plain data
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CPS4Error(f"{path} is damaged or not a checkpoint of this plugin ({first}). Fix: resume from an "
                        f"earlier checkpoint (move this file away; nnUNetv2_train --c then uses checkpoint_best.pth "
                        f"or checkpoint_latest.pth if present) or restart the training without --c") from None


def write_checkpoint_atomically(checkpoint: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


class ExtraCheckpointStateMixin:
    """nnU-Net's checkpoint plus the trainer's own state under `cps4_state`, written atomically.

    Subclasses implement `extra_checkpoint_state()` and `load_extra_checkpoint_state(state)` (state is None for a
    checkpoint without the key) and may override `resume_summary()` (what a resume restored, for the log).
    """

    def extra_checkpoint_state(self) -> dict:
        raise NotImplementedError

    def load_extra_checkpoint_state(self, state: Optional[dict]) -> None:
        raise NotImplementedError

    def resume_summary(self) -> str:
        return "network, optimizer"

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        buffer = io.BytesIO()  # nnU-Net builds and serialises its dict; we add ours and write the file once
        super().save_checkpoint(buffer)
        buffer.seek(0)
        checkpoint = torch.load(buffer, map_location="cpu", weights_only=False)  # our own bytes, just written
        checkpoint[EXTRA_STATE_KEY] = self.extra_checkpoint_state()
        write_checkpoint_atomically(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if not isinstance(checkpoint, dict):
            checkpoint = read_checkpoint(filename_or_checkpoint)  # damaged or unsafe files stop here
            self.check_checkpoint(checkpoint, filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)
        self.load_extra_checkpoint_state(checkpoint.get(EXTRA_STATE_KEY))
        if not isinstance(filename_or_checkpoint, dict):
            self.print_to_log_file(f"Resumed from {filename_or_checkpoint} at epoch {self.current_epoch}; restored: "
                                   f"{self.resume_summary()}")

    def check_checkpoint(self, checkpoint: dict, where: str) -> None:
        """Refuse a checkpoint before its weights are used (subclasses add their checks)."""
        if "network_weights" not in checkpoint:
            raise CPS4Error(f"{where} has no network_weights: not an nnU-Net checkpoint. Fix: resume from a "
                            f"checkpoint written by nnUNetv2_train")


# --- the stage-(i) VLM checkpoint ---------------------------------------------------------------------------
def check_vlm_metadata(found: Optional[dict], expected: dict, where: str) -> None:
    """CPS4Error listing every field in METADATA_MUST_MATCH where a VLM checkpoint differs from this run."""
    if not isinstance(found, dict) or found.get("format") != VLM_METADATA_FORMAT:
        raise CPS4Error(f"{where}: not a CPS4 VLM checkpoint (no VLM metadata of format {VLM_METADATA_FORMAT}). "
                        f"Fix: train stage (i) with nnUNetv2_cps4_pretrain_vlm")
    diffs = [f"{k}: checkpoint {found.get(k)!r} != this run {expected.get(k)!r}" for k in METADATA_MUST_MATCH
             if k in expected and found.get(k) != expected.get(k)]
    if diffs:
        raise CPS4Error(f"{where} was trained with other settings ({'; '.join(diffs)}). Fix: restore the original "
                        f"settings, or move that VLM folder away and run stage (i) again")


def vlm_metadata_of(checkpoint: dict) -> Optional[dict]:
    return (checkpoint.get(EXTRA_STATE_KEY) or {}).get("vlm_metadata")


def vlm_output_folder(vlm_trainer_name: str, plans_manager, configuration: str, fold) -> str:
    return os.path.join(nnUNet_results, plans_manager.dataset_name,
                        f"{vlm_trainer_name}__{plans_manager.plans_name}__{configuration}", f"fold_{fold}")


def vlm_from_metadata(metadata: dict, weights: dict, configuration_manager) -> ClassPromptVLM:
    """Rebuild a trained VLM from its metadata and state dict (no text encoder needed: the prompt embeddings are
    a buffer of the state dict; the vision weights file only initialised training, so it is not read again)."""
    config = VLMConfig.from_dict({**metadata["vlm_config"], "vision_weights": None})
    vlm = build_vlm(config, configuration_manager, metadata["num_input_channels"],
                    torch.zeros(len(metadata["class_names"]), metadata["text_dim"]))
    vlm.load_state_dict(weights)
    return vlm


def load_vlm(checkpoint_file: str, configuration_manager, device: torch.device, expected: Optional[dict] = None):
    """(VLM in eval mode, metadata) from a stage-(i) checkpoint; its metadata is checked (against `expected`
    when given) before the weights are loaded."""
    checkpoint = read_checkpoint(checkpoint_file)
    metadata = vlm_metadata_of(checkpoint)
    check_vlm_metadata(metadata, expected if expected is not None else {}, checkpoint_file)
    vlm = vlm_from_metadata(metadata, checkpoint["network_weights"], configuration_manager)
    return vlm.to(device).eval(), metadata
