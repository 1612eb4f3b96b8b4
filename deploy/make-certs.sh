#!/bin/sh
# Makes a private CA and the certificates a ccsrp cluster needs for TLS (docker-compose.tls.yml,
# k8s/tls/), with openssl:
#
#   deploy/make-certs.sh [DIR] [HOST...]
#
# DIR (default deploy/tls) receives, as PEM files:
#   ca.pem, ca-key.pem          the cluster's CA (keep ca-key.pem private; only ca.pem is mounted)
#   master.pem, master-key.pem  the master's certificate (serverAuth), valid for each HOST given plus
#                               master, ccsrp-master, localhost and 127.0.0.1
#   client.pem, client-key.pem  a client certificate (clientAuth) for mutual TLS, used by the
#                               workers and by ccsrp status/watch/health
# HOST: the names or IP addresses workers dial the master by (e.g. master.example.org 10.0.0.5).
# Certificates are valid for 825 days; run again to renew (the CA is kept when DIR has one).
set -eu
dir=${1:-deploy/tls}
[ $# -gt 0 ] && shift
mkdir -p "$dir"
cd "$dir"
umask 077

sans="DNS:master,DNS:ccsrp-master,DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  case "$host" in
    *[!0-9.]*) sans="$sans,DNS:$host" ;;
    *) sans="$sans,IP:$host" ;;
  esac
done

if [ ! -f ca.pem ] || [ ! -f ca-key.pem ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca-key.pem -out ca.pem -days 3650 -subj "/CN=ccsrp cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# sign NAME COMMON_NAME EXTENSIONS
sign() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1-key.pem" -out "$1.csr" -subj "/CN=$2"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days 825 -sha256 -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}
sign master "ccsrp master" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans"
sign client "ccsrp client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 644 ca.pem master.pem client.pem
echo "certificates in $dir: ca.pem master.pem master-key.pem client.pem client-key.pem (master valid for $sans)"
