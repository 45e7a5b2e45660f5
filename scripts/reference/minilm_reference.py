"""Record sentence-transformers reference outputs for all-MiniLM-L6-v2.

Usage (from the repository root, in a virtual environment with the packages
pinned in scripts/reference/requirements.txt installed):

    python scripts/reference/minilm_reference.py [MODEL_DIR]

MODEL_DIR defaults to the directory printed by scripts/fetch-minilm.sh,
which the script runs (it downloads the model once, then returns at once).
This is run by a developer when the reference data has to change, not by CI.

It writes, under tests/data/minilm/:

  reference.json         {"sentences", "token_ids" (the model tokenizer's ids
                         with special tokens, unpadded), "max_seq_length",
                         "sentence_transformers_version",
                         "transformers_version", "torch_version",
                         "model_sha256" (of model.safetensors), ...}
  reference.safetensors  F32 tensors:
      embeddings  [n, 384]  SentenceTransformer.encode(sentences,
                            convert_to_numpy=True): mean pooling then L2
                            normalisation, as modules.json prescribes.
      hidden.6    [total_tokens, 384]  last-layer token rows (real tokens
                            only) of every sentence, concatenated in
                            sentence order; for debugging.

The script checks that the model's tokenizer gives the same ids as the
model's tokenizer.json read by the tokenizers library, and that mean
pooling plus normalisation of hidden.6 reproduces the embeddings.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import REFERENCE_SENTENCES  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "tests" / "data" / "minilm"

# The multilingual reference sentences plus a few English ones, the
# language the model was trained on.
SENTENCES = list(REFERENCE_SENTENCES) + [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The cat sits outside.",
]


def model_dir():
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "fetch-minilm.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    torch.set_num_threads(1)
    path = model_dir()
    model = SentenceTransformer(str(path), device="cpu")
    model.eval()
    names = [type(m).__name__ for m in model]
    assert names == ["Transformer", "Pooling", "Normalize"], names

    embeddings = model.encode(SENTENCES, convert_to_numpy=True)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    tokenizer = model.tokenizer
    token_ids = [tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in SENTENCES]
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    # This tokenizer.json asks for fixed padding to 128 and truncation at
    # 128; sentence-transformers ignores both (it pads per batch and cuts at
    # max_seq_length), so a reader of the file has to switch them off too.
    raw.no_padding()
    raw.no_truncation()
    raw_ids = [e.ids for e in raw.encode_batch(SENTENCES)]
    assert raw_ids == token_ids, "the model tokenizer disagrees with tokenizer.json"

    # Last layer, one unpadded forward pass per sentence.
    transformer = model[0].auto_model
    rows = []
    with torch.no_grad():
        for ids in token_ids:
            out = transformer(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            rows.append(out.last_hidden_state[0].numpy())
    hidden = np.ascontiguousarray(np.concatenate(rows, 0), dtype=np.float32)
    mean = np.stack([r.mean(0) for r in rows])
    ours = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    d_pool = float(np.max(np.abs(ours - embeddings)))
    assert d_pool < 1e-5, d_pool

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    save_file(
        {"embeddings": embeddings, "hidden.6": hidden},
        str(OUT_DIR / "reference.safetensors"),
        metadata={"format": "np"},
    )
    info = {
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "max_seq_length": model.max_seq_length,
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_sha256": sha256(path / "model.safetensors"),
        "hidden": int(embeddings.shape[1]),
        "total_tokens": int(hidden.shape[0]),
    }
    with open(OUT_DIR / "reference.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(
        f"minilm: {len(SENTENCES)} sentences, {hidden.shape[0]} tokens "
        f"(lengths {min(map(len, token_ids))}..{max(map(len, token_ids))}), "
        f"max |mean-pool(hidden.6) - encode| {d_pool:.2e}"
    )


if __name__ == "__main__":
    main()
