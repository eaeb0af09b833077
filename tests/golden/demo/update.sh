#!/usr/bin/env bash
# Fetch the current version of every package you name, in one aria2c run, each checked against the
# signed index: bash update.sh NAME... (2048-demo when you name none). Everything installed that
# this mirror has: bash update.sh $(dpkg-query -W -f='${Package}\n')
# Run it in a folder of its own (the recipe's will do); it stops at the first step that fails.
# Pasted into a terminal it runs in a subshell: your shell, its options and its folder are unchanged.
(
set -euo pipefail

BASE=https://seed.example.org/golden
FPR=EB39D9883B090A72AE83A80B17999E7D92DF6708
REPO=golden
FLAGS=(--seed-time=0 --bt-stop-timeout=60 --bt-tracker-connect-timeout=5 --bt-tracker-timeout=5 --connect-timeout=10 --timeout=20 --max-tries=3 --lowest-speed-limit=1K --stream-piece-selector=random --bt-tracker-interval=30)

# The tools, checked before anything is fetched: one line naming what to install.
MISSING=()
for TOOL in aria2c gpgv jq zstd sha256sum timeout; do
  command -v "$TOOL" >/dev/null || MISSING+=("$TOOL")
done
if [ -n "${MISSING[*]-}" ]; then
  echo "${MISSING[*]}: not installed. Debian, Ubuntu: sudo apt install aria2 gpgv jq zstd; Arch: sudo pacman -S --needed aria2 gnupg jq zstd" >&2
  exit 1
fi

# Every download is bounded in time and size. Time: MIRRORSEED_TIMEOUT seconds (default 30),
# plus one second per MIRRORSEED_MIN_RATE bytes (default 16384) of its size, for the whole
# aria2c run (coreutils timeout, in the foreground so that Ctrl-C reaches aria2c; SIGKILL 5 s later).
# Size: ulimit -f makes the kernel refuse any write past the cap (the key and the pointer: their cap
# plus 1 KiB; a package: its size from the signed index plus 1 MiB), and a file over its cap is
# deleted. One line to stderr, exit 1. A torrent download (the index, packages) also has
# MIRRORSEED_PEER_WAIT seconds (default 60) more: with no webseed up, a peer may take a
# tracker announce and one of aria2's 30-second optimistic-unchoke rounds before it sends a byte.
TIMEOUT=${MIRRORSEED_TIMEOUT:-30}
MIN_RATE=${MIRRORSEED_MIN_RATE:-16384}
PEER_WAIT=${MIRRORSEED_PEER_WAIT:-60}
[[ $TIMEOUT =~ ^[0-9]+$ && $MIN_RATE =~ ^[1-9][0-9]*$ && $PEER_WAIT =~ ^[0-9]+$ ]] \
  || { echo "MIRRORSEED_TIMEOUT, MIRRORSEED_MIN_RATE, MIRRORSEED_PEER_WAIT: not whole numbers (seconds, bytes per second)" >&2; exit 1; }
# LPD (BEP 14): find peers on this LAN by multicast, so neighbours share instead of all fetching from
# the mirrors. It tells the LAN what you fetch: MIRRORSEED_LPD=false turns it off.
LPD=${MIRRORSEED_LPD:-true}
[[ $LPD == true || $LPD == false ]] || { echo "MIRRORSEED_LPD: not true or false" >&2; exit 1; }

# aria2_bounded SECONDS MAX_BYTES ARG...: aria2c, stopped after SECONDS, no file it writes above
# MAX_BYTES rounded up to 1 KiB (a refused write is an error for it: SIGXFSZ is ignored).
aria2_bounded() {
  local seconds=$1 blocks=$((($2 + 1023) / 1024))
  shift 2
  (trap '' XFSZ; ulimit -f "$blocks"; exec timeout --foreground -k 5 "$seconds" aria2c "${FLAGS[@]}" --bt-enable-lpd="$LPD" "$@")
}

# failed WHAT STATUS: one line naming why aria2c failed, then exit 1.
failed() {
  if [ "$2" -eq 2 ] || [ "$2" -eq 5 ] || [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; then
    echo "$1: download timed out" >&2
  else
    echo "$1: download failed (aria2c exit status $2)" >&2
  fi
  exit 1
}

# fetched FILE CAP STATUS [drop]: FILE over CAP bytes is deleted and refused; a failed aria2c is
# named (drop: FILE is deleted then too).
fetched() {
  local size
  size=$(stat -c %s "$1" 2>/dev/null || echo 0)
  if [ "$size" -le "$2" ] && [ "$3" -eq 0 ]; then return 0; fi
  if [ "$size" -gt "$2" ] || [ "${4-}" = drop ]; then rm -f "$1" "$1.aria2"; fi
  if [ "$size" -gt "$2" ]; then echo "$1: larger than $2 bytes, refused" >&2; exit 1; fi
  failed "$1" "$3"
}

# fetch FILE SIZE ARG...: a .torrent or Metalink download of FILE, SIZE bytes by the signed index
# (aria2 checks the size and every piece); a partial FILE stays for the next run to resume.
fetch() {
  local status=0
  aria2_bounded "$((TIMEOUT + PEER_WAIT + $2 / MIN_RATE))" "$(($2 + 1048576))" "${@:3}" || status=$?
  fetched "$1" "$2" "$status"
}

# fetch_capped FILE CAP ARG...: a plain HTTP download of FILE, at most CAP bytes.
fetch_capped() {
  local status=0
  rm -f "$1" "$1.aria2"
  aria2_bounded "$((TIMEOUT + $2 / MIN_RATE))" "$(($2 + 1024))" --quiet=true --file-allocation=none \
    --allow-overwrite=true --auto-file-renaming=false "${@:3}" || status=$?
  fetched "$1" "$2" "$status" drop
}

# fetch_small NAME CAP: $BASE/NAME into ./NAME, at most CAP bytes.
fetch_small() {
  fetch_capped "$1" "$2" -o "$1" "$BASE/$1"
}

DIR=packages
# No HTTP mirror is known here for detached signatures (.sig, signature.path in the index), if any.
MIRROR=''
if [ "$#" -gt 0 ]; then WANT=("$@"); else WANT=(2048-demo); fi

# 1. Once: the operator's public key, as the binary keyring gpgv reads. Compare the fingerprint gpg
#    shows with the one on the front page; step 2 also refuses a pointer signed by any key but $FPR.
if [ ! -f signing-key.gpg ]; then
  fetch_small signing-key.gpg 262144
  if command -v gpg >/dev/null; then gpg --show-keys signing-key.gpg || true; fi
fi

# 2. The signed pointer: which index is current, until when. gpgv writes pointer.json even when
#    the signature is bad, so every failed check deletes it.
rm -f latest.asc pointer.json gpgv.status
fetch_small latest.asc 65536
gpgv --keyring ./signing-key.gpg --status-fd 3 --output pointer.json latest.asc 3>gpgv.status \
  || { rm -f pointer.json; exit 1; }
if ! { grep -q '^\[GNUPG:\] GOODSIG ' gpgv.status \
  && grep -Eq "^\[GNUPG:\] VALIDSIG ($FPR .*|.* $FPR)\$" gpgv.status; }; then
  rm -f pointer.json; echo "latest.asc: not signed by $FPR, or by an expired key" >&2; exit 1
fi
jq -e --arg repo "$REPO" --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '.format == "mirrorseed-pointer/1" and .repo == $repo and (.sequence | type) == "number"
   and .expires > $now' pointer.json >/dev/null \
  || { rm -f pointer.json; echo "latest.asc: expired, or not the pointer of $REPO" >&2; exit 1; }
# Rollback protection: the highest sequence seen from this publisher (repository and key) is kept in
# ${XDG_STATE_HOME:-~/.local/state}/mirrorseed/, whichever folder the script runs in.
SEEN=${XDG_STATE_HOME:-$HOME/.local/state}/mirrorseed/$REPO-$FPR.sequence
mkdir -p "${SEEN%/*}"
SEQ=$(jq -r .sequence pointer.json)
if [ -f "$SEEN" ] && [ "$SEQ" -lt "$(cat "$SEEN")" ]; then
  rm -f pointer.json; echo "latest.asc: sequence $SEQ is older than $(cat "$SEEN"), seen before ($SEEN)" >&2; exit 1
fi
echo "$SEQ" > "$SEEN"

# 3. The index, by its .torrent (HTTP webseeds: works with no peer online). Check its SHA-256
#    against the pointer; read at most uncompressed_size bytes out of zstd (a frame can lie).
IDX=$(jq -r .index.path pointer.json)
IDX_ZSIZE=$(jq -r .index.size pointer.json)
IDX_SHA=$(jq -r .index.sha256 pointer.json)
IDX_SIZE=$(jq -r .index.uncompressed_size pointer.json)
IDX_TORRENT=$(jq -r '.index_torrent | split("/") | map(@uri) | join("/")' pointer.json)
if [ ! -f "$IDX" ] || [ -f "$IDX.aria2" ]; then
  fetch "$IDX" "$IDX_ZSIZE" --follow-torrent=mem -d index "$BASE/$IDX_TORRENT"
fi
echo "$IDX_SHA  $IDX" | sha256sum -c
zstd -dc "$IDX" | head -c "$((IDX_SIZE + 1))" > index.json
[ "$(wc -c < index.json)" -eq "$IDX_SIZE" ] \
  || { echo "$IDX: not $IDX_SIZE bytes once decompressed" >&2; exit 1; }

# 4. The wanted packages' current index records, one JSON object a line.
jq -c --args '.packages[] | select(.torrent != null and (.name as $n | any($ARGS.positional[]; . == $n)))' \
  "${WANT[@]}" < index.json > wanted.jsonl
[ -s wanted.jsonl ] || { echo "none of ${WANT[*]} is in the current index" >&2; exit 1; }

# aria2's input file: one URI a line, options indented under it. The .torrent of each package
# (its path segments percent-encoded), and its .sig over plain HTTP, saved as <package file>.sig.
jq -r --arg base "$BASE" --arg mirror "$MIRROR" '
  def enc: split("/") | map(@uri) | join("/");
  ($base + "/" + (.torrent | enc)),
  (select(.signature != null and $mirror != "")
   | ($mirror + "/" + (.signature.path | enc)), ("  out=" + (.path | split("/") | last) + ".sig"))
' wanted.jsonl > list.txt
# --check-integrity: a package already in $DIR is checked piece by piece, not fetched again. The
# time limit counts every wanted byte; no file may grow past the largest wanted one plus 1 MiB.
TOTAL=$(jq -s 'map(.size + (.signature.size // 0)) | add' wanted.jsonl)
LARGEST=$(jq -s 'map(.size, (.signature.size // 0)) | max' wanted.jsonl)
STATUS=0
aria2_bounded "$((TIMEOUT + PEER_WAIT + TOTAL / MIN_RATE))" "$((LARGEST + 1048576))" \
  --follow-torrent=mem --check-integrity=true --allow-overwrite=true -d "$DIR" -i list.txt || STATUS=$?
[ "$STATUS" -eq 0 ] || failed "$DIR" "$STATUS"

# Every file against the SHA-256 in the signed index.
jq -r --arg dir "$DIR" --arg mirror "$MIRROR" '
  ($dir + "/" + (.path | split("/") | last)) as $file
  | (.sha256 + "  " + $file),
    (select(.signature != null and $mirror != "") | .signature.sha256 + "  " + $file + ".sig")
' wanted.jsonl | sha256sum -c

# Install them: printed, not run (this script never needs root).
mapfile -t FILES < <(jq -r --arg dir "$DIR" '$dir + "/" + (.path | split("/") | last)' wanted.jsonl)
printf 'now: sudo apt install'
printf ' ./%q' "${FILES[@]}"
printf '\n'
)
