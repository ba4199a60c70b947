"""Text encoders (real MiniLM weights, tiny open_clip, hf-text by path) and label prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.features import TEXT_SOURCES, clip_text, label_prompt, load_backbone
from emi_lib.features.text import PROMPT_TEMPLATES, HFTextEncoder, minilm_path


@pytest.fixture(scope="module")
def minilm():
    return load_backbone("text", "minilm")


def _unit_rows(x):
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------
def test_minilm_shapes_norm_and_empty_string(minilm):
    assert (minilm.name, minilm.dim, minilm.modality, minilm.max_length) == ("minilm", 384, "text", 256)
    emb = minilm.encode_texts(["I really admire what she did.", ""])
    assert emb.shape == (2, 384) and emb.dtype == np.float32 and np.isfinite(emb).all()
    _unit_rows(emb)
    assert minilm.encode_texts([]).shape == (0, 384)
    with pytest.raises(ValueError, match="list of strings"):
        minilm.encode_texts("not a list")


def test_minilm_real_weights_rank_similar_sentences_higher(minilm):
    emb = minilm.encode_texts([
        "That is so funny, I can't stop laughing.",
        "Haha, this is hilarious!",
        "The quarterly tax report is due on Monday.",
    ])
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert sims[0, 1] > sims[1, 2] + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(str(minilm_path()), device="cpu")
    texts = ["a person showing strong joy", "", "I will not give up. " * 80]  # last one truncated at 256
    ref = ref_model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(minilm.encode_texts(texts), ref, atol=1e-5)


def test_openclip_tiny_text_tower_is_deterministic():
    enc = load_backbone("text", "openclip-tiny")
    assert (enc.dim, enc.modality) == (64, "text")
    emb = enc.encode_texts(["a smile", "a frown", ""])
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    _unit_rows(emb)
    np.testing.assert_array_equal(emb, load_backbone("text", "openclip-tiny").encode_texts(["a smile", "a frown", ""]))


def test_hf_text_saved_model_loads_by_path_offline(tmp_path, monkeypatch):
    """A tiny BERT (MiniLM's tokenizer, random weights) saved and loaded by 'hf-text:<path>'."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = BertModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone("text", f"hf-text:{tmp_path}")
    assert (loaded.dim, loaded.max_length) == (32, 128)  # capped by the position table
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[k], v, rtol=0, atol=0, msg=k)
    texts = ["hello there", "", "a longer sentence about admiration " * 40]
    ref = HFTextEncoder("ref", tokenizer, model, max_length=loaded.max_length).encode_texts(texts)
    np.testing.assert_allclose(loaded.encode_texts(texts), ref, atol=1e-6)
    _unit_rows(ref)


def test_text_trainable_forward_has_gradients():
    enc = load_backbone("text", "openclip-tiny")
    out = enc.trainable_forward(["a smile", ""])
    assert out.shape == (2, 64) and out.requires_grad


# ---------------------------------------------------------------------------------------------
# label prompts and text sources
# ---------------------------------------------------------------------------------------------
def test_label_prompt_wording():
    assert label_prompt({"Admiration": 0.8, "Joy": 0.25}) == "a person showing strong admiration and slight joy"
    assert label_prompt(np.zeros(6)) == PROMPT_TEMPLATES["neutral"] == "a person showing a neutral expression"
    assert label_prompt(np.full(6, 0.1)) == "a person showing a neutral expression"
    v = np.array([0.5, 0.9, 0.0, 0.3, 0.45, 0.95])  # Joy, Amusement, Admiration, Excitement, Empathic Pain
    assert label_prompt(v) == "a person showing strong joy, strong amusement and moderate admiration"
    assert label_prompt(v, max_emotions=6).endswith("moderate excitement and slight empathic pain")
    assert label_prompt(dict(zip(EMOTIONS, v))) == label_prompt(v)
    assert label_prompt([0, 0, 1, 0, 0, 0]) == "a person showing strong determination"
    custom = {**PROMPT_TEMPLATES, "emotions": "a face with {items}"}
    assert label_prompt({"Joy": 0.5}, templates=custom) == "a face with moderate joy"


@pytest.mark.parametrize("bad", [{"Anger": 0.5}, np.zeros(5), [np.nan, 0, 0, 0, 0, 0]])
def test_label_prompt_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        label_prompt(bad)


def test_clip_text_sources_and_label_leak_guard():
    assert TEXT_SOURCES == ("transcript", "label_prompt")
    assert clip_text("transcript", "  wow, amazing \n") == "wow, amazing"
    assert clip_text("transcript", None) == ""
    labels = {"Amusement": 0.75}
    assert clip_text("label_prompt", "ignored", labels) == "a person showing strong amusement"
    with pytest.raises(ValueError, match="training clips"):
        clip_text("label_prompt", "some words", None)
    with pytest.raises(ValueError, match="unknown text source"):
        clip_text("asr", "x")
