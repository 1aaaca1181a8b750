"""The class-prompt VLM for one nnU-Net configuration: its vision branch built from the plans (a U-Net with
`embed_dim` output channels) or a ViT (2d only), joined with the class-prompt embeddings."""
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.vlm import VISION_BRANCHES, ClassPromptVLM, VLMConfig, ViTDense, load_vision_weights


def build_vision_branch(config: VLMConfig, configuration_manager, num_input_channels: int) -> nn.Module:
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
    else:
        raise CPS4Error(f"VLMConfig.vision={config.vision!r} is unknown. Fix: choose one of {VISION_BRANCHES}")
    if config.vision_weights:
        load_vision_weights(vision, config)
    return vision


def build_vlm(config: VLMConfig, configuration_manager, num_input_channels: int,
              text_features: torch.Tensor) -> ClassPromptVLM:
    return ClassPromptVLM(build_vision_branch(config, configuration_manager, num_input_channels),
                          text_features, config)
