#!/usr/bin/env python3
"""Train a teacher in PyTorch and write its logits for kdx's `logits-file` teacher.

    kdx examples RECIPE -o examples.tsv        # ids, splits, texts of the recipe's data
    python3 teacher.py examples.tsv OUT        # writes OUT.npy and OUT.ids.txt

The teacher is a fastText-style classifier: hashed character 1-4-grams (words wrapped in
< >) -> mean of a 2^18 x 64 embedding bag -> linear layer. It trains on the `teacher-train`
rows when the file has them (the task's own set for the teacher), else on `train`, reading
the `source` column when --source is given (cross-lingual tasks). It then writes one row of
logits (float32, classes in the order `kdx examples` printed) for every train, dev and test
example, and the example ids, line i naming row i.

Needs Python 3 with torch and numpy; deterministic for a given torch version and thread
count (seed 0, 2 threads).
"""
import argparse
import csv
import sys

import numpy as np
import torch

FNV_OFFSET, FNV_PRIME, MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv1a(s: str) -> int:
    h = FNV_OFFSET
    for b in s.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def ngrams(text: str, lo: int, hi: int, buckets: int) -> list:
    ids = []
    for word in text.lower().split():
        w = f"<{word}>"
        for n in range(lo, hi + 1):
            for i in range(len(w) - n + 1):
                ids.append(fnv1a(w[i : i + n]) % buckets)
    return ids or [0]


class FastText(torch.nn.Module):
    def __init__(self, buckets: int, dim: int, classes: int):
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True)
        self.out = torch.nn.Linear(dim, classes)

    def forward(self, ids, offsets):
        return self.out(self.emb(ids, offsets))


def batch(feats, idx):
    lens = [len(feats[i]) for i in idx]
    ids = torch.tensor([x for i in idx for x in feats[i]], dtype=torch.long)
    offsets = torch.tensor([0] + list(np.cumsum(lens[:-1])), dtype=torch.long)
    return ids, offsets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("examples", help="output of `kdx examples RECIPE`")
    ap.add_argument("out", help="output prefix: writes OUT.npy and OUT.ids.txt")
    ap.add_argument("--source", action="store_true", help="the teacher reads the `source` column")
    ap.add_argument("--buckets", type=int, default=1 << 18)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    with open(args.examples, newline="", encoding="utf-8") as f:
        # Quotes are ordinary characters in kdx's TSV files.
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = sorted({r["label"] for r in rows})
    col = "source" if args.source else "text"
    has_teacher_set = any(r["split"] == "teacher-train" for r in rows)
    fit = [r for r in rows if r["split"] == ("teacher-train" if has_teacher_set else "train")]
    scored = [r for r in rows if r["split"] in ("train", "dev", "test")]
    print(f"{len(labels)} classes; training on {len(fit)} rows; scoring {len(scored)}", file=sys.stderr)

    feats = [ngrams(r[col] or r["text"], 1, 4, args.buckets) for r in fit]
    y = torch.tensor([labels.index(r["label"]) for r in fit])
    model = FastText(args.buckets, args.dim, len(labels))
    opt_sparse = torch.optim.SparseAdam(list(model.emb.parameters()), lr=args.lr)
    opt_dense = torch.optim.Adam(list(model.out.parameters()), lr=args.lr)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(fit)).tolist()
        total = 0.0
        for s in range(0, len(perm), args.batch):
            idx = perm[s : s + args.batch]
            ids, offsets = batch(feats, idx)
            loss = torch.nn.functional.cross_entropy(model(ids, offsets), y[idx])
            opt_sparse.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_sparse.step()
            opt_dense.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: training loss {total / len(fit):.4f}", file=sys.stderr)

    model.eval()
    feats = [ngrams(r[col] or r["text"], 1, 4, args.buckets) for r in scored]
    with torch.no_grad():
        logits = torch.cat([model(*batch(feats, list(range(s, min(s + 2048, len(scored)))))) for s in range(0, len(scored), 2048)])
    for split in ("dev", "test"):
        rows_ = [i for i, r in enumerate(scored) if r["split"] == split]
        if rows_:
            pred = logits[rows_].argmax(1)
            gold = torch.tensor([labels.index(scored[i]["label"]) for i in rows_])
            print(f"{split} accuracy {(pred == gold).float().mean().item():.4f}", file=sys.stderr)
    np.save(f"{args.out}.npy", logits.numpy().astype(np.float32))
    with open(f"{args.out}.ids.txt", "w", encoding="utf-8") as f:
        f.writelines(r["id"] + "\n" for r in scored)
    print(f"wrote {args.out}.npy ({logits.shape[0]} x {logits.shape[1]}) and {args.out}.ids.txt", file=sys.stderr)


if __name__ == "__main__":
    main()
