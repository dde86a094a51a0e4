# vaultsync-migrator: exactly what `vaultsync migrate` needs on the default layout
# (KV v2 mount "secret", prefix "compose"). Adjust the paths if you change mount or prefix.

# Plan: read each target secret (its data and version).
path "secret/data/compose/*" {
  capabilities = ["create", "read", "update"]
}

# Plan: one LIST per folder finds which secrets exist; reads of absent ones are skipped.
path "secret/metadata/compose/*" {
  capabilities = ["list"]
}
path "secret/metadata/compose" {
  capabilities = ["list"]
}

# KV version detection (else pass --kv-version).
path "sys/internal/ui/mounts/secret" {
  capabilities = ["read"]
}
