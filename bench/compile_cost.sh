#!/usr/bin/env bash
# Prints what a user's translation unit costs to compile (-O0, the way a
# developer iterates): the README's quickstart with <hosting/hosting.hpp>,
# beside the same coroutine written with raw Asio, measured alternately in
# the same run. Median of N runs each (default 5): wall time and peak memory.
#
#   bench/compile_cost.sh [runs] [compiler]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cxx=${2:-${CXX:-g++}}
flags=(-std=c++20 -O0 -Iinclude -c -o /dev/null)

measure() { # file -> "seconds kilobytes"
  /usr/bin/time -f "%e %M" "$cxx" "${flags[@]}" "$1" 2>&1 >/dev/null | tail -n 1
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A secs kb
for ((i = 0; i < runs; i++)); do
  for tu in raw_asio quickstart; do
    read -r s k < <(measure "bench/compile_cost/$tu.cpp")
    secs[$tu]+="$s "
    kb[$tu]+="$k "
  done
done
for tu in raw_asio quickstart; do
  s=$(tr ' ' '\n' <<<"${secs[$tu]}" | grep . | median)
  k=$(tr ' ' '\n' <<<"${kb[$tu]}" | grep . | median)
  printf '%-11s %6.2f s %8.0f MB\n' "$tu" "$s" "$(awk -v k="$k" 'BEGIN { print k / 1024 }')"
  eval "s_$tu=$s k_$tu=$k"
done
awk -v a="$s_quickstart" -v b="$s_raw_asio" -v c="$k_quickstart" -v d="$k_raw_asio" \
  'BEGIN { printf "ratio       %6.2fx time %6.2fx memory (target <= 1.3x)\n", a / b, c / d }'
