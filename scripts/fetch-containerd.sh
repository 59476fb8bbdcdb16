#!/usr/bin/env bash
# A containerd other than the system's, for the CRI tests, from a newer Debian
# suite, unpacked, not installed: Debian 12's own containerd (1.6) stays the
# system's. apt-get downloads the package through a separate sources list and
# state directory; dpkg-deb unpacks it under the cache. Idempotent. Prints the
# directory that holds containerd and ctr.
#
#   scripts/fetch-containerd.sh 1.7 [CACHE]  containerd 1.7 from Debian 13 (trixie)
#                                            (default cache /var/cache/ironcell/containerd-1.7)
#   scripts/fetch-containerd.sh 2 [CACHE]    containerd 2.x from Debian unstable (sid)
#                                            (default cache /var/cache/ironcell/containerd-2)
set -euo pipefail
WANT=${1:?usage: fetch-containerd.sh 1.7|2 [CACHE]}
case "$WANT" in
  1.7) SUITE=trixie ;;
  2) SUITE=sid ;;
  *) echo "fetch-containerd: unknown version '$WANT' (1.7 or 2)" >&2; exit 2 ;;
esac
CACHE=${2:-/var/cache/ironcell/containerd-$WANT}
BIN="$CACHE/root/usr/bin"
if [ -x "$BIN/containerd" ] && "$BIN/containerd" --version | grep -q " $WANT\."; then
  echo "$BIN"
  exit 0
fi
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/etc"
cat > "$APT/etc/$SUITE.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APT/etc"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
apt-get "${OPTS[@]}" update -qq >&2
(cd "$APT" && rm -f containerd_*.deb && apt-get "${OPTS[@]}" download containerd >&2)
DEB=$(ls "$APT"/containerd_"$WANT".*_amd64.deb 2>/dev/null | head -n1)
[ -n "$DEB" ] || { echo "fetch-containerd: Debian $SUITE has no containerd $WANT package" >&2; exit 1; }
rm -rf "$CACHE/root"
dpkg-deb -x "$DEB" "$CACHE/root"
"$BIN/containerd" --version >&2
echo "$BIN"
