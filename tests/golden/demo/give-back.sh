#!/usr/bin/env bash
# Give back (opt-in): seed what the recipe fetched and what apt or pacman keep in their caches, so other
# users fetch from you and not only from the mirrors. Run it with bash in the folder where the recipe ran
# (signing-key.gpg, index.json, packages/). It verifies the current signed pointer and index as
# the recipe does, then one aria2c seeds the files of the seed folders whose size and SHA-256 are a
# package of that index, whatever their name (stale versions, other files and never-announced packages
# are left out), and the index shards fetched whole (MIRRORSEED_SHARDS: those you follow), until each
# has uploaded RATIO times its size or MINUTES have passed; then it exits 0. Ctrl-C stops it. aria2 gets only files just hashed, through links in
# give-back-work/, and opens them read-only.
#   MIRRORSEED_SEED_DIRS     folders to seed from, colon-separated (default: packages, plus
#                            /var/cache/apt/archives and /var/cache/pacman/pkg where they exist and
#                            this user cannot write to them, as installed; packages: the recipe's files only)
#   MIRRORSEED_SEED_RATIO    stop a torrent once it uploaded this many times its size (default 2.0; 0: time only)
#   MIRRORSEED_SEED_MINUTES  stop seeding after this many minutes (default 1440)
#   MIRRORSEED_UPLOAD_LIMIT  upload rate cap for everything, bytes/s, K or M suffix (default 1M)
#   MIRRORSEED_MAX_TORRENTS  seed at most this many packages, the most recently fetched first (default 100)
#   MIRRORSEED_LPD=false     do not look for peers on the LAN (Local Peer Discovery)
# Other aria2 options (a fixed --listen-port for a forwarded port, DHT, ...) go in aria2's own
# configuration file, ~/.config/aria2/aria2.conf. Seeding tells the swarm which packages you have.
set -euo pipefail
# Stopped (Ctrl-C, systemctl stop): bash first waits for the aria2c it runs, so none is left behind.
trap 'echo "give-back: stopped" >&2; exit 130' INT
trap 'echo "give-back: stopped" >&2; exit 143' TERM

BASE=https://seed.example.org/golden
FPR=EB39D9883B090A72AE83A80B17999E7D92DF6708
REPO=golden
# Fetching (pointer, index, .torrent files): the recipe's flags, which stop at completion.
FLAGS=(--seed-time=0 --bt-stop-timeout=60 --bt-tracker-connect-timeout=5 --bt-tracker-timeout=5 --connect-timeout=10 --timeout=20 --max-tries=3 --lowest-speed-limit=1K --stream-piece-selector=random --bt-tracker-interval=30)
# Seeding: the same without the stop at completion; short tracker timeouts (a dead tracker is skipped).
SEED_FLAGS=(--bt-tracker-connect-timeout=5 --bt-tracker-timeout=5 --connect-timeout=10 --timeout=20 --max-tries=3 --lowest-speed-limit=1K --stream-piece-selector=random)

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

RATIO=${MIRRORSEED_SEED_RATIO:-2.0}
MINUTES=${MIRRORSEED_SEED_MINUTES:-1440}
UPLOAD=${MIRRORSEED_UPLOAD_LIMIT:-1M}
MAX=${MIRRORSEED_MAX_TORRENTS:-100}
[[ $RATIO =~ ^[0-9]{1,6}(\.[0-9]{1,6})?$ ]] \
  || { echo "MIRRORSEED_SEED_RATIO: $RATIO is not a share ratio such as 2.0" >&2; exit 1; }
[[ $MINUTES =~ ^[0-9]{1,6}(\.[0-9]{1,6})?$ && $MINUTES =~ [1-9] ]] \
  || { echo "MIRRORSEED_SEED_MINUTES: $MINUTES is not a number of minutes above 0, such as 1440" >&2; exit 1; }
[[ $UPLOAD =~ ^[1-9][0-9]{0,9}[KkMm]?$ ]] \
  || { echo "MIRRORSEED_UPLOAD_LIMIT: $UPLOAD is not an upload rate above 0 such as 500K or 1M (bytes/s)" >&2; exit 1; }
[[ $MAX =~ ^[1-9][0-9]{0,3}$ && $MAX -le 1000 ]] \
  || { echo "MIRRORSEED_MAX_TORRENTS: $MAX is not a whole number from 1 to 1000" >&2; exit 1; }
# The seed folders: MIRRORSEED_SEED_DIRS (each an existing folder), else packages/ and the package
# managers' caches this user cannot write to (root-owned as installed: aria2 cannot change them either).
PACKAGES=packages
SYSTEM_CACHES=(/var/cache/apt/archives /var/cache/pacman/pkg)
SKIPPED=()
if [ -n "${MIRRORSEED_SEED_DIRS-}" ]; then
  [[ $MIRRORSEED_SEED_DIRS != *[[:cntrl:]]* ]] \
    || { echo "MIRRORSEED_SEED_DIRS: a folder name holds a control character" >&2; exit 1; }
  IFS=: read -r -a SEED_DIRS <<< "$MIRRORSEED_SEED_DIRS"
  for D in "${SEED_DIRS[@]}"; do
    [[ -n $D && -d $D && -r $D && -x $D ]] \
      || { echo "MIRRORSEED_SEED_DIRS: '$D' is not a folder this user can read (folders are separated by :)" >&2; exit 1; }
  done
else
  SEED_DIRS=("$PACKAGES")
  for D in "${SYSTEM_CACHES[@]}"; do
    if [ -d "$D" ] && [ -w "$D" ]; then
      SKIPPED+=("$D")
    elif [ -d "$D" ] && [ -r "$D" ] && [ -x "$D" ]; then
      SEED_DIRS+=("$D")
    fi
  done
fi

# 1. The operator's key and the packages: where the recipe left them.
[[ -f signing-key.gpg && ( -n ${MIRRORSEED_SEED_DIRS-} || -d $PACKAGES ) ]] \
  || { echo "signing-key.gpg, $PACKAGES/: not here; run the recipe in this folder first, then give-back.sh in it" >&2; exit 1; }

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
  echo "latest.asc: format $FORMAT; this script reads $POINTER_FORMAT: a current copy of it is at $BASE/"give-back.sh >&2
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
#    For example: MIRRORSEED_SHARDS='stable/*/amd64 stable/*/all' bash give-back.sh
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

# 4. What to seed: each complete file of the seed folders (not their subfolders; no .aria2 beside it)
#    whose size and SHA-256 are those of a package of the current index, whatever its name (apt's cache
#    writes an epoch `1:` as `1%3a`); only files of a size the index lists are hashed. The most recently
#    changed first, at most $MAX; a file in several folders is seeded once, from the first.
WORK=give-back-work
rm -rf "$WORK"
mkdir "$WORK"
for D in "${SKIPPED[@]}"; do
  echo "give-back: not seeding $D/: this user can write to it (seed it as a normal user; MIRRORSEED_SEED_DIRS names folders)" >&2
done
jq -c '.packages[] | select(.torrent != null and .infohash != null and .sha256 != null and .size > 0)
  | (.path | split("/") | last) as $name | select($name != "." and $name != ".." and ($name | explode | all(. > 31 and . != 127)))
  | {$name, path, size, sha256, infohash, piece_size, torrent}' index.json > "$WORK/announced.jsonl"
declare -A SIZES=()
while read -r SIZE; do SIZES[$SIZE]=1; done < <(jq -r .size "$WORK/announced.jsonl" | sort -u)
WHERE=$(printf '%s/, ' "${SEED_DIRS[@]}")
WHERE=${WHERE%, }
echo "give-back: looking for the packages of index $SEQ in $WHERE"
: > "$WORK/have.tsv"
HELD=0
for D in "${SEED_DIRS[@]}"; do
  while IFS=$'\t' read -r -d '' SIZE MTIME NAME; do
    HELD=$((HELD + 1))
    F="$D/$NAME"
    if [[ -n ${SIZES[$SIZE]-} && $NAME != *[[:cntrl:]]* ]] && [ -r "$F" ] && [ ! -e "$F.aria2" ]; then
      printf '%s\t%s\t%s\t%s\t%s\n' "$(sha256sum < "$F" | cut -c1-64)" "$SIZE" "$MTIME" "$(realpath -e -- "$F")" "$F" \
        >> "$WORK/have.tsv"
    fi
  done < <(find "$D/" -maxdepth 1 -type f ! -name '*.aria2' -printf '%s\t%T@\t%f\0')
done
jq -sc --rawfile have "$WORK/have.tsv" --argjson max "$MAX" '
  (reduce ($have | split("\n")[] | select(length > 0) | split("\t")) as [$sha256, $size, $mtime, $target, $shown]
    ({}; (($sha256 + " " + $size)) as $key
      | if has($key) then . else .[$key] = {mtime: ($mtime | tonumber), $target, $shown} end)) as $on_disk
  | [.[] | $on_disk[.sha256 + " " + (.size | tostring)] as $file | select($file != null) | del(.sha256) + $file]
  | unique_by(.infohash) | sort_by(-.mtime, .path) | .[:$max][]' "$WORK/announced.jsonl" > "$WORK/packages.jsonl"
if [ ! -s "$WORK/packages.jsonl" ]; then
  echo "give-back: nothing to seed: none of the $HELD files in $WHERE is a package of index $SEQ"
  exit 0
fi

# 5. Their .torrent files (and those of the index shards the recipe fetched whole, each checked against
#    the signed pointer; a shard updated by a delta has no compressed copy here to seed), named by
#    infohash; each must have the infohash the signed index (or pointer) gives. A never-announced package
#    (BEP 27 private flag: webseeds only) is left out.
jq -r --arg base "$BASE" 'def enc: split("/") | map(@uri) | join("/");
  ($base + "/" + (.torrent | enc)), ("  out=" + .infohash + ".torrent")' "$WORK/packages.jsonl" > "$WORK/torrents.txt"
: > "$WORK/shards.tsv"
SHARD_CAPS=()
for LINE in "${CHOSEN[@]}"; do
  IFS=$'\t' read -r NAME ZPATH ZSIZE ZSHA _ _ TORRENT IH PART _ <<< "$LINE"
  [ "$PART" = 0 ] || NAME="$NAME part $PART"
  if [ -f "$ZPATH" ] && [ ! -e "$ZPATH.aria2" ] && [ "$(stat -c %s "$ZPATH")" -eq "$ZSIZE" ] && sha_is "$ZPATH" "$ZSHA"; then
    printf '%s\n  out=%s.torrent\n' "$(url "$TORRENT")" "$IH" >> "$WORK/torrents.txt"
    printf '%s\t%s\t%s\t%s\n' "$IH" "$ZSIZE" "$NAME" "$ZPATH" >> "$WORK/shards.tsv"
    # at most 20 bytes a piece plus 64 KiB (names, trackers, webseeds); a shard's pieces are 16 KiB or more
    SHARD_CAPS+=("$((20 * (ZSIZE / 16384 + 1) + 65536))")
  else
    echo "give-back: not seeding index shard $NAME: no whole copy of it here (updated by a delta)"
  fi
done
read -r CAP_SUM CAP_MAX < <(jq -rs --argjson shards "[$(IFS=,; echo "${SHARD_CAPS[*]-}")]" \
  '[.[] | 20 * ((.size + .piece_size - 1) / .piece_size | floor) + 65536] + $shards | "\(add) \(max)"' \
  "$WORK/packages.jsonl")
STATUS=0
aria2_bounded "$((TIMEOUT + CAP_SUM / MIN_RATE))" "$CAP_MAX" \
  --quiet=true --follow-torrent=false --file-allocation=none --allow-overwrite=true --auto-file-renaming=false \
  -d "$WORK" -i "$WORK/torrents.txt" || STATUS=$?
[ "$STATUS" -eq 0 ] || echo "give-back: some .torrent files could not be fetched (aria2c exit status $STATUS); seeding the others" >&2

# not_seeded TORRENT INFOHASH: why TORRENT is not seeded; nothing when it is complete, of INFOHASH (aria2c
# -S shows it) and announced (not private: `7:privatei1e` ends the `info` of a never-announced package).
not_seeded() {
  if [ ! -s "$1" ] || [ -e "$1.aria2" ]; then
    echo "its .torrent could not be fetched"
  elif [ "$(timeout 30 aria2c --no-conf -S "$1" | sed -n 's/^Info Hash: //p')" != "$2" ]; then
    echo "its .torrent is not of infohash $2, the signed index's"
  elif LC_ALL=C grep -aqF '7:privatei1ee' "$1"; then
    echo "the operator never announces it (private torrent, webseeds only)"
  fi
}
# Each seeded file is a symbolic link $WORK/seed/INFOHASH/NAME (the torrent's name) to the verified file:
# aria2's download folder is never a seed folder, so nothing it makes (a .aria2 control file when a file
# changed since it was hashed) lands there, and a file whose name differs (apt's) needs no renaming.
mkdir "$WORK/seed"
: > "$WORK/seed.txt"
COUNT=0
LARGEST=0
TOTAL=0
while IFS=$'\t' read -r IH SIZE NAME TARGET SHOWN; do
  WHY=$(not_seeded "$WORK/$IH.torrent" "$IH")
  if [ -z "$WHY" ]; then
    mkdir "$WORK/seed/$IH"
    ln -s -- "$TARGET" "$WORK/seed/$IH/$NAME"
    printf '%s\n  dir=%s\n' "$WORK/$IH.torrent" "$WORK/seed/$IH" >> "$WORK/seed.txt"
    if [ "${SHOWN##*/}" = "$NAME" ]; then echo "give-back: seeding $SHOWN"; else echo "give-back: seeding $SHOWN as $NAME"; fi
    COUNT=$((COUNT + 1))
    TOTAL=$((TOTAL + SIZE))
    LARGEST=$((SIZE > LARGEST ? SIZE : LARGEST))
  else
    echo "give-back: not seeding $SHOWN: $WHY" >&2
  fi
done < <(jq -r '[.infohash, .size, .name, .target, .shown] | map(tostring) | join("\t")' "$WORK/packages.jsonl")
if [ "$COUNT" -eq 0 ]; then
  echo "give-back: nothing to seed: no package in $WHERE of index $SEQ is announced"
  exit 0
fi
while IFS=$'\t' read -r IH SIZE NAME ZPATH; do
  WHY=$(not_seeded "$WORK/$IH.torrent" "$IH")
  if [ -z "$WHY" ]; then
    printf '%s\n  dir=%s\n' "$WORK/$IH.torrent" "$PWD/${ZPATH%/*}" >> "$WORK/seed.txt"
    echo "give-back: seeding index shard $NAME"
    COUNT=$((COUNT + 1))
    TOTAL=$((TOTAL + SIZE))
    LARGEST=$((SIZE > LARGEST ? SIZE : LARGEST))
  else
    echo "give-back: not seeding index shard $NAME: $WHY" >&2
  fi
done < "$WORK/shards.tsv"

# 6. Seed them with one aria2c in the foreground: --check-integrity hashes each file first (without it
#    aria2 downloads an existing file again over itself; with it, a file that checks out is opened
#    read-only, so a root-owned file is seeded as is); -j: every torrent at once. It stops when each
#    torrent reached the ratio or the time is up. Bounded: the seeding time, plus hashing at
#    MIN_RATE, plus TIMEOUT; no file written past the largest plus 1 MiB.
SEED_SECONDS=$(((10#${MINUTES%.*} + 1) * 60 + TIMEOUT + TOTAL / MIN_RATE))
echo "give-back: $COUNT torrents of index $SEQ; stops at ratio $RATIO or after $MINUTES min; upload at most $UPLOAD/s"
STATUS=0
(trap '' XFSZ; ulimit -f "$(((LARGEST + 1048576 + 1023) / 1024))"
 exec timeout --foreground -k 5 "$SEED_SECONDS" aria2c "${SEED_FLAGS[@]}" --bt-enable-lpd="$LPD" \
   --check-integrity=true --seed-ratio="$RATIO" --seed-time="$MINUTES" --max-overall-upload-limit="$UPLOAD" \
   -j "$COUNT" --bt-max-open-files="$((COUNT + 1))" --summary-interval=0 --console-log-level=warn \
   -i "$WORK/seed.txt") || STATUS=$?
if [ "$STATUS" -eq 124 ] || [ "$STATUS" -eq 137 ]; then
  echo "give-back: aria2c did not stop within $SEED_SECONDS s" >&2; exit 1
elif [ "$STATUS" -ne 0 ]; then
  echo "give-back: seeding failed (aria2c exit status $STATUS)" >&2; exit 1
fi
echo "give-back: done: every torrent reached ratio $RATIO or $MINUTES min"
