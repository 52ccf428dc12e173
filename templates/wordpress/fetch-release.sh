#!/bin/sh
# fetch-release URL SHA256 DEST: download a release archive, check its SHA-256, and only
# then unpack its single top-level directory as DEST (which must not exist yet).
# Placed by Lifeboat (templates/wordpress/fetch-release.sh). Exit codes: 2 usage, 3 the
# download failed, 4 checksum mismatch (nothing unpacked), 5 not a .tar.gz archive, or not
# one top-level directory.
set -eu
[ $# -eq 3 ] || { echo "usage: fetch-release URL SHA256 DEST" >&2; exit 2; }
url=$1 want=$2 dest=$3
[ ! -e "$dest" ] || { echo "$dest already exists" >&2; exit 2; }
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$dest.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Redirects (GitHub's archives) may only go to https.
if ! curl -fsSL --proto-redir =https --retry 2 --connect-timeout 10 --max-time 600 \
        -o "$work/archive" "$url"; then
    echo "could not download $url" >&2
    exit 3
fi
got=$(sha256sum "$work/archive" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
    echo "checksum mismatch for $url: expected $want, got $got; nothing unpacked" >&2
    exit 4
fi
mkdir "$work/tree"
if ! tar -xzf "$work/archive" -C "$work/tree" --no-same-owner 2>"$work/tar.err"; then
    echo "$url is not a .tar.gz archive ($(head -c 200 "$work/tar.err" | tr '\n' ' '))" >&2
    exit 5
fi
set -- "$work"/tree/*
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "$url does not unpack into one directory" >&2
    exit 5
fi
mv "$1" "$dest"
