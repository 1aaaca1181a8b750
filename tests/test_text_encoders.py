"""Text encoders: the offline default (sockets blocked), a tiny local HF BERT, a tiny local open_clip model,
class embeddings and spec errors. No model hub is used."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import ClassPrompts, load_class_prompts
from nnunet_cps4.method.text_encoders import (DEFAULT_TEXT_ENCODER, TEXT_ENCODER_ENV, build_text_encoder,
                                       class_text_embeddings)

MRSPINE = {"labels": {"background": 0, "S": 1, "L5": 2, "L4": 3, "L3": 4, "L2": 5, "L1": 6, "T12": 7, "T11": 8,
                      "T10": 9, "T9": 10, "L5/S": 11, "L4/L5": 12, "L3/L4": 13, "L2/L3": 14, "L1/L2": 15,
                      "T12/L1": 16, "T11/T12": 17, "T10/T11": 18, "T9/T10": 19},
           "cps4": {"prompt_file": "mrspineseg"}}
TINY_CLIP = "cps4-tiny-test-clip"


class _NoNetwork:
    """Every socket connect / DNS lookup is recorded and refused."""

    def __init__(self, mp):
        self.attempts = []

        def refuse(*args, **kwargs):
            self.attempts.append(args[1:2] or args[:1])
            raise OSError("network access blocked by the test")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.delenv(var, raising=False)


@pytest.fixture(scope="module")
def default_encoder():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(TEXT_ENCODER_ENV, raising=False)
        net = _NoNetwork(mp)
        enc = build_text_encoder()
        emb = enc.encode(["fourth lumbar vertebra (L4)"])
        assert net.attempts == [], f"default text encoder tried the network: {net.attempts}"
    return enc, emb


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer
    folder = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "sacrum", "lumbar", "thoracic", "vertebra",
             "disc", "between", "and", "fourth", "fifth", "(", ")", "l4", "l5", "s"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    # transformers 5: BertTokenizer(vocab_file=...) silently ignores the file; from_pretrained reads vocab.txt.
    tok = BertTokenizer.from_pretrained(str(folder))
    assert tok("the sacrum")["input_ids"] == [2, 5, 6, 3]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder / "model"))
    tok.save_pretrained(str(folder / "model"))
    return folder / "model"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    folder = tmp_path_factory.mktemp("tiny_clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg_file = folder / f"{TINY_CLIP}.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(cfg_file))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, device="cpu").eval()
    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), str(weights))
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer(TINY_CLIP)(["sacrum (S)", "L4/L5"]))
    return cfg_file, weights, ref


# ---------------------------------------------------------------- default encoder
def test_default_encoder_offline_384d(default_encoder):
    enc, emb = default_encoder
    assert enc.spec == DEFAULT_TEXT_ENCODER and enc.dim == 384
    assert emb.shape == (1, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not emb.requires_grad and not enc.model.training
    assert all(not p.requires_grad for p in enc.model.parameters())
    assert torch.allclose(enc.encode(["fourth lumbar vertebra (L4)"]), emb, atol=1e-5)


def test_default_encoder_same_class_prompts_are_closer(default_encoder):
    enc, _ = default_encoder
    cp = load_class_prompts(MRSPINE)
    unrelated = torch.nn.functional.normalize(enc.encode(["banana bread recipe", "electric guitar solo",
                                                          "weather forecast for tomorrow"]), dim=1)
    within, across = [], []
    for name in ("S", "L4", "T12", "L4/L5"):
        e = torch.nn.functional.normalize(enc.encode(cp.prompts[name]), dim=1)
        sim = e @ e.T
        n = len(e)
        within.append((sim.sum() - n) / (n * (n - 1)))
        across.append((e @ unrelated.T).mean())
    assert min(within) > max(across) + 0.1, (within, across)


def test_class_text_embeddings(default_encoder):
    enc, _ = default_encoder
    cp = load_class_prompts(MRSPINE)
    t = class_text_embeddings(cp, enc)
    assert t.shape == (19, 384) and t.dtype == torch.float32
    assert torch.allclose(t.norm(dim=1), torch.ones(19), atol=1e-5)
    # row i is the normalised mean of class i's normalised prompt embeddings
    e = torch.nn.functional.normalize(enc.encode(cp.prompts["L4"]), dim=1).mean(0)
    assert torch.allclose(t[cp.class_names.index("L4")], e / e.norm(), atol=1e-5)


# ---------------------------------------------------------------- tiny local HF model
def test_tiny_hf_folder(tiny_bert, monkeypatch):
    net = _NoNetwork(monkeypatch)
    enc = build_text_encoder("hf:" + str(tiny_bert))
    texts = ["the sacrum (s)", "disc between l4 and l5", "fourth lumbar vertebra"]
    a = enc.encode(texts)
    assert enc.dim == 32 and a.shape == (3, 32) and a.dtype == torch.float32
    assert torch.equal(a, build_text_encoder("hf:" + str(tiny_bert)).encode(texts))
    cls = build_text_encoder(f"hf:{tiny_bert}?pooling=cls").encode(texts)
    pooler = build_text_encoder(f"hf:{tiny_bert}?pooling=pooler").encode(texts)
    assert cls.shape == pooler.shape == (3, 32) and not torch.allclose(a, cls)
    cp = ClassPrompts(["A", "B"], [1, 2], {"A": texts[:2], "B": texts[2:]}, "test")
    assert class_text_embeddings(cp, enc).shape == (2, 32)
    assert net.attempts == []


def test_env_var_overrides_default_only(tiny_bert, monkeypatch):
    monkeypatch.setenv(TEXT_ENCODER_ENV, "hf:" + str(tiny_bert))
    assert build_text_encoder().dim == 32
    monkeypatch.setenv(TEXT_ENCODER_ENV, "nonsense")
    with pytest.raises(CPS4Error, match=TEXT_ENCODER_ENV):
        build_text_encoder()
    assert build_text_encoder("hf:" + str(tiny_bert)).spec == "hf:" + str(tiny_bert)


# ---------------------------------------------------------------- tiny local open_clip model
def test_tiny_open_clip_from_weights_file(tiny_clip, monkeypatch):
    cfg_file, weights, ref = tiny_clip
    net = _NoNetwork(monkeypatch)
    enc = build_text_encoder(f"open_clip:{TINY_CLIP}:{weights}")
    out = enc.encode(["sacrum (S)", "L4/L5"])
    assert enc.dim == 16 and out.shape == (2, 16) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6)  # the saved weights were loaded, not a random init
    assert torch.equal(out, enc.encode(["sacrum (S)", "L4/L5"]))
    # a model-config .json path registers the architecture itself
    enc2 = build_text_encoder(f"open_clip:{cfg_file}:{weights}")
    assert torch.allclose(enc2.encode(["sacrum (S)", "L4/L5"]), ref, atol=1e-6)
    assert net.attempts == []


# ---------------------------------------------------------------- errors and import-lightness
def test_bad_specs(tmp_path, tiny_clip):
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ("bert-base-uncased", "unknown text encoder spec"),
        ("hf:", "names no model"),
        ("hf:/no/such/folder", "local folder /no/such/folder does not exist"),
        (f"hf:{empty}", "has no config.json"),
        (f"hf:{a_file}", "is a file"),
        (f"hf:{empty}?pooling=max", "unknown option"),
        ("open_clip:no-such-model", "unknown open_clip model 'no-such-model'"),
        (f"open_clip:{TINY_CLIP}:/no/such/weights.pt", "weights file /no/such/weights.pt not found"),
        (f"open_clip:{TINY_CLIP}:notatag", "neither a weights file nor a pretrained tag"),
        ("open_clip:local-dir:/no/such/dir", "open_clip_config.json"),
    ]
    for spec, expected in cases:
        with pytest.raises(CPS4Error) as e:
            build_text_encoder(spec)
        msg = str(e.value)
        assert expected in msg and "Fix" in msg and repr(spec) in msg, (spec, msg)


def test_modules_are_import_light():
    code = ("import sys, nnunet_cps4.method.prompts, nnunet_cps4.method.text_encoders; "
            "print(sorted(m for m in ('transformers', 'open_clip', 'nnunetv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"
