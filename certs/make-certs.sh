#!/usr/bin/env bash
# Regenerates the TEST-ONLY self-signed certificate used by tests and examples.
# Never use it in production: its private key is public.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 \
  -days 36500 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -keyout localhost.key -out localhost.crt
echo "wrote $(pwd)/localhost.crt and localhost.key"
