# OpenBao server configuration for the vaultsync compose stack.
#
# Server mode with integrated (raft) storage: state survives restarts and the
# server starts SEALED every time. The `openbao-init` service initialises it
# once and unseals it on every start (see init-unseal.sh).
#
# The image's entrypoint runs `bao server -config=/openbao/config`, and this
# file is bind-mounted read-only as /openbao/config/config.hcl.

storage "raft" {
  # /openbao/file exists in the image and belongs to the `openbao` user, so
  # the named volume mounted there (openbao-data) inherits that ownership.
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"

  # Plain HTTP on the compose network only: docker-compose.yml publishes 8200
  # on the loopback interface of the host and nowhere else. To serve TLS, mount
  # a certificate and key and replace this line with tls_cert_file and
  # tls_key_file (and point BAO_ADDR / VAULT_ADDR at https://).
  tls_disable = true

  telemetry {
    # Prometheus scrapes /v1/sys/metrics?format=prometheus without a token.
    # The endpoint exposes counters and gauges, never secret material.
    unauthenticated_metrics_access = true
  }
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"

telemetry {
  # Needed for the Prometheus format of /v1/sys/metrics: how long the
  # in-memory sink keeps a metric that is no longer updated.
  prometheus_retention_time = "24h"
  # One node per container: do not prefix every metric with the hostname.
  disable_hostname = true
}

# Logs go to stdout (docker logs / the collector); JSON is easier to ship.
log_format = "json"
log_level  = "info"

# Audit devices: who did what, with every secret value and token HMAC'd (log_raw stays false).
# Two devices because the server refuses requests it cannot audit to at least one device: a full
# disk under the file must not stop the server, so a second copy goes to stdout (docker's
# json-file driver, rotated by it). OpenBao >= 2.4 creates audit devices only from this file (the
# API is refused since CVE-2025-54997); servers that ignore these blocks (Vault, older OpenBao)
# get the same two devices from openbao-init (init-unseal.sh, ensure_audit).
# The file is read by the collector (filelog/openbao-audit) and by `vaultsync audit`; rotate it
# with logrotate + `docker compose kill -s HUP openbao` (README: "Audit log").
audit "file" "file" {
  description = "JSON audit log on the openbao-logs volume"
  options {
    file_path = "/openbao/logs/audit.log"
    # owner and group openbao: the collector (root) and vaultsync-audit (group_add) read it
    mode      = "0640"
  }
}

audit "file" "stdout" {
  description = "second device so a full disk does not block the server"
  options {
    file_path = "stdout"
  }
}
