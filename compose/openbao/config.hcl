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
