#!/usr/bin/env bash
# kdx embed against sentence-transformers on the same machine, threads and
# sentences: all-MiniLM-L6-v2 embeds N real sentences of 20-60 words
# (paragraphs of the Universal Declaration of Human Rights, in the order of
# its translations' files). Prints texts/s and peak RSS of both, and the ratio.
#
#     PYTHON=/path/to/venv/bin/python scripts/bench-embed.sh [N] [THREADS]
#
# PYTHON must have sentence-transformers (pip install sentence-transformers).
# KDX defaults to target/release/kdx (cargo build --release first).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5000}"
threads="${2:-2}"
kdx="${KDX:-target/release/kdx}"
python="${PYTHON:-python3}"
[[ -x "$kdx" ]] || { echo "bench-embed: $kdx not found: cargo build --release" >&2; exit 1; }
udhr="$(scripts/fetch-udhr.sh)"
model="$(scripts/fetch-minilm.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" - "$udhr/declaration" "$n" >"$work/sentences.txt" <<'PY'
import html.parser, os, sys
root, n = sys.argv[1], int(sys.argv[2])
class P(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.inp = False; self.cur = []; self.out = []
    def handle_starttag(self, tag, a):
        if tag == "p": self.inp = True; self.cur = []
    def handle_endtag(self, tag):
        if tag == "p" and self.inp: self.inp = False; self.out.append(" ".join("".join(self.cur).split()))
    def handle_data(self, d):
        if self.inp: self.cur.append(d)
got = 0
for f in sorted(os.listdir(root)):
    p = P(); p.feed(open(os.path.join(root, f), encoding="utf-8").read())
    for s in p.out:
        if 20 <= len(s.split()) <= 60 and got < n:
            print(s); got += 1
if got < n:
    sys.exit(f"only {got} paragraphs of 20-60 words")
PY
isa="no AVX2"
if grep -q -m1 avx512f /proc/cpuinfo; then isa="AVX-512"; elif grep -q -m1 avx2 /proc/cpuinfo; then isa="AVX2"; fi
echo "bench-embed: $(wc -l <"$work/sentences.txt") sentences, $(wc -w <"$work/sentences.txt") words, $threads threads, $isa"
/usr/bin/time -f "%e %M" -o "$work/kdx.time" env RAYON_NUM_THREADS="$threads" "$kdx" embed "$model" "$work/sentences.txt" -o "$work/kdx.npy"
/usr/bin/time -f "%e %M" -o "$work/st.time" "$python" - "$model" "$work/sentences.txt" "$threads" >"$work/st.out" <<'PY'
import sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
lines = open(path, encoding="utf-8").read().splitlines()
m = SentenceTransformer(model_dir, device="cpu")
t = time.perf_counter()
m.encode(lines, batch_size=64)
print(time.perf_counter() - t)
PY
read -r kdx_s kdx_kb <"$work/kdx.time"
read -r st_s st_kb <"$work/st.time"
st_encode="$(cat "$work/st.out")"
awk -v n="$n" -v ks="$kdx_s" -v kk="$kdx_kb" -v ss="$st_s" -v se="$st_encode" -v sk="$st_kb" 'BEGIN {
    printf "kdx embed (whole process):           %8.1f texts/s  peak RSS %5.0f MB\n", n / ks, kk / 1024
    printf "sentence-transformers (encode only): %8.1f texts/s  peak RSS %5.0f MB (whole process %.1f texts/s)\n", n / se, sk / 1024, n / ss
    printf "ratio kdx / sentence-transformers:   %8.2fx\n", (n / ks) / (n / se)
}'
