# api-read: an example per-service policy. The "api" service may read its own secret and its own
# database credentials, and nothing else. (Services in vaultsync.toml without `policies` get one
# like this generated for them.)

path "secret/data/compose/api" {
  capabilities = ["read"]
}
path "secret/metadata/compose/api" {
  capabilities = ["read", "list"]
}
path "database/creds/api" {
  capabilities = ["read"]
}
