// The top-k engine of kernels/common/topk alone, on every path, against a host reference that knows
// nothing of keys: floats ordered with NaN lowest, -inf below every number, -0.0 == +0.0, ties to
// the lower index; groups by the fp32 sum of their top keys (SPEC sections 1 and 4).
// Each path selects K of every row and writes the winners' indices in rank order; the check is exact.
//
//   nvcc -std=c++17 -arch=sm_90a --expt-relaxed-constexpr -Iinclude -Ikernels tests/cuda/topk_check.cu -o topk_check
//   ./topk_check [seed]     one line per path; exit status 1 on any mismatch
// tests/test_cuda_sources.py builds it (compile only without a GPU) and runs it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"

#include "common/team.cuh"
#include "common/topk/filtered.cuh"
#include "common/topk/groups.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/output.cuh"
#include "common/topk/radix.cuh"
#include "common/topk/rounds.cuh"

using namespace moekit;

struct Problem {
  int E, K, G = 0, Kg = 0;  // groups: G > 0
};

// ---- device side: one row per team, the row's keys in the team layout (elem_index) -------------

// Index-packed keys (the router's 16-bit softmax-post keys): the low 16 bits hold 0xffff - index.
constexpr uint32_t kPackMask = 0xffffu;
__device__ __forceinline__ uint32_t packed(uint32_t key, int e) { return (key & ~kPackMask) | (kPackMask - (uint32_t)e); }

template <int VEC, int NC, class Team>
__device__ __forceinline__ void row_keys(const Team& team, const float* x, int E, bool pack, uint32_t (&key)[VEC * NC]) {
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int e = elem_index<VEC>(team, c, v);
      const uint32_t k = e < E ? order_key(x[e]) : kAbsentKey;
      key[c * VEC + v] = pack && k != kAbsentKey ? packed(k, e) : k;
    }
}

enum Path { kWarpRounds, kWarpRoundsPacked, kWarpRadix, kWarpFiltered, kBlockRounds, kBlockRadix, kWarpGroups };

// Warp rows: rounds (clearing or packed), radix select, filtered top-k (rounds behind it), groups.
template <int VEC, int NC>
__global__ void warp_rows(const float* x, int T, Problem p, int path, int* out) {
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int row = blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= T) return;
  uint32_t* scratch = smem + warp * (256 + 4 + 64 + 2 * 64);
  WarpTeam team;
  uint32_t key[VEC * NC];
  row_keys<VEC, NC>(team, x + (size_t)row * p.E, p.E, path == kWarpRoundsPacked, key);
  int* o = out + (size_t)row * p.K;
  if (path == kWarpRounds || path == kWarpRoundsPacked) {
    warp_rounds_select<VEC, NC>(team, key, p.K, path == kWarpRoundsPacked ? kPackMask : 0u, o, false);
  } else if (path == kWarpRadix) {
    const uint64_t sel = radix_select<VEC, NC>(team, key, p.K, scratch);
    write_sorted_indices<VEC, NC>(team, key, sel, p.K, scratch + 256 + 4 + 64, o);
  } else if (path == kWarpFiltered) {
    uint64_t sel = 0;
    if (!filtered_select<VEC, NC>(team, key, p.K, scratch, o, false, sel)) warp_rounds_select<VEC, NC>(team, key, p.K, 0u, o, false);
  } else {  // groups, then arg-max rounds
    keep_best_groups<VEC, NC>(team, key, p.E, p.G, p.Kg, p.E / p.G, p.K / p.Kg, scratch + 256 + 4);
    argbest_rounds_select<VEC, NC>(team, key, p.K, p.E, o, false);
  }
}

// Block rows: arg-max rounds or radix select over a whole block (128 words of team scratch first).
template <int VEC, int NC>
__global__ void block_rows(const float* x, Problem p, int path, int* out) {
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  uint32_t key[VEC * NC];
  row_keys<VEC, NC>(team, x + (size_t)blockIdx.x * p.E, p.E, false, key);
  int* o = out + (size_t)blockIdx.x * p.K;
  if (path == kBlockRounds) {
    argbest_rounds_select<VEC, NC>(team, key, p.K, p.E, o, false);
  } else {
    const uint64_t sel = radix_select<VEC, NC>(team, key, p.K, smem + 128);
    write_sorted_indices<VEC, NC>(team, key, sel, p.K, smem + 128 + 260, o);
  }
}

// Lane teams (LANES lanes per row, CHUNKS chunks of 8 keys per lane, chunk c of rank t covering
// [(c * LANES + t) * 8, + 8)): rounds over packed keys, as list_rounds or one min_below per round;
// with groups, lane_team_kept_groups and then clearing rounds over the masked keys.
enum LanePath { kLaneLists, kLaneMinBelow, kLaneGroups };

template <int LANES, int CHUNKS>
__global__ void lane_rows(const float* x, int T, Problem p, int path, int* out) {
  using Team = LaneTeam<LANES>;
  constexpr int kKeys = CHUNKS * 8;
  const int lane = threadIdx.x & 31, t = lane % LANES;
  const int row = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * (32 / LANES) + lane / LANES;
  const bool live = row < T;
  const float* xr = x + (size_t)(live ? row : 0) * p.E;
  auto elem = [&](int q) { return ((q / 8) * LANES + t) * 8 + q % 8; };
  uint32_t key[kKeys];
#pragma unroll
  for (int q = 0; q < kKeys; ++q) key[q] = elem(q) < p.E ? order_key(xr[elem(q)]) : kAbsentKey;
  int* o = out + (size_t)(live ? row : 0) * p.K;
  if (path == kLaneGroups) {
    const uint32_t chosen = lane_team_kept_groups<LANES, CHUNKS, 8, false>(key, t, p.E, p.E / p.G, p.K / p.Kg, p.Kg);
#pragma unroll
    for (int q = 0; q < kKeys; ++q) key[q] = (chosen >> (q / 8)) & 1 || key[q] == kAbsentKey ? key[q] : kNegInfKey;
    for (int r = 0; r < p.K; ++r) {  // clearing rounds: the best key, the lowest index holding it
      uint32_t m = key[0];
#pragma unroll
      for (int q = 1; q < kKeys; ++q) m = max(m, key[q]);
      m = Team::max(m);
      uint32_t lowest = 0xffffffffu;
#pragma unroll
      for (int q = kKeys - 1; q >= 0; --q) lowest = key[q] == m ? (uint32_t)elem(q) : lowest;
      const uint32_t winner = Team::min(lowest);
#pragma unroll
      for (int q = 0; q < kKeys; ++q) key[q] = (uint32_t)elem(q) == winner ? kAbsentKey : key[q];
      if (live && t == 0) o[r] = (int)winner;
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < kKeys; ++q) key[q] = key[q] == kAbsentKey ? kAbsentKey : packed(key[q], elem(q));
  auto record = [&](int r, uint32_t m) {
    if (live && t == 0) o[r] = (int)(kPackMask - (m & kPackMask));
  };
  if (path == kLaneLists) {
    list_rounds<3, Team>(key, p.K, record);
  } else {
    uint32_t last = 0;
    rounds_in_spans<LANES>(p.K, [&](int r) {
      const uint32_t below = last - 1u;
      last = below - Team::min(min_below(key, below));
      record(r, last);
    }, NoFlush{});
  }
}

// ---- host side ------------------------------------------------------------------------------------

// SPEC's order without keys: NaN lowest, then the float order (-0.0 == +0.0); ties to the lower index.
bool ranks_above(float a, int ia, float b, int ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return nb;
  if (!na && a != b) return a > b;
  return ia < ib;
}

std::vector<int> reference(const float* x, const Problem& p) {
  std::vector<float> v(x, x + p.E);
  if (p.G > 0) {  // group score: the fp32 sum of the group's top K / Kg values, in descending order
    const int gs = p.E / p.G, per = p.K / p.Kg;
    std::vector<float> score(p.G);
    for (int g = 0; g < p.G; ++g) {
      std::vector<int> idx(gs);
      for (int i = 0; i < gs; ++i) idx[i] = g * gs + i;
      std::sort(idx.begin(), idx.end(), [&](int a, int b) { return ranks_above(v[a], a, v[b], b); });
      float s = 0.0f;
      for (int r = 0; r < per; ++r) s += v[idx[r]];
      score[g] = s;
    }
    std::vector<int> groups(p.G);
    for (int g = 0; g < p.G; ++g) groups[g] = g;
    std::sort(groups.begin(), groups.end(), [&](int a, int b) { return ranks_above(score[a], a, score[b], b); });
    std::vector<bool> kept(p.G, false);
    for (int r = 0; r < p.Kg; ++r) kept[groups[r]] = true;
    for (int e = 0; e < p.E; ++e)
      if (!kept[e / gs]) v[e] = -INFINITY;  // other groups' keys become -inf (above NaN)
  }
  std::vector<int> idx(p.E);
  for (int e = 0; e < p.E; ++e) idx[e] = e;
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return ranks_above(v[a], a, v[b], b); });
  idx.resize(p.K);
  return idx;
}

// Rows that stress the rules: random values, a coarse grid (many exact ties), all equal, NaN and
// -inf sprinkled, signed zeros at the boundary, rows where NaN or -inf must be picked. Every value is
// exact in bfloat16, so that index-packed keys (16 free low bits) order them exactly too.
std::vector<float> make_rows(std::mt19937& rng, int T, int E, int K) {
  std::vector<float> x((size_t)T * E);
  std::uniform_int_distribution<int> grid(-16, 16), pick(0, E - 1), coin(0, 9);
  for (int r = 0; r < T; ++r) {
    float* row = &x[(size_t)r * E];
    const int kind = r % 8;
    for (int e = 0; e < E; ++e) row[e] = kind == 0 ? std::ldexp((float)grid(rng), -3 - coin(rng)) : 0.25f * grid(rng);
    if (kind == 2) std::fill(row, row + E, 0.5f);
    if (kind == 3)
      for (int i = 0; i < E / 3; ++i) row[pick(rng)] = NAN;
    if (kind == 4)
      for (int i = 0; i < E / 3; ++i) row[pick(rng)] = -INFINITY;
    if (kind == 5)
      for (int e = 0; e < E; ++e) row[e] = coin(rng) < 5 ? (coin(rng) < 5 ? -0.0f : 0.0f) : -0.25f * (1 + coin(rng));
    if (kind == 6) {  // fewer numbers than K: NaN and -inf are picked, -inf first
      for (int e = 0; e < E; ++e) row[e] = coin(rng) < 5 ? NAN : -INFINITY;
      for (int i = 0; i < K / 2; ++i) row[pick(rng)] = 0.25f * grid(rng);
    }
    if (kind == 7) std::fill(row, row + E, NAN);
  }
  return x;
}

int failures = 0;

void compare(const char* path, const Problem& p, int T, const std::vector<float>& x, const std::vector<int>& got) {
  for (int r = 0; r < T; ++r) {
    const std::vector<int> want = reference(&x[(size_t)r * p.E], p);
    if (!std::equal(want.begin(), want.end(), got.begin() + (size_t)r * p.K)) {
      std::printf("%s E=%d K=%d G=%d Kg=%d: MISMATCH at row %d (kind %d): want", path, p.E, p.K, p.G, p.Kg, r, r % 8);
      for (int i = 0; i < p.K && i < 12; ++i) std::printf(" %d", want[i]);
      std::printf(", got");
      for (int i = 0; i < p.K && i < 12; ++i) std::printf(" %d", got[(size_t)r * p.K + i]);
      std::printf("\n");
      ++failures;
      return;
    }
  }
  std::printf("%s E=%d K=%d G=%d Kg=%d: %d rows ok\n", path, p.E, p.K, p.G, p.Kg, T);
}

template <class Launch>
void run(const char* path, const Problem& p, int T, std::mt19937& rng, Launch launch) {
  const std::vector<float> x = make_rows(rng, T, p.E, p.K);
  float* dx;
  int* dout;
  CHECK(cudaMalloc(&dx, x.size() * sizeof(float)));
  CHECK(cudaMalloc(&dout, (size_t)T * p.K * sizeof(int)));
  CHECK(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dout, 0xff, (size_t)T * p.K * sizeof(int)));
  launch(dx, dout);
  CHECK(cudaGetLastError());
  std::vector<int> got((size_t)T * p.K);
  CHECK(cudaMemcpy(got.data(), dout, got.size() * sizeof(int), cudaMemcpyDeviceToHost));
  CHECK(cudaFree(dx));
  CHECK(cudaFree(dout));
  compare(path, p, T, x, got);
}

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? (unsigned)std::atoi(argv[1]) : 1234u);
  const int T = 200;
  const size_t warp_smem = 4 * (256 + 4 + 64 + 2 * 64) * sizeof(uint32_t);
  struct {
    const char* name;
    int path;
  } warp_paths[] = {{"warp rounds", kWarpRounds},
                    {"warp rounds (packed keys)", kWarpRoundsPacked},
                    {"warp radix select", kWarpRadix},
                    {"warp filtered", kWarpFiltered}};
  // warp rows: 8 keys per lane (E <= 256)
  for (const Problem& p : {Problem{256, 8}, Problem{256, 22}, Problem{100, 6}, Problem{33, 32}, Problem{200, 64}, Problem{7, 7}})
    for (const auto& wp : warp_paths) {
      if (wp.path == kWarpFiltered && p.K > 32) continue;
      run(wp.name, p, T, rng, [&](float* dx, int* dout) {
        warp_rows<4, 2><<<(T + 3) / 4, 128, warp_smem>>>(dx, T, p, wp.path, dout);
      });
    }
  // warp rows with groups: chunk groups (whole 8-key chunks, K / Kg <= 2) and the general rounds
  for (const Problem& p : {Problem{256, 8, 8, 4}, Problem{256, 16, 8, 2}, Problem{240, 12, 4, 2}, Problem{96, 6, 3, 3}, Problem{256, 24, 8, 3}})
    run("warp groups", p, T, rng, [&](float* dx, int* dout) {
      warp_rows<4, 2><<<(T + 3) / 4, 128, warp_smem>>>(dx, T, p, kWarpGroups, dout);
    });
  // block rows: 8 keys per thread
  for (const Problem& p : {Problem{4096, 36}, Problem{2304, 8}, Problem{1500, 64}})
    for (int path : {kBlockRounds, kBlockRadix}) {
      const int threads = ((p.E + 7) / 8 + 31) / 32 * 32;
      const size_t smem = (128 + 260 + 2 * p.K) * sizeof(uint32_t);
      run(path == kBlockRounds ? "block rounds" : "block radix select", p, T, rng, [&](float* dx, int* dout) {
        block_rows<8, 1><<<T, threads, smem>>>(dx, p, path, dout);
      });
    }
  // lane teams: 8 and 16 lanes of 2 chunks, 32 lanes of 1 and 2 chunks
  for (int path : {kLaneLists, kLaneMinBelow}) {
    const char* name = path == kLaneLists ? "lane list rounds (packed)" : "lane min_below rounds (packed)";
    run(name, Problem{128, 8}, T, rng, [&](float* dx, int* dout) { lane_rows<8, 2><<<(T + 15) / 16, 128>>>(dx, T, Problem{128, 8}, path, dout); });
    run(name, Problem{250, 20}, T, rng, [&](float* dx, int* dout) { lane_rows<16, 2><<<(T + 7) / 8, 128>>>(dx, T, Problem{250, 20}, path, dout); });
    run(name, Problem{256, 40}, T, rng, [&](float* dx, int* dout) { lane_rows<32, 1><<<(T + 3) / 4, 128>>>(dx, T, Problem{256, 40}, path, dout); });
    run(name, Problem{512, 22}, T, rng, [&](float* dx, int* dout) { lane_rows<32, 2><<<(T + 3) / 4, 128>>>(dx, T, Problem{512, 22}, path, dout); });
  }
  // lane-team groups: groups of 1, 2 and 4 lanes (the counting path and the rounds)
  for (const Problem& p : {Problem{256, 8, 8, 4}, Problem{256, 8, 32, 4}, Problem{128, 4, 4, 2}, Problem{512, 16, 16, 8}})
    run("lane groups", p, T, rng, [&](float* dx, int* dout) {
      if (p.E <= 256) lane_rows<16, 2><<<(T + 7) / 8, 128>>>(dx, T, p, kLaneGroups, dout);
      else lane_rows<32, 2><<<(T + 3) / 4, 128>>>(dx, T, p, kLaneGroups, dout);
    });
  CHECK(cudaDeviceSynchronize());
  std::printf(failures ? "topk_check: %d FAILURES\n" : "topk_check: all paths match the reference\n", failures);
  return failures ? 1 : 0;
}
