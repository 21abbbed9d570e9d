#!/usr/bin/env bash
# Install the Debian packages the demo and tests need: dataset-fashion-mnist.
# As root: apt-get install. Without root: apt-get download + dpkg-deb -x into .data/debian/,
# and the Makefile points FASHION_MNIST_DIR there.
set -euo pipefail
pkgs=(dataset-fashion-mnist)
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }
else
  mkdir -p .data/debian
  if [ ! -f .data/debian/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    (cd .data && apt-get download "${pkgs[@]}")
    for deb in .data/*.deb; do dpkg-deb -x "$deb" .data/debian; done
  fi
fi
