#!/usr/bin/env bash
# A private CA, a server certificate and a client certificate for nnserve's TLS and
# mutual TLS (docs/operations.md#security-tls-mtls-tokens), with OpenSSL 3.
#   deploy/tls/make-certs.sh [OUT_DIR] [EXTRA_SERVER_NAME ...]
# Writes ca.pem (trust this), ca.key (keep offline), server.pem/.key (SAN: classify,
# sequence, localhost, 127.0.0.1 and any extra names) and client.pem/.key (for clients
# and health checks under mutual TLS). Run again with a new OUT_DIR to rotate.
set -euo pipefail
out=${1:-deploy/tls}
shift || true
days=${NNSERVE_CERT_DAYS:-365}
mkdir -p "$out"
cd "$out"
umask 077

san="DNS:classify,DNS:sequence,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -days "$days" -subj "/CN=nnserve-ca" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null

issue() {  # name, subject, extended key usage, extra extension lines
    local name=$1 subject=$2 usage=$3 extra=${4:-}
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
        -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=%s\n%s\n' "$usage" "$extra" \
        > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

issue server "/CN=nnserve" serverAuth "subjectAltName=$san"
issue client "/CN=nnserve-client" clientAuth
rm -f ca.srl
chmod 0644 ca.pem server.pem client.pem
echo "wrote $(pwd): ca.pem ca.key server.pem server.key client.pem client.key"
