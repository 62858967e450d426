#!/usr/bin/env bash
# Benchmark (not a test): `imcast plan --diff` on a 1,000,000-row audience, against planning twice.
#
#   cargo build --release --locked
#   examples/bench_diff.sh [personalized|shared] [ROWS]
#
# Builds a temporary git repository (deleted afterwards; identity set in the repository, no global
# git config read) with a campaign and a ROWS-row CSV, commits it, then changes the work tree the
# way a real pull request might: the template's wording (every recipient's message changes), 1,000
# rows removed, 1,000 added and 100 moved to the end. Times, with the release binary:
#   plan      `imcast plan FILE --output json` (once for the work tree; "twice" is 2x that)
#   diff      `imcast plan FILE --diff HEAD --output json` (both plans, both audiences streamed
#             again, the comparison)
# and prints each wall time, user CPU and peak RSS (from /usr/bin/time when it is installed).
set -euo pipefail

mode=${1:-personalized}
rows=${2:-1000000}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMCAST_BIN:-$here/target/release/imcast}
[ -x "$bin" ] || { echo "build first: cargo build --release --locked" >&2; exit 2; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
cd "$dir"
git init -q -b main
git config user.name bench
git config user.email bench@example.invalid

case "$mode" in
  personalized) text='Hi {{ name }}, the sale in {{ city }} starts Monday.' ;;
  shared) text='The sale starts Monday.' ;;
  *) echo "mode: personalized or shared" >&2; exit 2 ;;
esac
cat > campaign.yaml <<EOF
version: 1
name: bench
provider: { app_id: 1, region: cn-north-1 }
action: batch
sender: 1
audience: { csv: audience.csv }
message:
  type: text
  text: "$text"
EOF
awk -v n="$rows" 'BEGIN {
  print "user_id,name,city";
  split("Beijing Shanghai Shenzhen Singapore", c, " ");
  for (i = 0; i < n; i++) printf "%.0f,user%d,%s\n", 1000000000000 + i, i, c[i % 4 + 1];
}' > audience.csv
git add -A && git commit -q -m base

# The change under review.
sed -i 's/starts Monday/starts on Tuesday/' campaign.yaml
awk -v n="$rows" 'NR == 1 { print; next }
  NR >= 1002 && NR < 2002 { next }            # 1,000 removed
  NR >= 5002 && NR < 5102 { moved = moved $0 "\n"; next }  # 100 moved to the end
  { print }
  END {
    printf "%s", moved;
    for (i = 0; i < 1000; i++) printf "%.0f,new%d,Singapore\n", 2000000000000 + i, i;  # 1,000 added
  }' audience.csv > audience.new && mv audience.new audience.csv

measure() {
  local label=$1; shift
  local start end
  if command -v /usr/bin/time > /dev/null; then
    start=$(date +%s.%N)
    /usr/bin/time -f "$label: user %U s, sys %S s, peak RSS %M KiB" "$@" > /dev/null
    end=$(date +%s.%N)
  else
    start=$(date +%s.%N)
    "$@" > /dev/null
    end=$(date +%s.%N)
  fi
  echo "$label: wall $(echo "$end - $start" | bc) s"
}

echo "rows $rows, mode $mode, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do
  measure "plan (run $i)" "$bin" plan campaign.yaml --output json
  measure "diff (run $i)" "$bin" plan campaign.yaml --diff HEAD --output json
done
"$bin" plan campaign.yaml --diff HEAD --output text | head -12
