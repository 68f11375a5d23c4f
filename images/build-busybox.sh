#!/usr/bin/env bash
# Build `berth-busybox:1`: an image FROM scratch holding only a static busybox, for tests
# and examples (there is no registry to pull from). Idempotent; prints the image id.
#   images/build-busybox.sh            # build if missing
#   images/build-busybox.sh --force    # rebuild
set -euo pipefail

IMAGE="${BERTH_BUSYBOX_IMAGE:-berth-busybox:1}"

if [[ "${1:-}" != "--force" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  docker image inspect -f '{{.Id}}' "$IMAGE"
  exit 0
fi

# A statically linked busybox: Debian's busybox-static installs it at /bin/busybox.
BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [[ -x "$candidate" ]] && ! ldd "$candidate" >/dev/null 2>&1; then
    BUSYBOX="$candidate"
    break
  fi
done
if [[ -z "$BUSYBOX" ]]; then
  echo "build-busybox: installing busybox-static" >&2
  if [[ "$(id -u)" == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static >&2
  BUSYBOX=/bin/busybox
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$BUSYBOX" "$ctx/busybox"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
ENTRYPOINT ["/bin/busybox"]
DOCKERFILE
docker build -q -t "$IMAGE" "$ctx"
