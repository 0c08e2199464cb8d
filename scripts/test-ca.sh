#!/usr/bin/env bash
# Throwaway certificates for the TLS tests: EC P-256 keys, valid for 2 days.
#
#   scripts/test-ca.sh DIR
#
# Creates DIR and writes into it:
#   ca.pem ca.key                   the test CA
#   server.pem server.key           CN=localhost, SAN DNS:localhost IP:127.0.0.1, serverAuth
#   client.pem client.key           CN=warren-test-client, clientAuth
#   wrong-host.pem wrong-host.key   SAN DNS:not-localhost only, serverAuth (hostname checks)
#   other-ca.pem other-ca.key       a second, unrelated CA
#   untrusted-client.pem .key       CN=warren-test-client, clientAuth, signed by other-ca
# Keys are unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), mode 600.
# Idempotent: if the whole set is there, chains to its CAs and stays valid for
# another hour, nothing is written; otherwise all of it is regenerated.
# Concurrent runs on the same DIR are serialised with flock on DIR.
set -euo pipefail
DIR=${1:?usage: scripts/test-ca.sh DIR}
DAYS=2
NAMES=(ca server client wrong-host other-ca untrusted-client)

mkdir -p "$DIR"
cd "$DIR"
exec 9<.
flock 9

valid() {
  local n
  for n in "${NAMES[@]}"; do
    [[ -s $n.pem && -s $n.key ]] || return 1
    openssl x509 -in "$n.pem" -noout -checkend 3600 >/dev/null || return 1
    [[ $(openssl pkey -in "$n.key" -pubout) == "$(openssl x509 -in "$n.pem" -noout -pubkey)" ]] || return 1
  done
  openssl verify -CAfile ca.pem server.pem client.pem wrong-host.pem >/dev/null &&
    openssl verify -CAfile other-ca.pem untrusted-client.pem >/dev/null
}

# quiet CMD...: runs CMD, showing its output only if it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

newkey() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }

# ca NAME CN: a self-signed CA.
ca() {
  newkey "$1"
  quiet openssl req -x509 -new -key "$1.key" -days $DAYS -subj "/CN=$2" -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# leaf NAME CA CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]: a certificate signed by CA.
leaf() {
  newkey "$1"
  quiet openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  quiet openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days $DAYS -out "$1.pem" -extfile <(
      echo "basicConstraints = critical, CA:FALSE"
      echo "keyUsage = critical, digitalSignature"
      echo "extendedKeyUsage = $4"
      echo "authorityKeyIdentifier = keyid"
      [[ -z ${5:-} ]] || echo "subjectAltName = $5"
    )
  rm -f "$1.csr"
}

valid 2>/dev/null && exit 0
umask 077
rm -f "${NAMES[@]/%/.pem}" "${NAMES[@]/%/.key}"
ca ca "warren test CA"
ca other-ca "warren unrelated test CA"
leaf server ca localhost serverAuth "DNS:localhost, IP:127.0.0.1"
leaf client ca warren-test-client clientAuth
leaf wrong-host ca not-localhost serverAuth "DNS:not-localhost"
leaf untrusted-client other-ca warren-test-client clientAuth
chmod 644 ./*.pem
valid || { echo "test-ca: generated certificates do not verify" >&2; exit 1; }
echo "test-ca: new certificates in $PWD" >&2
