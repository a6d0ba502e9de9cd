#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/fuzz_targets) and runs each for a bounded time, from its
# committed seed corpus (fuzz/corpus/<target>) after replaying its past crashes
# (fuzz/regressions/<target>). Exits non-zero on the first crash, leaving the input under
# fuzz/artifacts/<target>/ with the command that replays it. docs/SECURITY.md, "Fuzzing".
#
#   scripts/fuzz.sh                      every target, FUZZ_SECONDS (30) each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh tx_ingress   one target, an hour
#
# FUZZ_SANITIZER=address builds with AddressSanitizer (slower; the default `none` still has
# overflow checks and debug assertions on). Needs the nightly toolchain and cargo-fuzz
# (scripts/setup.sh installs cargo-fuzz).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs the nightly toolchain (rustup)" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not found: run scripts/setup.sh" >&2; exit 1; }

SECONDS_EACH="${FUZZ_SECONDS:-30}"
SANITIZER="${FUZZ_SANITIZER:-none}"
# Its own dir: nightly and the coverage flags share nothing with the main build.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz"
TRIPLE="$(rustc +nightly -vV | sed -n 's/^host: //p')"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//' | sort)
fi

started=$SECONDS
# -O: optimised; -a: debug assertions and overflow checks, as in the tests; 16 codegen units
# build in about half the time of cargo-fuzz's default 1 for a few percent of speed.
# cargo-fuzz builds one target or all of them.
one=()
[ "${#targets[@]}" -eq 1 ] && one=("${targets[0]}")
cargo +nightly fuzz build -O -a -s "$SANITIZER" --codegen-units 16 --target-dir "$TARGET_DIR" "${one[@]}"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - started))s"

summary=()
for target in "${targets[@]}"; do
  bin="$TARGET_DIR/$TRIPLE/release/$target"
  artifacts="$ROOT/fuzz/artifacts/$target"
  mkdir -p "$artifacts"
  # Every input that once crashed a target runs first: a fix that regressed fails here.
  if [ -d "fuzz/regressions/$target" ] && [ -n "$(ls -A "fuzz/regressions/$target")" ]; then
    if ! "$bin" -runs=1 "fuzz/regressions/$target"/* > "$artifacts/regressions.log" 2>&1; then
      tail -n 60 "$artifacts/regressions.log"
      echo "fuzz: $target crashed on a past crash input (fuzz/regressions/$target)" >&2
      exit 1
    fi
    echo "fuzz: $target: $(ls "fuzz/regressions/$target" | wc -l) past crash inputs replayed, no crash"
  fi
  # New inputs go to a scratch dir (the first corpus dir); the committed seeds are only read.
  scratch="$(mktemp -d)"
  log="$scratch.log"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  if ! "$bin" "$scratch" "fuzz/corpus/$target" \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target CRASHED; the input is in $artifacts/. Replay it with:" >&2
    echo "  $bin $artifacts/<crash-file>" >&2
    rm -rf "$scratch"
    exit 1
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  summary+=("$(printf '%-20s %12s execs %8s/s  cov %s' "$target" "$execs" "$rate" "$cov")")
  rm -rf "$scratch" "$log"
done

echo
echo "fuzz: no crash in $((SECONDS - started))s"
printf '  %s\n' "${summary[@]}"
