#!/usr/bin/env bash
# Install Fashion-MNIST for the example (examples/fashion_mnist.py): Debian's package
# dataset-fashion-mnist puts the four idx .gz files in /usr/share/datasets/fashion-mnist.
# Idempotent: does nothing when the files are already there. Needs apt-get (Debian 11+,
# recent Ubuntu) and root or sudo. Elsewhere, download the four files from
# https://github.com/zalandoresearch/fashion-mnist and pass --data-dir to the example.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_all() {
  local f
  for f in "${FILES[@]}"; do
    [ -f "$DIR/$f" ] || return 1
  done
}

if have_all; then
  echo "install_data.sh: Fashion-MNIST already in $DIR"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_data.sh: apt-get not found. Download the four files of" \
       "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir DIR to the example." >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_data.sh: run as root (or install sudo) to apt-get install dataset-fashion-mnist" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends dataset-fashion-mnist
if ! have_all; then
  echo "install_data.sh: dataset-fashion-mnist installed but the files are not in $DIR" >&2
  exit 1
fi
echo "install_data.sh: Fashion-MNIST installed in $DIR"
