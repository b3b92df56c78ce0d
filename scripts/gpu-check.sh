#!/usr/bin/env bash
# Build, test, benchmark and sanitize moekit on a GPU machine in one go; prints a short table last.
#   scripts/gpu-check.sh                 everything
#   TESTS=0 scripts/gpu-check.sh         skip pytest;  BENCH=0 / SANITIZER=0 likewise
#   SANITIZER_TOOLS="memcheck racecheck" scripts/gpu-check.sh   a subset of the four tools
#   SANITIZE_ARGS="--families quant,align" scripts/gpu-check.sh  a subset of the cases (scripts/sanitize_cases.py)
#   CLI=0 scripts/gpu-check.sh           skip `moekit check` and `moekit bench --quick`
#   CROSSOVER=1 scripts/gpu-check.sh     also time the top-k paths against each other (bench/router_crossover.py)
#   PYTEST_ARGS="-k ties" BENCH_ARGS="--quick" scripts/gpu-check.sh
#   PYTEST_TIMEOUT=300 scripts/gpu-check.sh     stop pytest after 300 s (the steps after it still run)
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu-check-out.
#
# The sanitizer gate: each of memcheck, racecheck, synccheck and initcheck first runs on
# tests/cuda/sanitizer_canary.cu, which holds one planted defect per tool and must be reported (so a
# tool that sees nothing cannot pass for clean), then on scripts/sanitize_cases.py (every kernel path
# of every op, defaults and every plan preset), which must show no error and no hazard.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SECONDS=0
summary=()
status=0
note() { echo "== [${SECONDS}s] $*"; }

note "device: $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -1)"

# Build only the architecture of the card in hand (sm_90a on Hopper).
arch=${CUDAARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
[ "$arch" = "90" ] && arch=90a
note "build + install for sm_$arch"
if CUDAARCHS=$arch python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/gpu-check -v . >"$OUT/build.log" 2>&1; then
  summary+=("build sm_$arch: ok (${SECONDS}s)")
else
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
python3 -m moekit info 2>&1

if [ "${TESTS:-1}" = 1 ]; then
  note "pytest"
  MOEKIT_REQUIRE_GPU=1 timeout "${PYTEST_TIMEOUT:-0}" python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || status=1
  counts=$(python3 -c "import sys, xml.etree.ElementTree as E; s = E.parse(sys.argv[1]).getroot(); s = s if s.tag == 'testsuite' else s[0]; print(', '.join(f'{k} {s.get(k)}' for k in ('tests', 'failures', 'errors', 'skipped')))" "$OUT/junit.xml" 2>&1)
  summary+=("pytest: exit $rc, $(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$OUT/pytest.log" | tail -1) [junit: $counts]")
fi

if [ "${CROSSOVER:-0}" = 1 ]; then
  note "top-k paths against each other"
  python3 bench/router_crossover.py --out "$OUT" 2>&1 | tee "$OUT/crossover.log"
fi

if [ "${CLI:-1}" = 1 ]; then
  note "moekit check"
  python3 -m moekit check 2>&1 | tee "$OUT/moekit-check.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || status=1
  summary+=("moekit check: exit $rc, $(grep -c PASS "$OUT/moekit-check.log") PASS, $(grep -c FAIL "$OUT/moekit-check.log") FAIL")
fi

if [ "${BENCH:-1}" = 1 ]; then
  note "benchmarks"
  python3 bench/run.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  if [ "${CLI:-1}" = 1 ]; then
    note "moekit bench --quick"
    python3 -m moekit bench --quick --out "$OUT/moekit-bench" 2>&1 | tee "$OUT/moekit-bench.log"
    summary+=("moekit bench --quick: exit ${PIPESTATUS[0]}, $(ls "$OUT/moekit-bench" 2>/dev/null | tr '\n' ' ')")
  fi
fi

if [ "${SANITIZER:-1}" = 1 ]; then
  note "compute-sanitizer gate"
  canary=$OUT/sanitizer_canary
  if ! nvcc -std=c++17 -gencode=arch=compute_${arch},code=sm_${arch} tests/cuda/sanitizer_canary.cu -o "$canary" \
    >>"$OUT/sanitizer.log" 2>&1; then
    echo "canary build failed: the gate fails"; summary+=("sanitizer gate: canary build FAILED"); status=1
  fi
  # The line that counts what a tool found: racecheck reports hazards, the others errors.
  found() { grep -E "(ERROR SUMMARY|RACECHECK SUMMARY)" "$1" | tail -1; }
  clean() { grep -qE "(ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards displayed \(0 errors, 0 warnings\))" "$1"; }
  # What each tool must say about its planted defect (an error of another kind, say a kernel that
  # could not launch, does not count as caught).
  declare -A planted=([memcheck]="Invalid __global__ write" [racecheck]="hazard detected at __shared__"
                      [synccheck]="Barrier error detected" [initcheck]="Uninitialized __global__ memory read")
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}; do
    t0=$SECONDS
    extra=""
    [ "$tool" = racecheck ] && extra="--racecheck-report all"
    compute-sanitizer --tool "$tool" $extra "$canary" "$tool" >"$OUT/canary-run.log" 2>&1
    if [ -x "$canary" ] && grep -q "${planted[$tool]}" "$OUT/canary-run.log"; then
      canary_ok="caught ($(found "$OUT/canary-run.log"))"
    else
      canary_ok="NOT CAUGHT (the tool did not report its planted defect: the gate fails)"; status=1
    fi
    compute-sanitizer --tool "$tool" $extra --error-exitcode 9 python3 scripts/sanitize_cases.py ${SANITIZE_ARGS:-} >"$OUT/cases-run.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ] && clean "$OUT/cases-run.log"; then verdict="clean"; else verdict="FAILED (exit $rc)"; status=1; fi
    { echo "### $tool: canary"; cat "$OUT/canary-run.log"; echo "### $tool: cases, exit $rc"; cat "$OUT/cases-run.log"; } >>"$OUT/sanitizer.log"
    summary+=("$tool: canary $canary_ok; cases $verdict: $(found "$OUT/cases-run.log"), $(grep -c ': ok (' "$OUT/cases-run.log") cases ok ($((SECONDS - t0))s)")
    rm -f "$OUT/canary-run.log" "$OUT/cases-run.log"
  done
  rm -f "$canary"
fi

# The device tool brings back at most 8 files: pack everything into one archive.
(cd "$OUT" && tar czf gpu-check.tgz --exclude gpu-check.tgz * 2>/dev/null && find . -type f ! -name gpu-check.tgz \
  ! -name pytest.log ! -name bench.log -delete)

echo
echo "== summary (${SECONDS}s)"
for line in "${summary[@]}"; do echo "  $line"; done
exit $status
