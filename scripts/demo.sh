#!/usr/bin/env bash
# `make demo`: start a local real dev server and migrate .env.example into it.
set -euo pipefail
cd "$(dirname "$0")/.."
vs() { .venv/bin/vaultsync --log-format console --log-level warning "$@"; }

eval "$(vs dev up)"
export VAULT_ADDR VAULT_TOKEN
echo "== server: $VAULT_ADDR (dev mode, in memory; stop it with: .venv/bin/vaultsync dev down)"

echo; echo "== 1. plan: what would change (values are shown as salted fingerprints, never in clear)"
vs migrate --service demo --dry-run .env.example

echo; echo "== 2. apply: merge into secret/compose/demo with check-and-set"
vs migrate --service demo .env.example

echo; echo "== 3. run again: idempotent, zero writes"
vs migrate --service demo .env.example

echo; echo "== 4. what the server holds now (key names and version only)"
.venv/bin/python - <<'PY'
import os, hvac
c = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
r = c.secrets.kv.v2.read_secret_version(path="compose/demo", mount_point="secret", raise_on_deleted_version=True)
print(f"secret/compose/demo version {r['data']['metadata']['version']}: {', '.join(sorted(r['data']['data']))}")
PY

echo; echo "== 5. policies and a least-privilege AppRole for the demo service"
mkdir -p .demo && chmod 700 .demo
cat > .demo/vaultsync.toml <<'TOML'
# Rendering logs in as the demo service's own AppRole: it can read its secret and nothing else.
[auth]
method = "approle"
role_name = "demo"
role_id_file = "creds/role_id"      # relative to this file
secret_id_file = "creds/secret_id"

[services.demo]
token_ttl = "15m"
token_max_ttl = "1h"

[[services.demo.destinations]]
path = "demo.env"           # relative to this file: .demo/demo.env
style = "dotenv"

[[services.demo.destinations]]
path = "demo.sh"
style = "shell"
TOML
vs --config .demo/vaultsync.toml policies apply --yes policies/

echo; echo "== 6. issue the service's AppRole credentials, then render its env files once as that service"

vs --config .demo/vaultsync.toml approle credentials demo --out .demo/creds
vs --config .demo/vaultsync.toml render
ls -l .demo/demo.env .demo/demo.sh
echo "(.demo/demo.env is mode 0600; 'source .demo/demo.sh' exports the same values)"
