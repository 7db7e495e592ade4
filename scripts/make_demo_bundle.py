"""Rebuilds the demo's bundled data (python/ssm_offset/data/bundled/) from ../shared/data, deterministically:
four Project Gutenberg texts (public domain), a byte-level BPE tokenizer of 2,048 tokens trained on them, and a
DART subset (MIT) taken from the fixed 90/10 split of the DART dev file (ssm_offset.data.tasks.dart_split).

    python scripts/make_demo_bundle.py [--shared ../shared/data]
"""
import argparse
import json
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "ssm_offset" / "data" / "bundled"
TEXTS = ["carroll-alice", "bryant-stories", "burgess-busterbrown", "chesterton-brown"]
VOCAB = 2048
MAX_TOKENS = 96          # prompt + target of a kept DART example, in bundled-tokenizer tokens
N_TRAIN, N_TEST = 1500, 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    shared = Path(ap.parse_args().shared)
    import sys

    sys.path.insert(0, str(ROOT / "python"))
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ssm_offset.data.tasks import TEMPLATES, dart_records

    (OUT / "gutenberg").mkdir(parents=True, exist_ok=True)
    (OUT / "dart").mkdir(parents=True, exist_ok=True)
    files = []
    for name in TEXTS:
        src = shared / "corpus" / "english" / f"gutenberg_{name}.txt"
        dst = OUT / "gutenberg" / f"{name}.txt"
        shutil.copyfile(src, dst)
        files.append(str(dst))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    tok.save(str(OUT / "tokenizer.json"))

    sets = json.loads((shared / "dart" / "dart-v1.1.1-full-dev.json").read_text())
    tpl = TEMPLATES["dart"]

    def n_tokens(r):
        prompt = tpl["prompt"].replace("{triples}", r["triples"])
        return len(tok.encode(prompt).ids) + len(tok.encode(r["text"]).ids) + 1

    rng = random.Random(0)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        recs = [r for r in dart_records(sets, split) if n_tokens(r) <= MAX_TOKENS]
        if split == "test":
            for r in recs:
                r["references"] = [t for t in r["references"] if n_tokens(dict(r, text=t)) <= MAX_TOKENS]
        rng.shuffle(recs)
        recs = recs[:n]
        with open(OUT / "dart" / f"{split}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(split, len(recs))


if __name__ == "__main__":
    main()
