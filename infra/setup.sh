#!/bin/sh
# Everything a fresh Debian 12 machine needs before the pipeline or the tests can run. Idempotent: on a machine
# that has it all, it only checks. Run from anywhere: `bash infra/setup.sh`.
set -eu
cd "$(dirname "$0")/.."

# Build tools for the eBPF program and the native addon (clang, bpftool, libbpf 1.1, ...).
sh native/setup.sh

# Java 17 and Maven run and fetch the Kafka broker; the machines have them, a bare Debian may not.
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  echo "infra/setup.sh: installing Java 17 and Maven"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless maven
fi

# openssl makes the secured test broker's CA and certificate (infra/kafka/secure-broker.ts; keytool comes with Java).
if ! command -v openssl >/dev/null 2>&1; then
  echo "infra/setup.sh: installing openssl"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl
fi

# npm packages exactly as locked (npm ci), unless node_modules already matches the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

npm run build
npm run build:native
# The Kafka jars, from Maven Central, once (re-fetched when infra/kafka/pom.xml changes).
node dist/cli/edr.js broker fetch
