#!/usr/bin/env bash
# Makes a CA and one certificate per node with openssl, for doozerd's TLS
# (-tlscert, -tlskey, --tls-ca). Each node certificate names the node's
# address (an IP, or a DNS name) so clients and peers can check it, and is
# usable both as a server and as a client certificate (peer links show it
# in both directions).
#
#   scripts/make-tls-certs.sh DIR NAME=ADDR [NAME=ADDR ...]
#   scripts/make-tls-certs.sh certs n1=127.0.0.1 n2=127.0.0.2 n3=db3.example
#
# Writes DIR/ca.pem and DIR/ca.key (keep the CA key offline in production),
# and DIR/NAME.pem and DIR/NAME.key for each node. An existing CA in DIR is
# reused, so the script also issues certificates for new nodes, or fresh ones
# for rotation. DAYS (default 365) sets how long node certificates last.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
shift
days=${DAYS:-365}
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
        -subj "/CN=doozer cluster CA $(date -u +%Y%m%d%H%M%S)-$RANDOM" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "made $dir/ca.pem"
fi

for spec in "$@"; do
    name=${spec%%=*}
    addr=${spec#*=}
    if [[ $addr =~ ^[0-9.]+$ || $addr == *:* ]]; then
        san="IP:$addr"
    else
        san="DNS:$addr"
    fi
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" \
        -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -out "$dir/$name.pem" -days "$days" \
        -extfile <(printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth,clientAuth" \
            "subjectAltName=$san") 2>/dev/null
    rm -f "$dir/$name.csr"
    echo "made $dir/$name.pem for $san"
done
