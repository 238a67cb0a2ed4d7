#!/usr/bin/env bash
# Install the Debian packages the test-suite needs (idempotent, offline-safe when
# everything is already present). Does not start any service.
#
#   - GStreamer RTSP server + python bindings, used by tests/support/rtsp_server.py
#     (run with the system /usr/bin/python3, since the venv has no gi):
#       qtdemux + rtph264pay -> gstreamer1.0-plugins-good
#       h264parse            -> gstreamer1.0-plugins-bad
#   - postgresql (server) for the database tests.
#   - mosquitto (MQTT broker) for the MQTT sink's tests.
#   - chromium (headless) for the compliance report's rendering test.
#   - ffmpeg (ffprobe) to check the annotated video's frames and duration.
set -euo pipefail

PACKAGES=(
  python3-gi
  gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-base-1.0
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  postgresql
  mosquitto
  chromium
  ffmpeg
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system-deps: all ${#PACKAGES[@]} packages already present"
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "system-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps maintainer scripts (e.g. postgresql) from starting services.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

log="$(mktemp -t system-deps.XXXXXX.log)"
run_quiet() {
  if ! "$@" >>"$log" 2>&1; then
    echo "system-deps: failed: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}
run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
run_quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Use-Pty=0 "${missing[@]}"
rm -f "$log"

echo "system-deps: installed ${missing[*]}"
