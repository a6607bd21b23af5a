#!/usr/bin/env bash
# Local stand-ins for the base images of compose.yml and the Dockerfile, for machines that
# cannot pull from Docker Hub (a Debian mirror is enough):
#
#   deploy/local-images.sh            # build what is missing or out of date, then
#   docker compose up -d --build      # as usual
#   deploy/local-images.sh --list     # the image names it makes, one a line
#   deploy/local-images.sh --force    # rebuild all three, ignoring what exists
#
# - the Python base the Dockerfile names (python:3.11-slim-bookworm): a Debian bookworm
#   rootfs from debootstrap (needs root), imported with `docker import`; Debian's python3 is
#   3.11, on PATH as python and python3 with pip and venv; `pip install` works as root.
# - postgres and nginx (the names compose.yml uses), built FROM that base with Debian's
#   packages (deploy/local-images/*/), honouring the official images' environment and
#   entry-point contract. They carry Debian's versions (PostgreSQL 15, nginx 1.22), whatever
#   their tags say: a data volume made by one PostgreSQL major version is not usable by
#   another, so keep the stand-in for the life of the volume or dump and restore.
#
# Each image has the label org.berth.local-images.hash, a hash of its inputs: an image whose
# label matches is reused. Built images are also saved (`docker save`) under
#   BERTH_LOCAL_IMAGES_CACHE  (default ${XDG_CACHE_HOME:-~/.cache}/berth/local-images;
#                              empty: no cache)
# and loaded from there into a fresh engine. An image of the same name without the label
# (a real one, pulled) is left alone unless --force.
#
#   BERTH_DEBIAN_MIRROR   the mirror for debootstrap and apt (default: the one this machine's
#                         apt uses for bookworm, from /etc/apt/sources.list*, else
#                         http://deb.debian.org/debian)
#   BERTH_LOCAL_CA_DIR    *.crt files the images trust besides Debian's CAs (default
#                         /usr/local/share/ca-certificates, as on this machine, so pip works
#                         behind a TLS-inspecting proxy; empty: none)
# DOCKER_HOST and the rest of the docker CLI's environment are honoured.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
suite=bookworm
label=org.berth.local-images.hash
packages=python3,python3-pip,python3-venv,python-is-python3,ca-certificates
cache=${BERTH_LOCAL_IMAGES_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/berth/local-images}
ca_dir=${BERTH_LOCAL_CA_DIR-/usr/local/share/ca-certificates}

log() { echo "local-images: $*" >&2; }
die() { log "$*"; exit 1; }

# The names come from the files that use them, so a bumped tag is followed.
python_image=$(awk '$1 == "FROM" { print $2; exit }' "$root/Dockerfile")
postgres_image=$(sed -n 's/^ *image: *\(postgres:[^ ]*\) *$/\1/p' "$root/compose.yml" | head -n 1)
nginx_image=$(sed -n 's/^ *image: *\(nginx:[^ ]*\) *$/\1/p' "$root/compose.yml" | head -n 1)
[ -n "$python_image" ] && [ -n "$postgres_image" ] && [ -n "$nginx_image" ] ||
  die "cannot find the image names in Dockerfile and compose.yml"

force=0
case "${1:-}" in
  --list) printf '%s\n' "$python_image" "$postgres_image" "$nginx_image"; exit 0 ;;
  --force) force=1 ;;
  "") ;;
  *) die "usage: $0 [--list | --force]" ;;
esac
command -v docker >/dev/null || die "the docker CLI is not installed"
docker version >/dev/null || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default})"

# apt's source for $suite (and its -updates and -security suites): one-line and deb822 files.
apt_sources() {
  local files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  ((${#files[@]})) || return 0
  awk '
    FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 && /^[ \t]*$/ { flush(); next }
    deb822 && /^[A-Za-z-]+:/ {
      key = tolower(substr($1, 1, length($1) - 1)); $1 = ""; f[key] = $0; next
    }
    !deb822 && $1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      print $(i + 1), $i
    }
    function flush(  n, s, u, k) {
      if (f["types"] ~ /(^| )deb( |$)/ && f["enabled"] !~ /no/) {
        n = split(f["suites"], s, " "); split(f["uris"], u, " ")
        for (k = 1; k <= n; k++) print s[k], u[1]
      }
      delete f
    }
    END { flush() }
  ' "${files[@]}"
}

sources=$(apt_sources | awk -v s="$suite" '$1 == s || $1 == s "-updates" || $1 == s "-security"')
mirror=${BERTH_DEBIAN_MIRROR:-$(awk -v s="$suite" '$1 == s { print $2; exit }' <<<"$sources")}
mirror=${mirror:-http://deb.debian.org/debian}
if [ -z "${BERTH_DEBIAN_MIRROR:-}" ] && [ -n "$sources" ]; then
  sources_list=$(awk '{ print "deb " $2 " " $1 " main" }' <<<"$sources" | sort -u)
else
  sources_list="deb $mirror $suite main"
fi

cas=()
if [ -n "$ca_dir" ] && [ -d "$ca_dir" ]; then
  while IFS= read -r -d '' f; do cas+=("$f"); done < <(find "$ca_dir" -name '*.crt' -print0 | sort -z)
fi

hash_of() { sha256sum | cut -c1-32; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$1" 2>/dev/null; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

# reuse NAME TAG HASH: 0 if TAG is usable as it is or was loaded from the cache.
reuse() {
  local name=$1 tag=$2 want=$3 have
  if exists "$tag"; then
    have=$(image_label "$tag")
    if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
      if ((!force)); then
        log "$tag exists and is not a local stand-in: kept"
        return 0
      fi
    elif [ "$have" = "$want" ] && ((!force)); then
      log "$tag is up to date ($want)"
      return 0
    fi
  fi
  if ((!force)) && [ -n "$cache" ] && [ -s "$cache/$name-$want.tar" ]; then
    log "$tag: loading $cache/$name-$want.tar"
    docker load --quiet --input "$cache/$name-$want.tar" >/dev/null
    [ "$(image_label "$tag")" = "$want" ] && return 0
    log "$tag: the cached archive holds another image; building"
  fi
  return 1
}

save() {
  local name=$1 tag=$2 want=$3
  [ -n "$cache" ] || return 0
  mkdir -p "$cache"
  docker save --output "$cache/.$name-$want.tar.part" "$tag"
  mv "$cache/.$name-$want.tar.part" "$cache/$name-$want.tar"
  find "$cache" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$want.tar" -delete
}

build_base() {
  local tag=$1 want=$2 work rootfs version out
  [ "$(id -u)" = 0 ] || die "debootstrap needs root to build $tag"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/berth-rootfs.XXXXXX")
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  rootfs=$work/rootfs
  log "$tag: debootstrap $suite from $mirror"
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    die "$tag: debootstrap failed"
  fi
  printf '%s\n' "$sources_list" >"$rootfs/etc/apt/sources.list"
  # The official image's Python is not "externally managed": pip installs as root work.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  if ((${#cas[@]})); then
    cp "${cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
    # Quiet unless it fails: its rehash step always warns about the bundle it has just written.
    out=$(chroot "$rootfs" update-ca-certificates 2>&1) || die "update-ca-certificates: $out"
  fi
  version=$(chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/root/.cache
  # The engine provides these per container.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  tar --numeric-owner --xattrs -C "$rootfs" -c . |
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change "ENV PYTHON_VERSION=$version" \
      --change 'CMD ["python3"]' \
      --change "LABEL $label=$want" \
      --change "LABEL org.opencontainers.image.description=\"local stand-in: Debian $suite, Python $version\"" \
      - "$tag" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

build_child() {
  local name=$1 tag=$2 want=$3 base=$4
  log "$tag: building from $base with Debian's packages"
  if ! docker build --network host --build-arg "BASE=$base" --label "$label=$want" \
    --tag "$tag" "$here/local-images/$name" >"${TMPDIR:-/tmp}/berth-local-$name.log" 2>&1; then
    tail -n 30 "${TMPDIR:-/tmp}/berth-local-$name.log" >&2
    die "$tag: docker build failed"
  fi
  rm -f "${TMPDIR:-/tmp}/berth-local-$name.log"
}

script_hash=$(hash_of <"$0")
start=$SECONDS

base_hash=$(
  {
    echo "$python_image $suite $packages $mirror $script_hash"
    echo "$sources_list"
    ((${#cas[@]})) && cat "${cas[@]}"
  } | hash_of
)
if ! reuse python "$python_image" "$base_hash"; then
  build_base "$python_image" "$base_hash"
  save python "$python_image" "$base_hash"
fi
# A rebuilt base is a new image ID: everything made from it is rebuilt too.
base_id=$(docker image inspect --format '{{.Id}}' "$python_image")

for name in postgres nginx; do
  tag=${name}_image
  tag=${!tag}
  want=$(
    {
      echo "$tag $base_id $script_hash"
      find "$here/local-images/$name" -type f -print0 | sort -z | xargs -0 sha256sum |
        sed "s|$here/||"
    } | hash_of
  )
  if ! reuse "$name" "$tag" "$want"; then
    build_child "$name" "$tag" "$want" "$python_image"
    save "$name" "$tag" "$want"
  fi
done
log "ready in $((SECONDS - start))s: $python_image $postgres_image $nginx_image"
