"""Tokenization pipeline (rust/src/tokenize) through ssm_offset.data.tokenize."""

import glob
import json
import os

import numpy as np
import pytest

from ssm_offset.data.tokenize import DataError, Template, Tokenizer, read_jsonl

SHARED = os.environ.get("SSM_OFFSET_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
NEOX = os.path.join(SHARED, "tokenizers", "gpt-neox-20b", "tokenizer.json")
needs_neox = pytest.mark.skipif(not os.path.exists(NEOX), reason=f"shared data absent ({NEOX})")

SAMSUM = {"prompt": "{dialogue}###", "target": "{summary}", "eos": True}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A small byte-level BPE built here with the `tokenizers` package (no shared data needed)."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    text = ["Amanda baked cookies and will bring Jerry some tomorrow.", "A: Hi Tom, are you busy tomorrow?"] * 20
    hf.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    hf.save(str(path))
    return str(path), hf


def test_pairs_labels_and_eos(tiny_tokenizer):
    path, hf = tiny_tokenizer
    tok = Tokenizer(path)
    assert tok.eos_id == 0 and tok.pad_id == 0
    recs = [{"dialogue": "A: Hi Tom", "summary": "Amanda baked"}, {"dialogue": "busy?", "summary": "cookies"}]
    arrays, stats = tok.encode_pairs(recs, SAMSUM)
    for i, r in enumerate(recs):
        p = hf.encode(r["dialogue"] + "###", add_special_tokens=False).ids
        t = hf.encode(r["summary"], add_special_tokens=False).ids + [0]
        s, e = arrays["offsets"][i], arrays["offsets"][i + 1]
        assert arrays["input_ids"][s:e].tolist() == p + t
        assert arrays["labels"][s:e].tolist() == [-100] * len(p) + t
        assert arrays["prompt_lengths"][i] == len(p) and arrays["lengths"][i] == len(p) + len(t)
    assert arrays["input_ids"].dtype == np.int32 and arrays["offsets"].dtype == np.int64
    assert stats["records"] == 2 and stats["kept"] == 2 and stats["tokens"] == arrays["input_ids"].size
    padded, _ = tok.encode_pairs(recs, Template(SAMSUM), padded=True)
    w = int(arrays["lengths"].max())
    assert padded["input_ids"].shape == (2, w)
    short = int(np.argmin(arrays["lengths"]))
    assert (padded["labels"][short, arrays["lengths"][short] :] == -100).all()
    assert (padded["input_ids"][short, arrays["lengths"][short] :] == tok.pad_id).all()


def test_truncation_policies(tiny_tokenizer):
    path, _ = tiny_tokenizer
    tok = Tokenizer(path)
    recs = [{"dialogue": "A: Hi Tom, are you busy tomorrow? " * 3, "summary": "Amanda baked cookies"}, {"dialogue": "x", "summary": "y"}]
    full, _ = tok.encode_pairs(recs, SAMSUM)
    n0 = int(full["lengths"][0])
    cut, stats = tok.encode_pairs(recs, SAMSUM, max_length=n0 - 5)
    assert cut["lengths"][0] == n0 - 5 and stats["truncated"] == 1
    assert cut["input_ids"][: n0 - 5].tolist() == full["input_ids"][: n0 - 5].tolist()
    tp, _ = tok.encode_pairs(recs, SAMSUM, max_length=n0 - 5, truncation="truncate_prompt")
    end = full["input_ids"][:n0]
    assert tp["input_ids"][: n0 - 5].tolist() == end[5:].tolist()  # the whole target survives
    dropped, stats = tok.encode_pairs(recs, SAMSUM, max_length=n0 - 5, truncation="drop")
    assert stats["dropped"] == 1 and dropped["kept"].tolist() == [1]
    with pytest.raises(ValueError, match="record 0: .* exceed max_length"):
        tok.encode_pairs(recs, SAMSUM, max_length=n0 - 5, truncation="error")
    with pytest.raises(ValueError, match="truncation must be"):
        tok.encode_pairs(recs, SAMSUM, truncation="left")


def test_pack_puts_eos_between_documents(tiny_tokenizer):
    path, hf = tiny_tokenizer
    tok = Tokenizer(path)
    docs = ["Amanda baked cookies.", "Hi Tom!", "busy tomorrow"]
    stream = sum((hf.encode(d, add_special_tokens=False).ids + [0] for d in docs), [])
    blocks, stats = tok.pack(docs, block_size=4)
    assert blocks.shape == (len(stream) // 4, 4)
    assert blocks.reshape(-1).tolist() == stream[: blocks.size]
    assert stats["dropped_tokens"] == len(stream) % 4
    padded, stats = tok.pack(docs, block_size=4, pad_last=True)
    assert padded.size >= len(stream) and stats["padding"] == padded.size - len(stream)


def test_templates_are_validated():
    assert Template({"prompt": "{{x}} {a}:{b}", "target": "{c}"}).fields == ["a", "b", "c"]
    assert Template({"prompt": "{{x}} {a}", "eos": False}).render({"a": 7}) == ("{x} 7", "")
    with pytest.raises(ValueError, match="unclosed"):
        Template({"prompt": "{dialogue"})
    with pytest.raises(ValueError, match="invalid template"):
        Template({"prompt": "x", "targt": "y"})
    with pytest.raises(ValueError, match='missing field "summary"'):
        Template(SAMSUM).render({"dialogue": "x"})


def test_jsonl_reader_and_errors_name_file_and_line(tmp_path, tiny_tokenizer):
    good = tmp_path / "good.jsonl"
    good.write_text('{"dialogue": "a", "summary": "b"}\n\n{"dialogue": "c", "summary": 2}\r\n')
    assert list(read_jsonl(good)) == [{"dialogue": "a", "summary": "b"}, {"dialogue": "c", "summary": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue": "a", "summary": "b"}\n{"dialogue": "a", summary}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: invalid JSON"):
        list(read_jsonl(bad))
    utf = tmp_path / "utf.jsonl"
    utf.write_bytes(b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "\xff\xfe", "summary": "b"}\n')
    with pytest.raises(DataError, match=rf"{utf}:2: invalid UTF-8"):
        list(read_jsonl(utf))
    tok = Tokenizer(tiny_tokenizer[0])
    with pytest.raises(DataError, match=rf"{utf}:2: invalid UTF-8"):
        tok.encode_jsonl(utf, SAMSUM, cache_dir=False)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"dialogue": "a", "summary": "b"}\n{"dialogue": "a"}\n')
    with pytest.raises(DataError, match=rf'{missing}:2: missing field "summary"'):
        tok.encode_jsonl(missing, SAMSUM, cache_dir=False)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_missing_or_invalid_tokenizer_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer.json"):
        Tokenizer(tmp_path / "no_such_tokenizer.json")
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": 3}')
    with pytest.raises(ValueError, match=str(broken)):
        Tokenizer(broken)


def test_jsonl_cache_hit_miss_and_portable(tmp_path, tiny_tokenizer):
    tok = Tokenizer(tiny_tokenizer[0])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"dialogue": f"Hi Tom {i}", "summary": "cookies"}) + "\n" for i in range(50)))
    a, sa = tok.encode_jsonl(data, SAMSUM, max_length=16, cache_dir=tmp_path / "c")
    b, sb = tok.encode_jsonl(data, SAMSUM, max_length=16, cache_dir=tmp_path / "c")
    assert (sa["cache"], sb["cache"]) == ("miss", "hit")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ref, _ = tok.encode_pairs(list(read_jsonl(data)), SAMSUM, max_length=16)
    np.testing.assert_array_equal(a["input_ids"], ref["input_ids"])
    _, sc = tok.encode_jsonl(data, SAMSUM, max_length=17, cache_dir=tmp_path / "c")
    assert sc["cache"] == "miss"  # options are part of the key
    data.write_text(data.read_text() + json.dumps({"dialogue": "x", "summary": "y"}) + "\n")
    _, sd = tok.encode_jsonl(data, SAMSUM, max_length=16, cache_dir=tmp_path / "c")
    assert sd["cache"] == "miss" and sd["records"] == 51  # so is the data
    from safetensors.numpy import load_file

    shipped = load_file(sb["cache_file"])  # readable without ssm_offset
    np.testing.assert_array_equal(shipped["labels"], a["labels"])


@needs_neox
def test_ids_identical_to_tokenizers_on_the_shared_corpus():
    from tokenizers import Tokenizer as HF

    hf = HF.from_file(NEOX)
    tok = Tokenizer(NEOX)
    lines = []
    for f in sorted(glob.glob(os.path.join(SHARED, "corpus", "english", "*.txt")))[::4]:
        with open(f, encoding="utf-8") as fh:
            lines += fh.read().splitlines()
    lines += ["", " ", "naïve café — “quotes” 東京 🙂\t\ttabs  ", "'s 're 123 4567 ,,,"]
    out = tok.encode_text(lines)
    ref = hf.encode_batch_fast(lines, add_special_tokens=False)
    ids, off = out["input_ids"], out["offsets"]
    assert len(off) == len(lines) + 1
    mismatched = [i for i, e in enumerate(ref) if e.ids != ids[off[i] : off[i + 1]].tolist()]
    assert not mismatched, f"{len(mismatched)} lines differ, first: {lines[mismatched[0]]!r}"


@needs_neox
def test_samsum_pairs_identical_to_tokenizers():
    from tokenizers import Tokenizer as HF

    hf = HF.from_file(NEOX)
    tok = Tokenizer(NEOX)
    with open(os.path.join(SHARED, "samsum", "validation.json"), encoding="utf-8") as f:
        recs = json.load(f)
    arrays, stats = tok.encode_pairs(recs, SAMSUM)
    assert stats["records"] == len(recs) == stats["kept"]
    for i in range(0, len(recs), 7):
        p = hf.encode(recs[i]["dialogue"] + "###", add_special_tokens=False).ids
        t = hf.encode(recs[i]["summary"], add_special_tokens=False).ids + [0]
        s, e = arrays["offsets"][i], arrays["offsets"][i + 1]
        assert arrays["input_ids"][s:e].tolist() == p + t
