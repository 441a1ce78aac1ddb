#!/usr/bin/env bash
# The Python client end to end, from nothing: a throwaway virtualenv with requirements.txt, a fresh
# `sscard-kms dev` on a free port of 127.0.0.1 with a temporary data directory, then client.py
# against it. Exits with the client's status; everything it made is removed on the way out.
#
#   cargo build --bin sscard-kms         # once
#   bash examples/python/run.sh
#
# Environment: SSCARD_KMS_BIN  the server binary (default: target/debug/sscard-kms of this repo)
#              PYTHON          the interpreter for the virtualenv (default: python3; 3.11 or newer)
#              SSCARD_KMS_START_TIMEOUT  seconds to wait for dev's "listening on" (default 60)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${SSCARD_KMS_BIN:-$repo/target/debug/sscard-kms}"
python="${PYTHON:-python3}"
start_timeout="${SSCARD_KMS_START_TIMEOUT:-60}"

fail() {
  echo "run.sh: $*" >&2
  exit 2
}

[[ -x $bin ]] || fail "no server binary at $bin: build it with 'cargo build --bin sscard-kms' or set SSCARD_KMS_BIN"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  fail "$python is not Python 3.11 or newer (set PYTHON)"

work="$(mktemp -d "${TMPDIR:-/tmp}/sscard-kms-python.XXXXXX")"
dev_pid=""
drain_pid=""
cleanup() {
  if [[ -n $dev_pid ]]; then
    kill "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  if [[ -n $drain_pid ]]; then
    wait "$drain_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The virtualenv.
started=$SECONDS
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
  -r "$here/requirements.txt" </dev/null
pip_seconds=$((SECONDS - started))
echo "run.sh: virtualenv ready in ${pip_seconds} s ($work/venv)"

# 2. dev on port 0: the kernel picks a free port, and dev's banner says which. Its stdout goes
#    through a fifo that this script reads line by line until the "listening on" line; the
#    socket is bound before that line is printed, so the server accepts connections from then on.
started=$SECONDS
mkfifo "$work/dev.stdout"
"$bin" dev --listen 127.0.0.1:0 --data-dir "$work/data" \
  >"$work/dev.stdout" 2>"$work/dev.stderr" </dev/null &
dev_pid=$!
exec 3<"$work/dev.stdout"
endpoint=""
deadline=$((SECONDS + start_timeout))
while [[ -z $endpoint ]]; do
  left=$((deadline - SECONDS))
  if ((left <= 0)); then
    fail "dev did not print its 'listening on' line within ${start_timeout} s; its stderr: $(tail -n 5 "$work/dev.stderr")"
  fi
  if IFS= read -r -t "$left" line <&3; then
    printf '%s\n' "$line" >>"$work/dev.log"
    if [[ $line =~ listening\ on\ +https://([^[:space:]]+) ]]; then
      endpoint="${BASH_REMATCH[1]}"
    fi
  elif (($? <= 128)); then
    # End of file: dev exited before it listened.
    wait "$dev_pid" && status=0 || status=$?
    dev_pid=""
    fail "dev exited (status $status) before listening; its stderr: $(tail -n 5 "$work/dev.stderr")"
  fi
done
# Keep reading dev's stdout (so it never blocks on a full pipe), then let go of the fifo.
cat <&3 >>"$work/dev.log" &
drain_pid=$!
exec 3<&-
echo "run.sh: sscard-kms dev listening on $endpoint after $((SECONDS - started)) s (data in $work/data)"

# 3. The client, bounded: each of its calls has a deadline, this is for the whole of it.
started=$SECONDS
status=0
timeout 300 "$work/venv/bin/python" "$here/client.py" \
  --data-dir "$work/data" --endpoint "$endpoint" </dev/null || status=$?
echo "run.sh: client finished in $((SECONDS - started)) s with status $status"
if ((status != 0)); then
  echo "run.sh: the last lines dev wrote on stderr:" >&2
  tail -n 10 "$work/dev.stderr" >&2 || true
fi
exit "$status"
