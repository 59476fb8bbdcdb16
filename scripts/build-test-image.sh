#!/usr/bin/env bash
# Builds ironcell's bundled test image from Debian's busybox-static, with no
# registry and no network.
#
#   scripts/build-test-image.sh OUTDIR
#
# Produces:
#   OUTDIR/rootfs/                   small busybox rootfs
#   OUTDIR/bundle/                   OCI runtime bundle (config.json = `runc spec`
#                                    defaults, terminal off, args = a hello script,
#                                    hostname "ironcell"; rootfs = copy of the above)
#   OUTDIR/ironcell-test.docker.tar  docker-archive (`docker save` format)
#   OUTDIR/ironcell-test.oci.tar     OCI image-layout archive
# both tagged localhost/ironcell-test:latest, and
#   OUTDIR/ironcell-pause.docker.tar the same layer tagged
#                                    localhost/ironcell-pause:latest, whose command
#                                    sleeps: the CRI tests' pod sandbox image.
#
# Deterministic: the same busybox binary (and runc, whose `runc spec` gives
# config.json) gives byte-identical archives. Idempotent: when OUTDIR already
# holds everything and the stamp (sha256 of /bin/busybox, of this script and
# `runc --version`) matches, it does nothing. Needs: busybox-static, runc, jq,
# python3, GNU tar.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ "$#" -eq 1 ] || usage
[ -n "$1" ] || usage

BUSYBOX=${BUSYBOX:-/bin/busybox}
RUNC=${RUNC:-runc}
IMAGE_REPO=localhost/ironcell-test
IMAGE_TAG=latest
IMAGE_NAME="$IMAGE_REPO:$IMAGE_TAG"

export LC_ALL=C TZ=UTC
umask 022

for tool in "$BUSYBOX" "$RUNC" jq python3 tar sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-test-image: missing $tool" >&2; exit 1; }
done

mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd -P)
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")

STAMP_FILE="$OUTDIR/.build-test-image.stamp"
stamp=$(
  printf 'busybox %s\n' "$(sha256sum < "$BUSYBOX" | cut -d' ' -f1)"
  printf 'script %s\n' "$(sha256sum < "$SCRIPT" | cut -d' ' -f1)"
  printf 'runc %s\n' "$("$RUNC" --version | head -n1)"
)

outputs=(
  "$OUTDIR/rootfs/bin/busybox"
  "$OUTDIR/rootfs/bin/true"
  "$OUTDIR/rootfs/etc/passwd"
  "$OUTDIR/bundle/config.json"
  "$OUTDIR/bundle/rootfs/bin/busybox"
  "$OUTDIR/ironcell-test.docker.tar"
  "$OUTDIR/ironcell-test.oci.tar"
  "$OUTDIR/ironcell-pause.docker.tar"
)
is_up_to_date() {
  local f
  [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$stamp" ] || return 1
  for f in "${outputs[@]}"; do [ -e "$f" ] || return 1; done
}
if is_up_to_date; then
  echo "build-test-image: $OUTDIR is up to date"
  exit 0
fi

# One build at a time per OUTDIR; then re-check, another may just have built it.
exec 9>"$OUTDIR/.build-test-image.lock"
flock 9
if is_up_to_date; then
  echo "build-test-image: $OUTDIR is up to date"
  exit 0
fi
rm -rf "$OUTDIR"/.staging.*   # left over by a killed build

STAGE=$(mktemp -d "$OUTDIR/.staging.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# Reproducible tar of everything in directory $2 (entries without a "./" prefix).
rtar() {
  local out=$1 dir=$2
  find "$dir" -mindepth 1 -maxdepth 1 -printf '%P\n' | sort \
    | tar -C "$dir" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
          --format=gnu -cf "$out" --verbatim-files-from -T -
}

# ---------------------------------------------------------------- rootfs
R="$STAGE/rootfs"
mkdir -p "$R"/{bin,etc,proc,sys,dev,tmp,root,run,var,usr,mnt}
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"         # a real copy, never a link to the host
chmod 0755 "$R/bin/busybox"
"$BUSYBOX" --list | sort -u | while IFS= read -r applet; do
  case "$applet" in ''|busybox|*/*) continue ;; esac
  ln -s busybox "$R/bin/$applet"
done
[ -L "$R/bin/true" ] && [ -L "$R/bin/sh" ] || { echo "build-test-image: busybox lacks sh/true" >&2; exit 1; }
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"

cat > "$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$R/etc/group" <<'EOF'
root:x:0:
users:x:100:
nobody:x:65534:
EOF
echo ironcell > "$R/etc/hostname"
cat > "$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
: > "$R/etc/resolv.conf"
chmod 0644 "$R"/etc/*

# Same mtime everywhere, so that the trees (not only the tars) are identical
# from run to run.
find "$R" -exec touch -h -d @0 {} +

# ---------------------------------------------------------------- bundle
B="$STAGE/bundle"
mkdir -p "$B"
cp -a "$R" "$B/rootfs"
SPEC_DIR="$STAGE/spec"
mkdir -p "$SPEC_DIR"
(cd "$SPEC_DIR" && "$RUNC" spec)
jq --tab '.process.terminal = false
  | .process.args = ["/bin/sh", "-c", "echo hello from ironcell; id; hostname"]
  | .hostname = "ironcell"' "$SPEC_DIR/config.json" > "$B/config.json"
rm -rf "$SPEC_DIR"

# ---------------------------------------------------------------- images
ARCH=$(dpkg --print-architecture 2>/dev/null || true)
case "$ARCH" in
  "") case "$(uname -m)" in
        x86_64) ARCH=amd64 ;; aarch64) ARCH=arm64 ;; *) ARCH=$(uname -m) ;;
      esac ;;
  i386) ARCH=386 ;;
esac

LAYER="$STAGE/layer.tar"
rtar "$LAYER" "$R"

python3 - "$STAGE" "$LAYER" "$ARCH" "$IMAGE_REPO" "$IMAGE_TAG" <<'PYEOF'
import hashlib, json, os, shutil, sys

stage, layer, arch, repo, tag = sys.argv[1:6]
name = f"{repo}:{tag}"
EPOCH = "1970-01-01T00:00:00Z"

def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

layer_hex = sha256_file(layer)
layer_size = os.path.getsize(layer)

config = {
    "architecture": arch,
    "os": "linux",
    "created": EPOCH,
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
    },
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
    "history": [{"created": EPOCH,
                 "created_by": "ironcell scripts/build-test-image.sh (busybox-static)"}],
}
config_bytes = dumps(config)
config_hex = hashlib.sha256(config_bytes).hexdigest()

# --- docker-archive (the `docker save` layout)
d = os.path.join(stage, "docker")
layer_id = layer_hex  # v1 layer id: any 64-hex id; the diff_id is stable
os.makedirs(os.path.join(d, layer_id))
shutil.copyfile(layer, os.path.join(d, layer_id, "layer.tar"))
write(os.path.join(d, layer_id, "VERSION"), b"1.0")
write(os.path.join(d, layer_id, "json"), dumps({
    "id": layer_id, "created": EPOCH, "os": "linux", "architecture": arch,
    "config": config["config"],
}))
write(os.path.join(d, f"{config_hex}.json"), config_bytes)
write(os.path.join(d, "manifest.json"), dumps([{
    "Config": f"{config_hex}.json",
    "RepoTags": [name],
    "Layers": [f"{layer_id}/layer.tar"],
}]))
write(os.path.join(d, "repositories"), dumps({repo: {tag: layer_id}}))

# --- OCI image layout
o = os.path.join(stage, "oci")
blobs = os.path.join(o, "blobs", "sha256")
os.makedirs(blobs)
shutil.copyfile(layer, os.path.join(blobs, layer_hex))
write(os.path.join(blobs, config_hex), config_bytes)
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": f"sha256:{config_hex}", "size": len(config_bytes)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": f"sha256:{layer_hex}", "size": layer_size}],
}
manifest_bytes = dumps(manifest)
manifest_hex = hashlib.sha256(manifest_bytes).hexdigest()
write(os.path.join(blobs, manifest_hex), manifest_bytes)
write(os.path.join(o, "oci-layout"), dumps({"imageLayoutVersion": "1.0.0"}))
write(os.path.join(o, "index.json"), dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{manifest_hex}",
        "size": len(manifest_bytes),
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": tag,
        },
    }],
}))
print(f"build-test-image: image config sha256:{config_hex}, layer sha256:{layer_hex}")

# --- the pause image: same layer, a command that sleeps (docker-archive only)
pause = json.loads(config_bytes)
pause["config"]["Cmd"] = ["/bin/sleep", "2147483647"]
pause_bytes = dumps(pause)
pause_hex = hashlib.sha256(pause_bytes).hexdigest()
prepo = repo.replace("ironcell-test", "ironcell-pause")
p = os.path.join(stage, "pause")
os.makedirs(os.path.join(p, layer_id))
shutil.copyfile(layer, os.path.join(p, layer_id, "layer.tar"))
write(os.path.join(p, layer_id, "VERSION"), b"1.0")
write(os.path.join(p, layer_id, "json"), dumps({
    "id": layer_id, "created": EPOCH, "os": "linux", "architecture": arch,
    "config": pause["config"],
}))
write(os.path.join(p, f"{pause_hex}.json"), pause_bytes)
write(os.path.join(p, "manifest.json"), dumps([{
    "Config": f"{pause_hex}.json",
    "RepoTags": [f"{prepo}:{tag}"],
    "Layers": [f"{layer_id}/layer.tar"],
}]))
write(os.path.join(p, "repositories"), dumps({prepo: {tag: layer_id}}))
PYEOF

rtar "$STAGE/ironcell-test.docker.tar" "$STAGE/docker"
rtar "$STAGE/ironcell-test.oci.tar" "$STAGE/oci"
rtar "$STAGE/ironcell-pause.docker.tar" "$STAGE/pause"

# ---------------------------------------------------------------- install
rm -rf "$OUTDIR/rootfs" "$OUTDIR/bundle" "$STAMP_FILE"
mv "$R" "$OUTDIR/rootfs"
mv "$B" "$OUTDIR/bundle"
mv -f "$STAGE/ironcell-test.docker.tar" "$OUTDIR/ironcell-test.docker.tar"
mv -f "$STAGE/ironcell-test.oci.tar" "$OUTDIR/ironcell-test.oci.tar"
mv -f "$STAGE/ironcell-pause.docker.tar" "$OUTDIR/ironcell-pause.docker.tar"
printf '%s\n' "$stamp" > "$STAMP_FILE"
echo "build-test-image: built $IMAGE_NAME in $OUTDIR"
