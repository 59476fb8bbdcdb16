#!/usr/bin/env bash
# containerd 1.7 for the CRI tests, from Debian 13 (trixie), unpacked, not
# installed: Debian 12's own containerd (1.6) stays the system's. apt-get
# downloads the package through a separate sources list and state directory;
# dpkg-deb unpacks it under the cache. Idempotent. Prints the directory that
# holds containerd and ctr.
#
#   scripts/fetch-containerd-1.7.sh [CACHE]   (default /var/cache/ironcell/containerd-1.7)
set -euo pipefail
CACHE=${1:-/var/cache/ironcell/containerd-1.7}
BIN="$CACHE/root/usr/bin"
if [ -x "$BIN/containerd" ] && "$BIN/containerd" --version | grep -q ' 1\.7\.'; then
  echo "$BIN"
  exit 0
fi
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/etc"
cat > "$APT/etc/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APT/etc"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
apt-get "${OPTS[@]}" update -qq >&2
(cd "$APT" && rm -f containerd_*.deb && apt-get "${OPTS[@]}" download containerd >&2)
DEB=$(ls "$APT"/containerd_1.7.*_amd64.deb 2>/dev/null | head -n1)
[ -n "$DEB" ] || { echo "fetch-containerd-1.7: trixie has no containerd 1.7 package" >&2; exit 1; }
rm -rf "$CACHE/root"
dpkg-deb -x "$DEB" "$CACHE/root"
"$BIN/containerd" --version >&2
echo "$BIN"
