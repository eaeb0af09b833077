#!/usr/bin/env bash
# Fetch and verify a package of this mirror with aria2c, gpgv, zstd, sha256sum and jq: the current
# version of the package you name (bash recipe.sh NAME), or of the one WANT names below. Run it in a
# folder of its own (it keeps the key, the index and packages/ there); it stops at the first step that
# fails.
# Pasted into a terminal it runs in a subshell: your shell, its options and its folder are unchanged.
(
set -euo pipefail

BASE=https://seed.example.org/golden
FPR=EB39D9883B090A72AE83A80B17999E7D92DF6708
REPO=golden
# --seed-time=0: stop when the download is complete (do not seed); the timeouts: a dead tracker
# would otherwise stall each download for about two minutes.
# --lowest-speed-limit, --timeout, --max-tries: a stalled or crawling HTTP server is dropped.
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

# 1. Once: the operator's public key, as the binary keyring gpgv reads. Compare the fingerprint gpg
#    shows with the one on the front page; step 2 also refuses a pointer signed by any key but $FPR.
if [ ! -f signing-key.gpg ]; then
  fetch_small signing-key.gpg 262144
  if command -v gpg >/dev/null; then gpg --show-keys signing-key.gpg || true; fi
fi

# 2. The signed pointer: which index shards are current, until when. gpgv writes pointer.json even
#    when the signature is bad, so every failed check deletes it.
rm -f latest.asc pointer.json gpgv.status
fetch_small latest.asc 262144
gpgv --keyring ./signing-key.gpg --status-fd 3 --output pointer.json latest.asc 3>gpgv.status \
  || { rm -f pointer.json; exit 1; }
if ! { grep -q '^\[GNUPG:\] GOODSIG ' gpgv.status \
  && grep -Eq "^\[GNUPG:\] VALIDSIG ($FPR .*|.* $FPR)\$" gpgv.status; }; then
  rm -f pointer.json; echo "latest.asc: not signed by $FPR, or by an expired key" >&2; exit 1
fi
# A pointer of another format (an older or newer publisher): this copy of the script cannot read it.
POINTER_FORMAT=mirrorseed-pointer/3
INDEX_FORMAT=mirrorseed-index/2
FORMAT=$(jq -r 'if type == "object" and has("format") then .format | tostring | .[:80] | gsub("[^ -~]"; "?")
  else "none" end' pointer.json 2>/dev/null) || FORMAT="none (not JSON)"
if [ "$FORMAT" != "$POINTER_FORMAT" ]; then
  rm -f pointer.json
  echo "latest.asc: format $FORMAT; this script reads $POINTER_FORMAT: a current copy of it is at $BASE/"recipe.sh >&2
  exit 1
fi
jq -e --arg repo "$REPO" --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '.repo == $repo and (.sequence | type) == "number" and .expires > $now' pointer.json >/dev/null \
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
# Every shard's fields, before any becomes a file name or a URL: hashes in lowercase hex, sizes whole
# numbers, paths under index/ without . or .. segments, names without control characters, each part of a
# name once (a shard over 32 MiB of JSON comes in parts 0, 1, ..., each a whole shard document).
jq -e 'def hex($n): type == "string" and test("^[0-9a-f]{\($n)}$");
  def count: type == "number" and . >= 0 and . == floor;
  def rel: type == "string" and test("^index/[A-Za-z0-9._/-]+$") and (split("/") | all(. != "" and . != "." and . != ".."));
  (.shards | type) == "array" and ([.shards[] | [.name, .part]] | unique | length) == (.shards | length)
  and all(.shards[]; (.name | type) == "string" and .name != "" and (.name | explode | all(. > 31 and . != 127))
    and (.part | count)
    and (.path | rel) and (.torrent | rel) and (.sha256 | hex(64)) and (.uncompressed_sha256 | hex(64))
    and (.infohash | hex(40)) and (.size | count) and (.uncompressed_size | count) and (.packages | count)
    and (.delta == null or ((.delta.path | rel) and (.delta.from_sha256 | hex(64)) and (.delta.sha256 | hex(64))
      and (.delta.size | count))))' pointer.json >/dev/null \
  || { rm -f pointer.json; echo "latest.asc: its list of shards is malformed; tell the operator of $BASE" >&2; exit 1; }

# 3. The index shards you follow: MIRRORSEED_SHARDS, shell patterns separated by spaces (* matches / too;
#    default: all of them; a pattern that matches none stops the script, naming the shards there are).
#    For example: MIRRORSEED_SHARDS='stable/*/amd64 stable/*/all' bash recipe.sh
#    Each is kept as shards/<SHA-256 of its JSON>.json: a shard that did not change is not fetched
#    again; a changed one comes as a small delta over HTTP from the one kept (zstd --patch-from), else
#    by its .torrent (HTTP webseeds: works with no peer online). Every file is checked against the
#    SHA-256 in the signed pointer; zstd's output is read up to the size the pointer gives (a frame
#    can lie). index.json: the chosen shards' packages, once each, sorted by path.
mapfile -t LINES < <(jq -r '.shards[] | [.name, .path, .size, .sha256, .uncompressed_size, .uncompressed_sha256,
  .torrent, .infohash, .part, (.delta // {} | .from_sha256 // "", .path // "", .size // "", .sha256 // "")]
  | map(tostring) | join("\t")' pointer.json)
read -r -a PATTERNS <<< "${MIRRORSEED_SHARDS:-*}"
[ -n "${PATTERNS[*]-}" ] || PATTERNS=('*')
NAMES=() LISTED=()
declare -A NAMED=() TAKE=()
for LINE in "${LINES[@]}"; do
  IFS=$'\t' read -r NAME _ _ _ _ USHA _ _ PART _ <<< "$LINE"
  NAMES+=("$NAME")
  [ "$PART" != 0 ] || LISTED+=("$NAME")
  NAMED[$USHA]=1
done
for P in "${PATTERNS[@]}"; do
  HIT=0
  for I in "${!NAMES[@]}"; do
    # shellcheck disable=SC2053 # $P is a pattern
    if [[ ${NAMES[I]} == $P ]]; then HIT=1; TAKE[$I]=1; fi
  done
  if [ "$HIT" -eq 0 ] && { [ "$P" != '*' ] || [ -n "${NAMES[*]-}" ]; }; then
    echo "MIRRORSEED_SHARDS: $P matches no shard of index $SEQ; its shards: ${LISTED[*]:-none}" >&2; exit 1
  fi
done

# sha_is FILE SHA256: whether FILE's SHA-256 is SHA256.
sha_is() {
  [ "$(sha256sum < "$1" | cut -c1-64)" = "$2" ]
}
# url PATH: $BASE/PATH, each path segment percent-encoded.
url() {
  printf '%s/%s\n' "$BASE" "$(jq -rn --arg p "$1" '$p | split("/") | map(@uri) | join("/")')"
}
# unpack NAME OUT SIZE SHA256 WHAT COMMAND...: COMMAND's output (decompressing WHAT), at most SIZE + 1 bytes
# of it, into OUT if it is shard NAME's JSON (SIZE bytes of SHA-256 SHA256, this format, repository and
# shard); else one line and exit 1.
unpack() {
  local name=$1 out=$2 size=$3 sha=$4 what=$5
  shift 5
  { "$@" 2>/dev/null || true; } | head -c "$((size + 1))" > "$out.part"
  if [ "$(wc -c < "$out.part")" -ne "$size" ] || ! sha_is "$out.part" "$sha"; then
    rm -f "$out.part" "$what"
    echo "$what: does not give the JSON of shard $name that latest.asc names (deleted): run again later, or tell the operator of $BASE" >&2
    exit 1
  fi
  jq -e --arg format "$INDEX_FORMAT" --arg repo "$REPO" --arg name "$name" \
    '.format == $format and .repo == $repo and .shard == $name' "$out.part" >/dev/null 2>&1 \
    || { rm -f "$out.part"; echo "$what: not shard $name of $REPO in format $INDEX_FORMAT; tell the operator of $BASE" >&2; exit 1; }
  mv -f "$out.part" "$out"
}
mkdir -p shards
CHOSEN=()
for I in "${!LINES[@]}"; do
  [ -n "${TAKE[$I]-}" ] || continue
  CHOSEN+=("${LINES[I]}")
  IFS=$'\t' read -r NAME ZPATH ZSIZE ZSHA USIZE USHA TORRENT _ PART DFROM DPATH DSIZE DSHA <<< "${LINES[I]}"
  LABEL=$NAME
  [ "$PART" = 0 ] || LABEL="$NAME part $PART"
  JSON=shards/$USHA.json
  # a kept copy that no longer checks out is fetched again
  if [ -f "$JSON" ] && { [ "$(wc -c < "$JSON")" -ne "$USIZE" ] || ! sha_is "$JSON" "$USHA"; }; then rm -f "$JSON"; fi
  if [ -f "$JSON" ]; then
    echo "shard $LABEL: kept ($JSON)"
  elif [ -n "$DFROM" ] && [ -f "shards/$DFROM.json" ] && sha_is "shards/$DFROM.json" "$DFROM"; then
    # the delta from the shard kept here, over plain HTTP (at most its size in the signed pointer)
    fetch_capped "$DPATH" "$DSIZE" -d . -o "$DPATH" "$(url "$DPATH")"
    if ! sha_is "$DPATH" "$DSHA"; then
      rm -f "$DPATH"
      echo "$DPATH: not the SHA-256 latest.asc gives it (the delta of shard $LABEL): run again later, or tell the operator of $BASE" >&2
      exit 1
    fi
    unpack "$NAME" "$JSON" "$USIZE" "$USHA" "$DPATH" zstd -qdc --patch-from="shards/$DFROM.json" "$DPATH"
    rm -f "$DPATH"
    echo "shard $LABEL: updated by a delta of $DSIZE bytes ($JSON)"
  else
    # the compressed shard by its .torrent; kept beside as ZPATH (give-back.sh seeds it)
    if [ -f "$ZPATH" ] && [ ! -f "$ZPATH.aria2" ] && ! sha_is "$ZPATH" "$ZSHA"; then rm -f "$ZPATH"; fi
    if [ ! -f "$ZPATH" ] || [ -f "$ZPATH.aria2" ]; then
      mkdir -p "$(dirname "$ZPATH")"
      fetch "$ZPATH" "$ZSIZE" --follow-torrent=mem -d "$(dirname "$ZPATH")" "$(url "$TORRENT")"
    fi
    if [ "$(stat -c %s "$ZPATH" 2>/dev/null || echo 0)" -ne "$ZSIZE" ] || ! sha_is "$ZPATH" "$ZSHA"; then
      rm -f "$ZPATH"
      echo "$ZPATH: not the size and SHA-256 latest.asc gives it (shard $LABEL); deleted: run again later, or tell the operator of $BASE" >&2
      exit 1
    fi
    unpack "$NAME" "$JSON" "$USIZE" "$USHA" "$ZPATH" zstd -qdc "$ZPATH"
    echo "shard $LABEL: fetched, $ZSIZE bytes ($JSON)"
  fi
done
# Shards and compressed shards the pointer no longer names are deleted (a resumable download of a
# chosen one stays).
for F in shards/*.json shards/*.part; do
  [ -e "$F" ] || continue
  H=${F#shards/}
  [[ $F == *.json && -n ${NAMED[${H%.json}]-} ]] || rm -f "$F"
done
declare -A KEEP=()
for LINE in "${CHOSEN[@]}"; do
  IFS=$'\t' read -r _ ZPATH _ <<< "$LINE"
  KEEP[$ZPATH]=1
done
for F in index/shards/*; do
  [ -f "$F" ] || continue
  [ -n "${KEEP[${F%.aria2}]-}" ] || rm -f "$F"
done
# The whole index an earlier version of this script kept (index/<sequence>-<hash>/, mirrorseed-pointer/1).
for F in index/*/; do
  if [[ $F =~ ^index/[0-9]+-[0-9a-f]{12}/$ ]]; then rm -rf -- "$F"; fi
done
# index.json: the packages of the chosen shards, once each (a file listed in two shards is in both).
{
  echo '{"packages":[]}'
  for LINE in "${CHOSEN[@]}"; do
    IFS=$'\t' read -r _ _ _ _ _ USHA _ <<< "$LINE"
    cat "shards/$USHA.json"
  done
} | jq -cn '{packages: ([inputs | .packages[]] | unique_by(.path))}' > index.json.part
mv -f index.json.part index.json

# 4. The package, by name or repository path: its current version in the signed index (an older
#    saved copy of this script still fetches the newest), by its .torrent URL. aria2 checks every
#    piece's SHA-1 while downloading, then sha256sum checks the file against the index's SHA-256.
WANT=${1:-2048-demo}
ARCH=${MIRRORSEED_ARCH:-amd64}
REC=$(jq -c --arg w "$WANT" --arg a "$ARCH" 'first(.packages[] | select(.torrent != null and (.path == $w
  or (.name == $w and ($a == "" or .arch == null or .arch == $a or .arch == "all" or .arch == "any")))))' index.json)
[ -n "$REC" ] || { echo "$WANT: not in the current index${MIRRORSEED_SHARDS:+ (the shards MIRRORSEED_SHARDS=$MIRRORSEED_SHARDS follows; unset it for all)}" >&2; exit 1; }
PKG=$(jq -r .path <<<"$REC")
SHA=$(jq -r .sha256 <<<"$REC")
SIZE=$(jq -r .size <<<"$REC")
FILE=packages/${PKG##*/}
if [ ! -f "$FILE" ] || [ -f "$FILE.aria2" ]; then
  fetch "$FILE" "$SIZE" --follow-torrent=mem -d packages \
    "$BASE/$(jq -r '.torrent | split("/") | map(@uri) | join("/")' <<<"$REC")"
fi
echo "$SHA  $FILE" | sha256sum -c

# The same file by its Metalink instead (the HTTP mirrors, the SHA-256 and the .torrent in one
# document), or by its magnet in a client with peers (aria2 does not start from a magnet without a
# live peer: it ignores ws= and xs=):
echo "metalink: $BASE/$(jq -r '.metalink | split("/") | map(@uri) | join("/")' <<<"$REC")"
echo "magnet: $(jq -r .magnet <<<"$REC")"

# Install it: printed, not run (this script never needs root).
printf 'now: sudo apt install ./%q   (or: sudo dpkg -i %q)\n' "$FILE" "$FILE"
)
