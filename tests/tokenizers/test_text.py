"""Text tokenizers: round trips, decode that never raises, save/load, and a clear error for a missing file."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from robofm.errors import UsageError
from robofm.tokenizers.text import ByteTokenizer, HFTextTokenizer, build_text_tokenizer, load_text_tokenizer

SENTENCES = ["pick up the red block", "put the cup on the plate", "open the drawer", "pick up the cup"]


@pytest.fixture
def hf_file(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(SENTENCES, trainer)
    path = tmp_path / "src" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def test_bytes_round_trip_with_non_ascii(tmp_path):
    tok = build_text_tokenizer()
    text = "grasp the mug — «tasse» 杯子 🤖"
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size == 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    tok.save(tmp_path)
    assert isinstance(load_text_tokenizer(tmp_path), ByteTokenizer)


def test_bytes_decode_of_garbage_does_not_raise():
    tok = ByteTokenizer()
    assert tok.decode([-5, 300, 10**9, 0xFF, 0xC3]) == "\ufffd\ufffd"  # out-of-range ids skipped, bad UTF-8 replaced
    assert tok.decode([]) == ""


def test_hf_round_trip_and_save_load(hf_file, tmp_path):
    tok = build_text_tokenizer("hf", str(hf_file))
    text = "pick up the red cup"
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    tok.save(tmp_path / "saved")
    loaded = load_text_tokenizer(tmp_path / "saved")
    assert isinstance(loaded, HFTextTokenizer) and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(text) == ids
    assert tok.decode([-1, *ids, 10**6]) == text  # ids outside the vocabulary are skipped


def test_missing_files_raise_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nowhere/tokenizer.json"):
        HFTextTokenizer(tmp_path / "nowhere" / "tokenizer.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="bad.json"):
        build_text_tokenizer("hf", str(tmp_path / "bad.json"))
    with pytest.raises(UsageError, match="text_tokenizer.json"):
        load_text_tokenizer(tmp_path / "empty")
    with pytest.raises(UsageError, match="needs a path"):
        build_text_tokenizer("hf")
    with pytest.raises(UsageError, match="sentencepiece"):
        build_text_tokenizer("sentencepiece")
