#!/usr/bin/env bash
# Unpack the documentation that the reproduction's "docs" profile reads (StudySettings.text_sources) into
# DIR/usr/share, keeping only the text it reads (gzipped, ~13 MB), so the folder can travel to a GPU machine:
#   bash benchmarks/reproduction/fetch_text.sh runs/text        # then: run.py ... --profile docs --text-root runs/text/usr/share
# Needs apt-get (Debian/Ubuntu; downloads the .deb files only, installs nothing). Packages and the versions used for
# the committed results (Debian 12): linux-doc-6.1 6.1.176-1, python3.11-doc 3.11.2-6+deb12u8, perl-doc 5.36.0-7+deb12u3.
# Other versions give a similar corpus; the run records its size and sha256 (prepared.json, every run record).
set -euo pipefail
dir=${1:-runs/text}
packages=${PACKAGES:-"linux-doc-6.1 python3.11-doc perl-doc"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download $packages >/dev/null)
for deb in "$tmp"/*.deb; do
    dpkg-deb -f "$deb" Package Version | paste -sd' '
    dpkg -x "$deb" "$tmp/root"
done
mkdir -p "$dir"
(cd "$tmp/root" && {
    find usr/share/doc -path '*/html/_sources/*' \( -name '*.txt' -o -name '*.txt.gz' \) 2>/dev/null || true
    find usr/share/perl -path '*/pod/*' \( -name '*.pod' -o -name '*.pod.gz' \) 2>/dev/null || true
}) | sort > "$tmp/files"
while read -r f; do
    mkdir -p "$dir/$(dirname "$f")"
    case "$f" in
        *.gz) cp "$tmp/root/$f" "$dir/$f" ;;
        *) gzip -9n -c "$tmp/root/$f" > "$dir/$f.gz" ;;
    esac
done < "$tmp/files"
echo "$(wc -l < "$tmp/files") files, $(du -sh "$dir" | cut -f1) in $dir"
