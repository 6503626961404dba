"""OpenCLIPTokenizer against open_clip.tokenize (fixture ids and ids recorded from open_clip_torch 2.22.0)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from lvdm_fixtures import load_config, load_tensors, params

from vidiff.models.tokenizer import OpenCLIPTokenizer, default_vocab_path

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer() -> OpenCLIPTokenizer:
    return OpenCLIPTokenizer()


@pytest.mark.parametrize("folder", params("tokenizer"))
def test_fixture_prompts_match_open_clip(tokenizer, folder):
    prompts = load_config(folder)["prompts"]
    ref = load_tensors(folder / "tokens.safetensors", float32=False)["tokens"]
    out = tokenizer(prompts)
    assert out.dtype == torch.long and out.shape == ref.shape
    for row, prompt in enumerate(prompts):
        assert torch.equal(out[row], ref[row]), f"row {row} ({prompt[:40]!r}) differs"


# Recorded by running open_clip 2.22.0's SimpleTokenizer.encode on these strings.
OPEN_CLIP_IDS = [
    (
        "It&#39;s a caf\u00e9 \u2014 na\u00efve \u65e5\u672c\u8a9e \U0001f600 don't",
        [585, 568, 320, 15304, 2005, 1097, 35689, 563, 39121, 44353, 34002, 508, 7334, 847, 713],
    ),
    ("<end_of_text> x <START_OF_TEXT>", [49407, 343, 49406]),
    ("caf\u00c3\u00a9 12345", [15304, 272, 273, 274, 275, 276]),
]


@pytest.mark.parametrize("text,ids", OPEN_CLIP_IDS, ids=["unicode-html", "special-tokens", "mojibake-digits"])
def test_encode_matches_recorded_open_clip_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids
    row = tokenizer(text)[0]
    assert row[: len(ids) + 2].tolist() == [SOT, *ids, EOT]
    assert row[len(ids) + 2 :].eq(0).all()


def test_special_ids_vocab_and_single_string(tokenizer):
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.vocab_size) == (SOT, EOT, 49408)
    out = tokenizer("a cat")
    assert out.shape == (1, 77)
    assert out[0, :4].tolist() == [SOT, *tokenizer.encode("a cat"), EOT]
    assert out[0, 4:].eq(0).all()
    assert torch.equal(tokenizer(["a cat"]), out)


def test_truncation_forces_eot_and_empty_list_is_rejected():
    tok = OpenCLIPTokenizer(context_length=5)
    out = tok("one two three four five six")
    assert out.shape == (1, 5)
    assert out[0].tolist() == [SOT, *tok.encode("one two three")[:3], EOT]
    exact = tok("one two three")  # SOT + 3 words + EOT fits exactly
    assert exact[0, -1].item() == EOT and exact[0, :-1].ne(EOT).all()
    with pytest.raises(ValueError, match="no prompts"):
        tok([])
    with pytest.raises(ValueError):
        OpenCLIPTokenizer(context_length=1)
    with pytest.raises(TypeError):
        tok(["fine", 3])


def test_save_and_load_round_trip(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["vocab_file"] is None and config["context_length"] == 77
    again = OpenCLIPTokenizer.from_pretrained(tmp_path / "tok")
    prompt = ["A man fishing in a boat at sunset, 4k", ""]
    assert torch.equal(again(prompt), tokenizer(prompt))

    # A custom vocabulary is copied next to the config.
    custom = tmp_path / "my_vocab.txt.gz"
    custom.write_bytes(default_vocab_path().read_bytes())
    short = OpenCLIPTokenizer(vocab_path=custom, context_length=16)
    short.save_pretrained(tmp_path / "tok2")
    assert (tmp_path / "tok2" / "my_vocab.txt.gz").is_file()
    loaded = OpenCLIPTokenizer.from_pretrained(tmp_path / "tok2")
    assert loaded.context_length == 16 and torch.equal(loaded(prompt), short(prompt))


def test_bad_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        OpenCLIPTokenizer(vocab_path=tmp_path / "missing.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="not a CLIP BPE merge list"):
        OpenCLIPTokenizer(vocab_path=bad)
    with pytest.raises(FileNotFoundError):
        OpenCLIPTokenizer.from_pretrained(tmp_path)
