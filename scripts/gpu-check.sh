#!/usr/bin/env bash
# Build, test and benchmark moekit on a GPU machine in one go; prints a short table last.
#   scripts/gpu-check.sh                 everything
#   TESTS=0 scripts/gpu-check.sh         skip pytest;  SANITIZER=0 / BENCH=0 / PATHS=0 likewise
#                                        (PATHS: the tie/NaN tests again with each top-k path forced)
#   CROSSOVER=1 scripts/gpu-check.sh     also time the top-k paths (rounds, radix, filtered, team, wide) (bench/router_crossover.py)
#   DEV=1 scripts/gpu-check.sh           also build and run dev/*.cu (kernel candidates, checked against the library)
#   PYTEST_ARGS="-k ties" BENCH_ARGS="--quick" scripts/gpu-check.sh
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu-check-out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SECONDS=0
summary=()
note() { echo "== [${SECONDS}s] $*"; }

note "device: $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -1)"

# Build only the architecture of the card in hand (sm_90a on Hopper).
arch=${CUDAARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
[ "$arch" = "90" ] && arch=90a
note "build + install for sm_$arch"
if CUDAARCHS=$arch python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1; then
  summary+=("build sm_$arch: ok (${SECONDS}s)")
else
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
python3 -m moekit info 2>&1

if [ "${TESTS:-1}" = 1 ]; then
  note "pytest"
  python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest.log"
  rc=${PIPESTATUS[0]}
  counts=$(python3 -c "import sys, xml.etree.ElementTree as E; s = E.parse(sys.argv[1]).getroot(); s = s if s.tag == 'testsuite' else s[0]; print(', '.join(f'{k} {s.get(k)}' for k in ('tests', 'failures', 'errors', 'skipped')))" "$OUT/junit.xml" 2>&1)
  summary+=("pytest: exit $rc, $(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$OUT/pytest.log" | tail -1) [junit: $counts]")
fi

if [ "${PATHS:-1}" = 1 ] && [ "${TESTS:-1}" = 1 ]; then
  # The tie / NaN / signed-zero tests again with each top-k path forced (the defaults pick one per shape).
  note "ties and NaN tests on each forced top-k path"
  # (TEAM_MAX_K=0 WIDE_MAX_K=0: no team or wide rows, so the warp and block paths see packed keys
  # too; the last two force team rows (every score mode, 16 and 8 keys per lane) and wide rows for every K,
  # the first of them with team rows up to E = 512, the second with wide rows from E = 257)
  for env in "MOEKIT_ROUTER_RADIX_MIN_K=99999 MOEKIT_ROUTER_FILTER_MIN_VPT=0 MOEKIT_ROUTER_TEAM_MAX_K=0 MOEKIT_ROUTER_WIDE_MAX_K=0" \
             "MOEKIT_ROUTER_RADIX_MIN_K=1 MOEKIT_ROUTER_TEAM_MAX_K=0 MOEKIT_ROUTER_WIDE_MAX_K=0" \
             "MOEKIT_ROUTER_RADIX_MIN_K=99999 MOEKIT_ROUTER_FILTER_MIN_VPT=1 MOEKIT_ROUTER_TEAM_MAX_K=0 MOEKIT_ROUTER_WIDE_MAX_K=0" \
             "MOEKIT_ROUTER_TEAM_MAX_K=9999 MOEKIT_ROUTER_TEAM_ANY_SCORE=1 MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T=1 MOEKIT_ROUTER_WIDE_MAX_K=9999 MOEKIT_ROUTER_TEAM_CHUNKS=2 MOEKIT_ROUTER_WIDE_MIN_E=513" \
             "MOEKIT_ROUTER_TEAM_MAX_K=9999 MOEKIT_ROUTER_TEAM_ANY_SCORE=1 MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T=1 MOEKIT_ROUTER_WIDE_MAX_K=9999 MOEKIT_ROUTER_TEAM_CHUNKS=1 MOEKIT_ROUTER_WIDE_MIN_E=257"; do
    env $env python3 -m pytest -q -p no:cacheprovider -k ties tests/test_router_gpu.py >"$OUT/paths-run.log" 2>&1
    rc=$?
    { echo "### $env: exit $rc"; cat "$OUT/paths-run.log"; } >>"$OUT/paths.log"
    summary+=("ties/NaN [$env]: exit $rc, $(grep -E '(passed|failed).* in [0-9.]+s' "$OUT/paths-run.log" | tail -1)")
    rm -f "$OUT/paths-run.log"
  done
fi

if [ "${DEV:-0}" = 1 ]; then
  note "dev/router_forward_variants.cu (candidate forward kernels next to the library's)"
  nvcc -O3 -std=c++17 -gencode=arch=compute_${arch},code=sm_${arch} --expt-relaxed-constexpr -Iinclude -Ikernels \
    dev/router_forward_variants.cu -o /tmp/router_forward_variants && /tmp/router_forward_variants 2>&1 | tee "$OUT/dev.log"
fi

if [ "${CROSSOVER:-0}" = 1 ]; then
  note "top-k paths: rounds vs radix vs filtered"
  python3 bench/router_crossover.py --out "$OUT" 2>&1 | tee "$OUT/crossover.log"
fi

if [ "${BENCH:-1}" = 1 ]; then
  note "benchmarks"
  python3 bench/run.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi

if [ "${SANITIZER:-1}" = 1 ]; then
  note "compute-sanitizer memcheck"
  # default tuning; iterative rounds everywhere with the cp.async pipeline; filtered top-k and packed team rows
  # everywhere (16 keys per lane); team rows with 8 keys per lane
  for env in "" "MOEKIT_ROUTER_PIPELINE=1 MOEKIT_ROUTER_RADIX_MIN_K=99999 MOEKIT_ROUTER_TEAM_MAX_K=0 MOEKIT_ROUTER_WIDE_MAX_K=0" \
             "MOEKIT_ROUTER_FILTER_MIN_VPT=1 MOEKIT_ROUTER_RADIX_MIN_K=99999 MOEKIT_ROUTER_TEAM_MAX_K=9999 MOEKIT_ROUTER_TEAM_ANY_SCORE=1 MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T=1 MOEKIT_ROUTER_WIDE_MAX_K=9999 MOEKIT_ROUTER_TEAM_CHUNKS=2 MOEKIT_ROUTER_WIDE_MIN_E=257" \
             "MOEKIT_ROUTER_TEAM_MAX_K=9999 MOEKIT_ROUTER_TEAM_ANY_SCORE=1 MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T=1 MOEKIT_ROUTER_TEAM_CHUNKS=1"; do
    env $env compute-sanitizer --tool memcheck --error-exitcode 9 python3 scripts/sanitize_cases.py \
      >"$OUT/memcheck-run.log" 2>&1
    rc=$?
    { echo "### ${env:-defaults}: exit $rc"; cat "$OUT/memcheck-run.log"; } >>"$OUT/memcheck.log"
    grep -E "MISMATCH|ERROR SUMMARY" "$OUT/memcheck-run.log" | tail -3
    summary+=("memcheck [${env:-defaults}]: exit $rc, $(grep -E 'ERROR SUMMARY' "$OUT/memcheck-run.log" | tail -1)")
    rm -f "$OUT/memcheck-run.log"
  done
fi

# The device tool brings back at most 8 files: pack everything into one archive.
(cd "$OUT" && tar czf gpu-check.tgz --exclude gpu-check.tgz * 2>/dev/null && find . -type f ! -name gpu-check.tgz \
  ! -name pytest.log ! -name bench.log -delete)

echo
echo "== summary (${SECONDS}s)"
for line in "${summary[@]}"; do echo "  $line"; done
