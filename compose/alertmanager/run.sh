#!/bin/sh
# Fill the webhook URLs into the Alertmanager config, then run Alertmanager.
# The URLs can hold tokens (chat webhooks do): the filled config is 0600 in the
# data volume, and the URLs never appear on a command line.
set -eu
umask 077
# The paths can be moved for a test run outside the image.
template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
data=${ALERTMANAGER_DATA:-/alertmanager}
binary=${ALERTMANAGER_BINARY:-/bin/alertmanager}
config=$data/alertmanager.yml
: "${ALERTMANAGER_CRITICAL_WEBHOOK_URL:?}" "${ALERTMANAGER_WARNING_WEBHOOK_URL:?}"
# Literal replacement (index/substr, not gsub: a URL may hold & or \).
awk '
  function fill(line, name,    key, value, at) {
    key = "${" name "}"
    value = ENVIRON[name]
    while ((at = index(line, key)) > 0)
      line = substr(line, 1, at - 1) value substr(line, at + length(key))
    return line
  }
  { print fill(fill($0, "ALERTMANAGER_CRITICAL_WEBHOOK_URL"), "ALERTMANAGER_WARNING_WEBHOOK_URL") }
' "$template" > "$config.tmp"
mv "$config.tmp" "$config"
exec "$binary" --config.file="$config" --storage.path="$data" "$@"
