#!/bin/sh
# A local certificate authority and a server certificate signed by it, for the TLS front ends.
#
#   deploy/gen-certs.sh [OUT_DIR] [NAME ...]
#
# OUT_DIR defaults to deploy/certs. NAMEs (host names or IP addresses) go into the server
# certificate's subjectAltName; localhost, 127.0.0.1 and ::1 are always there.
# Writes ca.crt + ca.key (the CA), server.crt + server.key (the front end's pair), and
# server-chain.crt (server certificate followed by the CA, for servers that want the chain).
# An existing CA in OUT_DIR is reused, so clients that trust it keep trusting new server
# certificates. Clients trust the registry with ca.crt, e.g. for docker, podman and skopeo:
#   /etc/containers/certs.d/HOST:PORT/ca.crt  or  /etc/docker/certs.d/HOST:PORT/ca.crt
set -eu

out=${1:-$(dirname "$0")/certs}
[ $# -gt 0 ] && shift
days=${BERTH_CERT_DAYS:-825}
mkdir -p "$out"
umask 077

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
  case "$name" in
    *[!0-9.]*) case "$name" in *:*) san="$san,IP:$name" ;; *) san="$san,DNS:$name" ;; esac ;;
    *) san="$san,IP:$name" ;;
  esac
done
cn=${1:-localhost}

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -new -nodes -newkey rsa:3072 -sha256 -days 3650 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=Berth local CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

ext=$(mktemp)
trap 'rm -f "$ext" "$out/server.csr"' EXIT
cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
openssl req -new -nodes -newkey rsa:2048 -sha256 -keyout "$out/server.key" \
  -out "$out/server.csr" -subj "/CN=$cn" 2>/dev/null
openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" -CA "$out/ca.crt" \
  -CAkey "$out/ca.key" -CAcreateserial -extfile "$ext" -out "$out/server.crt" 2>/dev/null
cat "$out/server.crt" "$out/ca.crt" >"$out/server-chain.crt"
# Certificates are public; keys stay private (nginx and Apache read them as root at start).
chmod 644 "$out/ca.crt" "$out/server.crt" "$out/server-chain.crt"
chmod 600 "$out/ca.key" "$out/server.key"
echo "gen-certs: CA $out/ca.crt, server certificate $out/server.crt for $san"
