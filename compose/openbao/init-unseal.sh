#!/bin/sh
# init-unseal.sh - keep the compose stack's OpenBao server initialised and unsealed.
#
# Runs as the `openbao-init` service, in the same image as the server (it only
# needs the `bao` CLI and a POSIX shell). It:
#   1. waits for the server to answer;
#   2. if the server was never initialised and no key file exists yet, runs
#      `bao operator init` ONCE and writes the result (unseal keys + initial
#      root token) to $BAO_INIT_DIR, a named volume that no other service
#      mounts, with mode 0700/0600. It never overwrites, moves or deletes an
#      existing key file;
#   3. unseals the server whenever it is sealed: at every start of the stack
#      and whenever the server container restarts on its own;
#   4. once unsealed, makes sure audit devices exist (see ensure_audit);
#   5. keeps watching every $BAO_UNSEAL_INTERVAL seconds.
# The unseal material never appears in docker-compose.yml, in .env, in the
# environment or in the logs.
#
# Trade-off, stated plainly: the keys sit on the same host as the data they
# protect, which buys unattended restarts and nothing more. For production,
# use an auto-unseal seal (transit/KMS) or hand the key shares to people and
# drop this service.
#
# The initial root token is in the same file. Use it once to bootstrap
# (policies, AppRole for vaultsync), then revoke it:
#   docker compose exec openbao-init cat /openbao-init/init.json
#
# Settings (environment, all optional):
#   BAO_ADDR                  server URL            [http://openbao:8200]
#   BAO_INIT_DIR              state folder          [/openbao-init]
#   BAO_UNSEAL_KEY_SHARES     -key-shares at init   [1]
#   BAO_UNSEAL_KEY_THRESHOLD  -key-threshold        [1]
#   BAO_UNSEAL_INTERVAL       seconds between checks [10]
#   BAO_INIT_ONESHOT          1: exit 0 once unsealed instead of watching [0]
#   BAO_AUDIT_FILE            the server's file audit log [/openbao/logs/audit.log]

set -u
umask 077

ADDR="${BAO_ADDR:-http://openbao:8200}"
STATE_DIR="${BAO_INIT_DIR:-/openbao-init}"
INIT_FILE="$STATE_DIR/init.json"
SHARES="${BAO_UNSEAL_KEY_SHARES:-1}"
THRESHOLD="${BAO_UNSEAL_KEY_THRESHOLD:-1}"
INTERVAL="${BAO_UNSEAL_INTERVAL:-10}"
ONESHOT="${BAO_INIT_ONESHOT:-0}"
AUDIT_FILE="${BAO_AUDIT_FILE:-/openbao/logs/audit.log}"
AUDIT_CHECKED=0

log() {
    printf '%s init-unseal: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

pause() {
    # sleep in the background so that TERM is handled at once
    sleep "$1" &
    wait $! 2>/dev/null || true
}

on_stop() {
    log "stopping"
    exit 0
}
trap on_stop TERM INT

# `bao operator init -status`: 0 initialised, 2 not initialised, 1 error.
init_status() {
    bao operator init -status -address="$ADDR" >/dev/null 2>&1
}

# `bao status`: 0 unsealed, 2 sealed, 1 error.
seal_status() {
    bao status -address="$ADDR" >/dev/null 2>&1
}

# The base64 unseal keys in the `bao operator init -format=json` output file
# $1, one a line. Works whether the JSON is pretty-printed or on one line.
unseal_keys() {
    tr -d '\n\r' <"$1" |
        sed -n 's/.*"unseal_keys_b64"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p' |
        tr ',' '\n' | tr -d '" \t'
}

initialise() {
    # A stop request must not land between `bao operator init` and saving its
    # output: the keys exist only in that output. (docker-compose.yml gives
    # this service a stop grace period long enough for an init.)
    trap '' TERM INT
    write_init_file
    rc=$?
    trap on_stop TERM INT
    return $rc
}

write_init_file() {
    log "server is not initialised: running bao operator init (shares=$SHARES threshold=$THRESHOLD)"
    tmp="$INIT_FILE.tmp.$$"
    if ! bao operator init -address="$ADDR" -key-shares="$SHARES" \
        -key-threshold="$THRESHOLD" -format=json >"$tmp" 2>"$tmp.err"; then
        log "bao operator init failed: $(cat "$tmp.err")"
        rm -f "$tmp.err"
        if [ -s "$tmp" ]; then
            log "keeping what it printed in $tmp"
        else
            rm -f "$tmp"
        fi
        return 1
    fi
    rm -f "$tmp.err"
    if [ -z "$(unseal_keys "$tmp")" ]; then
        # Keep the file: it may still be the only copy of the keys.
        log "bao operator init printed no unseal keys; its output is in $tmp"
        return 1
    fi
    sync "$tmp" 2>/dev/null || sync
    if ! mv "$tmp" "$INIT_FILE"; then
        log "could not move $tmp to $INIT_FILE; the keys are in $tmp"
        return 1
    fi
    chmod 0600 "$INIT_FILE"
    log "initialised; keys and initial root token stored in $INIT_FILE"
}

unseal() {
    keys=$(unseal_keys "$INIT_FILE")
    if [ -z "$keys" ]; then
        log "no unseal keys found in $INIT_FILE"
        return 1
    fi
    for key in $keys; do
        # The key goes in as JSON on stdin (`bao write ... -`), never as an
        # argument: argv is visible in ps. printf is a shell builtin.
        # (`bao operator unseal` only reads a key from a terminal or argv.)
        if ! err=$(printf '{"key":"%s"}' "$key" |
            bao write -address="$ADDR" sys/unseal - 2>&1 >/dev/null); then
            log "unseal refused: $(printf '%s\n' "$err" | tail -n 1)"
            return 1
        fi
        if seal_status; then
            log "unsealed"
            return 0
        fi
    done
    log "still sealed after all $(printf '%s\n' "$keys" | wc -l | tr -d ' ') key(s) in $INIT_FILE: were they made for this server?"
    return 1
}

root_token() {
    tr -d '\n\r' <"$INIT_FILE" |
        sed -n 's/.*"root_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'
}

# Two audit devices: a JSON file (collected, read by `vaultsync audit`) and stdout, so that a full
# disk under the file does not block the server. OpenBao >= 2.4 creates them from config.hcl; a
# server that ignored those blocks has none, and gets them here with the initial root token
# (given to `bao` in its environment, never as an argument; VAULT_TOKEN too, for a vault binary). Checked once per start of this helper;
# once that token is revoked this only reports.
ensure_audit() {
    [ "$AUDIT_CHECKED" = "1" ] && return 0
    AUDIT_CHECKED=1
    token=$(root_token)
    if [ -z "$token" ]; then
        log "audit devices: no initial root token in $INIT_FILE to check them with"
        return 0
    fi
    # Just unsealed, the node may not be active yet: wait for it (up to ~30 s), not for a refusal.
    tries=0
    until listed=$(BAO_TOKEN="$token" VAULT_TOKEN="$token" bao audit list -address="$ADDR" -format=json 2>&1); do
        tries=$((tries + 1))
        if printf '%s' "$listed" | grep -q "permission denied" || [ "$tries" -ge 30 ]; then
            log "audit devices: cannot list them ($(printf '%s\n' "$listed" | tail -n 1 | cut -c1-120));" \
                "the initial root token may be revoked; they are declared in config.hcl"
            return 0
        fi
        pause 1
    done
    if printf '%s' "$listed" | grep -q '"type"'; then
        log "audit devices: $(printf '%s' "$listed" | grep -o '"type"' | wc -l | tr -d ' ') already enabled"
        return 0
    fi
    ok=1
    if ! err=$(BAO_TOKEN="$token" VAULT_TOKEN="$token" bao audit enable -address="$ADDR" -path=file file \
        file_path="$AUDIT_FILE" mode=0640 2>&1 >/dev/null); then
        log "audit devices: enabling file/ failed: $(printf '%s\n' "$err" | tail -n 1)"
        ok=0
    fi
    if ! err=$(BAO_TOKEN="$token" VAULT_TOKEN="$token" bao audit enable -address="$ADDR" -path=stdout file \
        file_path=stdout 2>&1 >/dev/null); then
        log "audit devices: enabling stdout/ failed: $(printf '%s\n' "$err" | tail -n 1)"
        ok=0
    fi
    [ "$ok" = "1" ] && log "audit devices: enabled file/ ($AUDIT_FILE) and stdout/"
    return 0
}

step() {
    init_status
    case $? in
    0) ;;
    2)
        if [ -s "$INIT_FILE" ]; then
            # Either the server's storage was wiped while this volume was kept,
            # or the server answered "not initialised" while starting or
            # stopping. Telling the two apart is not worth the risk: touch
            # neither, and let a person decide.
            log "server reports it is not initialised, but $INIT_FILE exists: doing nothing." \
                "If the server's data really is gone, move $INIT_FILE away and this helper will initialise it again."
            return 1
        fi
        initialise || return 1
        ;;
    *)
        log "server at $ADDR is not answering yet"
        return 1
        ;;
    esac

    seal_status
    case $? in
    0)
        ensure_audit
        return 0
        ;;
    2)
        if [ ! -s "$INIT_FILE" ]; then
            log "server is initialised and sealed, but $INIT_FILE is missing: restore the openbao-init volume or unseal by hand"
            return 1
        fi
        log "server is sealed: unsealing"
        unseal || return 1
        ensure_audit
        ;;
    *)
        log "server at $ADDR did not report its seal status"
        return 1
        ;;
    esac
}

if ! mkdir -p "$STATE_DIR" || ! chmod 0700 "$STATE_DIR"; then
    log "cannot create or protect $STATE_DIR"
    exit 1
fi

while :; do
    if step && [ "$ONESHOT" = "1" ]; then
        exit 0
    fi
    pause "$INTERVAL"
done
