#!/usr/bin/env bash
# mirrorseed post-sync job: import the CI signing (sub)key into a throwaway GNUPGHOME and run
# `invoke release`. Run it right after the mirror sync, and on a timer so the pointer is re-signed
# before half its validity has passed (see ci/README.md).
#
# Environment:
#   MIRRORSEED_SIGNING_KEY     required: armored secret signing subkey
#                              (gpg --armor --export-secret-subkeys SUBKEYID!)
#   MIRRORSEED_KEY_PASSPHRASE  optional: its passphrase (never echoed, never on a command line)
#   MIRRORSEED_CONFIG          settings file (default: mirror.toml in the current directory)
#   MIRRORSEED_KEY             the fingerprint to sign with, if the settings file has no `key = ...`
#   (any other MIRRORSEED_* setting, and the S3 credentials of the destination, pass through)
# Arguments are passed on to `invoke release` (e.g. --dry-run, --json, --metrics FILE).
# Exit code: that of `invoke release`; 2 if the key is missing or unusable.
set -euo pipefail
umask 077

fail() {
  printf 'post-sync: %s\n' "$1" >&2
  exit 2
}

if [ -z "${MIRRORSEED_SIGNING_KEY:-}" ]; then
  fail "MIRRORSEED_SIGNING_KEY is not set; put the armored secret signing subkey in it (see ci/README.md)"
fi

project=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
config=${MIRRORSEED_CONFIG:-mirror.toml}
case "$config" in
  /*) ;;
  *) config="$PWD/$config" ;;
esac

if [ -x "$project/.venv/bin/invoke" ]; then
  invoke_bin="$project/.venv/bin/invoke"
elif command -v invoke >/dev/null 2>&1; then
  invoke_bin=invoke
else
  fail "invoke not found; run ./bootstrap.sh in $project first"
fi

GNUPGHOME=$(mktemp -d /tmp/msg.XXXXXX) # short: gpg-agent's socket path must fit 108 bytes
export GNUPGHOME

# shellcheck disable=SC2317  # run by the EXIT trap below
cleanup() {
  gpgconf --kill gpg-agent >/dev/null 2>&1 || true
  rm -rf "$GNUPGHOME"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${MIRRORSEED_KEY_PASSPHRASE:-}" ]; then
  # printf is a shell builtin: the passphrase goes to a 0600 file, not onto a command line
  printf '%s' "$MIRRORSEED_KEY_PASSPHRASE" >"$GNUPGHOME/passphrase"
  printf 'pinentry-mode loopback\npassphrase-file %s\n' "$GNUPGHOME/passphrase" >"$GNUPGHOME/gpg.conf"
fi

if ! printf '%s\n' "$MIRRORSEED_SIGNING_KEY" | gpg --batch --quiet --import 2>"$GNUPGHOME/import.log"; then
  sed 's/^/post-sync: /' "$GNUPGHOME/import.log" >&2
  fail "MIRRORSEED_SIGNING_KEY could not be imported; it must be an armored secret key export"
fi
# usable secret (sub)keys: "sec"/"ssb" lines whose field 15 is not "#" (a stub without secret material)
secret_keys=$(gpg --batch --with-colons --list-secret-keys | awk -F: '($1 == "sec" || $1 == "ssb") && $15 != "#"' | wc -l)
if [ "$secret_keys" -eq 0 ]; then
  fail "MIRRORSEED_SIGNING_KEY holds no secret key; export it with gpg --armor --export-secret-subkeys SUBKEYID!"
fi
# the secrets stay out of the release process's environment
unset MIRRORSEED_SIGNING_KEY MIRRORSEED_KEY_PASSPHRASE

cd "$project"
status=0
"$invoke_bin" release --config "$config" "$@" || status=$?
exit "$status"
