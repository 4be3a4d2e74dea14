#!/usr/bin/env bash
# Install everything ztfm needs on a fresh Debian machine (as root) and the package itself.
# Idempotent: safe to run again. Set ZTFM_SKIP_APT=1 to skip the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # attestation: a real software TPM and the TSS to talk to it
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config
  # traffic lab: broker, capture and real attack tools
  mosquitto mosquitto-clients iproute2 tcpdump nmap hping3 hydra libpcap-dev openssl util-linux
)

if [ "${ZTFM_SKIP_APT:-0}" != "1" ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
# torch is pinned: plain 'torch' would pull a multi-GB CUDA build.
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[dev,tpm]"
echo "setup: done ($("$PY" -c 'import ztfm; print("ztfm", ztfm.__version__)'))"
