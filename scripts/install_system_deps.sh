#!/usr/bin/env bash
# Install the Debian packages the demo and tests need: dataset-fashion-mnist, and chromium for the
# dashboard's browser tests (driven by Playwright with executable_path=/usr/bin/chromium; never
# `playwright install`, which downloads browsers).
# As root: apt-get install. Without root: Fashion-MNIST is unpacked with apt-get download +
# dpkg-deb -x into .data/debian/ (the Makefile points FASHION_MNIST_DIR there); chromium cannot be
# installed that way (it needs its shared libraries), so this prints how to install it and the
# browser tests fail with the same message until it is there.
set -euo pipefail

apt_install() {
  apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then
    apt_install dataset-fashion-mnist
  else
    mkdir -p .data/debian
    if [ ! -f .data/debian/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
      (cd .data && apt-get download dataset-fashion-mnist)
      for deb in .data/*.deb; do dpkg-deb -x "$deb" .data/debian; done
    fi
  fi
fi

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt_install chromium
  else
    echo "install_system_deps: chromium is missing and installing it needs root:" \
         "run \`sudo apt-get install -y chromium\` (the dashboard's browser tests need /usr/bin/chromium)" >&2
  fi
fi
