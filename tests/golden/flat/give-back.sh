#!/usr/bin/env bash
# Give back (opt-in): seed what the recipe fetched and what apt or pacman keep in their caches, so other
# users fetch from you and not only from the mirrors. Run it with bash in the folder where the recipe ran
# (signing-key.gpg, index.json, packages/). It verifies the current signed pointer and index as
# the recipe does, then one aria2c seeds the files of the seed folders whose size and SHA-256 are a
# package of that index, whatever their name (stale versions, other files and never-announced packages
# are left out), and the index itself, until each has uploaded RATIO times its size or MINUTES have
# passed; then it exits 0. Ctrl-C stops it. aria2 gets only files just hashed, through links in
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
FLAGS=(--seed-time=0 --bt-stop-timeout=60 --bt-tracker-connect-timeout=5 --bt-tracker-timeout=5 --connect-timeout=10 --timeout=20 --max-tries=3 --lowest-speed-limit=1K --stream-piece-selector=random)
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

# 5. Their .torrent files (and the index's), named by infohash; each must have the infohash the signed
#    index (or pointer) gives. A never-announced package (BEP 27 private flag: webseeds only) is left out.
jq -r --arg base "$BASE" 'def enc: split("/") | map(@uri) | join("/");
  ($base + "/" + (.torrent | enc)), ("  out=" + .infohash + ".torrent")' "$WORK/packages.jsonl" > "$WORK/torrents.txt"
IDX_IH=$(jq -r .infohash pointer.json)
printf '%s\n  out=%s.torrent\n' "$BASE/$IDX_TORRENT" "$IDX_IH" >> "$WORK/torrents.txt"
# Each at most 20 bytes a piece plus 64 KiB (names, trackers, webseeds); the index's pieces are 16 KiB or more.
IDX_CAP=$((20 * (IDX_ZSIZE / 16384 + 1) + 65536))
read -r CAP_SUM CAP_MAX < <(jq -rs --argjson idx "$IDX_CAP" \
  '[.[] | 20 * ((.size + .piece_size - 1) / .piece_size | floor) + 65536] + [$idx] | "\(add) \(max)"' \
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
if [ -z "$(not_seeded "$WORK/$IDX_IH.torrent" "$IDX_IH")" ]; then
  printf '%s\n  dir=index\n' "$WORK/$IDX_IH.torrent" >> "$WORK/seed.txt"
  COUNT=$((COUNT + 1))
  TOTAL=$((TOTAL + IDX_ZSIZE))
fi

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
