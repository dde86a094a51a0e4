# vaultsync-daemon: the rendering/renewal daemon's own identity on the default layout
# (KV v2 mount "secret", prefix "compose"). Token renew-self/lookup-self and
# sys/leases/renew|lookup come from the built-in "default" policy.

# Read every service's KV secret; write it only to rotate the keys vaultsync owns
# (always check-and-set, see [[services.<name>.rotate]]).
path "secret/data/compose/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/compose/*" {
  capabilities = ["read", "list"]
}

# Rotation locks, so that of several daemons only one rotates a secret at a time.
path "secret/data/vaultsync/locks/*" {
  capabilities = ["create", "read", "update"]
}

# Dynamic database credentials for the services it renders.
path "database/creds/*" {
  capabilities = ["read"]
}

# Revoke a superseded lease after its grace period, and its own leases on exit.
path "sys/leases/revoke" {
  capabilities = ["update"]
}
