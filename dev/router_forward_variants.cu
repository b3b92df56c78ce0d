// Router forward: the library's kernel next to candidate rewrites, on one page (llm.c dev/cuda style).
// Not part of libmoekit. Softmax-post, bf16 logits, bytemap, no groups: the rows where the forward
// is furthest from the copy ceiling (bench/NOTES.md v1, v2). Every variant is checked bit for bit
// against the library's kernel (same arithmetic order) before it is timed.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
//        -Iinclude -Ikernels dev/router_forward_variants.cu -o /tmp/rfv && /tmp/rfv [T] [profile]
//   ("profile": one launch of copy / library / filtered per case and no timing, for ncu)
//
// Variants:
//   copy      reads logits, writes probs/map/intermediate with the same per-lane layout and no
//             top-k: what this access pattern can reach (the practical floor of the op).
//   library   forward_warp_kernel with its warp rounds (index-packed keys); the reference.
//   filtered  the same kernel with the filtered top-k forced (ForwardArgs::topk).
//   pipelined forward_warp_pipelined_kernel (cp.async staging, persistent warps), filtered.
//   lean      warp per row, unpacked keys; a round is max over the lane's keys, one redux.max, the
//             lane's first position holding the maximum, one redux.min over indices, and the
//             winner's key cleared to 0 (the library's v1 rounds took 55 SASS instructions per
//             round at E = 128, lean 31; v2 adopted this round, plus packed keys).
//   packedN   the library's forward_team_kernel, packed keys (v3): N = E / 16 lanes per row, 16 bf16 per
//             lane, only raw values and packed keys in registers, one max + log2(N) shuffles + clear
//             per round.
//   wide      the library's forward_wide_packed_kernel (v4, E >= 1024 here): one warp per row, only
//             the packed keys in registers, rounds as the largest key below the last winner.
//   subwarpN  the lean round on N lanes per row (32/N rows per warp), 16-byte chunks per lane,
//             shuffle trees of log2(N) steps: 93 instructions per round for 4 rows at E = 128.
// Timing: CUDA events, median of 15 samples of 20 launches, inputs rotated over > 4x L2.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "router/router_kernels.cuh"

using namespace moekit;
using namespace moekit::router;
using bf16 = __nv_bfloat16;

#define CHECK(x)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (x);                                                                 \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

// ---- copy: same loads and stores as the forward, no selection --------------------------------
template <int VEC, int NC>
__global__ void copy_kernel(ForwardArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  const int64_t off = row * a.E;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = (c * 32 + lane) * VEC;
    float x[VEC];
    load_chunk<bf16, VEC>(static_cast<const bf16*>(a.logits) + off, e0, a.E, true, 0.0f, x);
    uint8_t mb[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) mb[v] = x[v] > 0.0f;
    store_chunk<bf16, VEC>(static_cast<bf16*>(a.probs) + off, e0, a.E, true, x);
    store_chunk<float, VEC>(a.intermediate + off, e0, a.E, true, x);
    store_bytes<VEC>(a.map + off, e0, a.E, true, mb);
  }
}

// ---- lean iterative top-k on LANES lanes per row (32 / LANES rows per warp) -------------------
// A round: max over the lane's keys, a team max, the lane's first position holding it, a team min
// over indices, the winner's key cleared to 0 (real keys are >= kNanKey), so "selected" is "was
// real, is now absent". LANES = 32 with the library's chunking is "lean" (redux.sync, same float
// reduction trees as the library: bitwise-equal outputs expected); fewer lanes with 16-byte chunks
// is "subwarpN" (shuffle trees of log2(N) steps, so probs may differ in the last bit).
// Team reductions: LaneTeam (common/team.cuh); a whole warp uses one redux.sync for integers.
template <int LANES, int VEC, int NC>
__global__ void subwarp_kernel(ForwardArgs a) {
  constexpr int VPT = VEC * NC;
  const int lane = threadIdx.x & 31, t = lane % LANES;
  const int64_t row = ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * (32 / LANES) + lane / LANES;
  const bool live = row < a.T;  // dead teams still take part in the shuffles
  const int64_t off = (live ? row : 0) * a.E;
  auto index = [&](int p) { return (uint32_t)(((p / VEC) * LANES + t) * VEC + p % VEC); };
  float s[VPT];
  uint32_t key[VPT];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float x[VEC];
    load_chunk<bf16, VEC>(static_cast<const bf16*>(a.logits) + off, (c * LANES + t) * VEC, a.E, true, -INFINITY, x);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      s[c * VEC + v] = x[v];
      key[c * VEC + v] = (int)index(c * VEC + v) < a.E ? order_key(x[v]) : kAbsentKey;
    }
  }
  uint32_t real = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) real |= (uint32_t)(key[p] != kAbsentKey) << p;
#pragma unroll 1
  for (int r = 0; r < a.K; ++r) {
    uint32_t m = key[0];
#pragma unroll
    for (int p = 1; p < VPT; ++p) m = max(m, key[p]);
    const uint32_t M = LaneTeam<LANES>::max(m);
    uint32_t idx = 0xffffffffu;
#pragma unroll
    for (int p = VPT - 1; p >= 0; --p)
      if (key[p] == M) idx = index(p);
    const uint32_t W = LaneTeam<LANES>::min(idx);
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if (index(p) == W) key[p] = kAbsentKey;
    if (live && a.indices != nullptr && t == 0) static_cast<int32_t*>(a.indices)[row * a.K + r] = (int32_t)W;
  }
  uint32_t sel = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) sel |= (uint32_t)(((real >> p) & 1) && key[p] == kAbsentKey) << p;
  float m = -INFINITY;
#pragma unroll
  for (int p = 0; p < VPT; ++p)
    if ((sel >> p) & 1) m = fmaxf(m, s[p]);
  m = LaneTeam<LANES>::maxf(m);
  float w[VPT], z = 0.0f;
#pragma unroll
  for (int p = 0; p < VPT; ++p) {
    w[p] = ((sel >> p) & 1) ? expf(s[p] - m) : 0.0f;
    z += w[p];
  }
  const float inv = 1.0f / LaneTeam<LANES>::sum(z);
  if (!live) return;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = (c * LANES + t) * VEC;
    float pr[VEC], im[VEC];
    uint8_t mb[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      const bool on = (sel >> p) & 1;
      const float wp = w[p] * inv;
      pr[v] = on ? wp * a.scale : 0.0f;
      im[v] = on ? wp : -INFINITY;
      mb[v] = on;
    }
    store_chunk<bf16, VEC>(static_cast<bf16*>(a.probs) + off, e0, a.E, true, pr);
    store_chunk<float, VEC>(a.intermediate + off, e0, a.E, true, im);
    store_bytes<VEC>(a.map + off, e0, a.E, true, mb);
  }
}

// ---- harness ---------------------------------------------------------------------------------
struct Buffers {
  bf16* x;
  bf16* probs;
  uint8_t* map;
  float* inter;
  int32_t* idx;
};

static bool g_profile = false;  // argv[2] == "profile": one launch per kernel (for ncu), no timing

template <typename Launch>
float time_us(Launch launch, int sets) {
  if (g_profile) return 0.0f;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3 * sets; ++i) launch(i % sets);
  std::vector<float> samples;
  for (int s = 0; s < 15; ++s) {
    CHECK(cudaEventRecord(a));
    for (int i = 0; i < 20; ++i) launch(i % sets);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    samples.push_back(ms * 1000.0f / 20);
  }
  CHECK(cudaGetLastError());
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

template <int VEC, int NC>
void run_case(int64_t T, int E, int K, float copy_gbs) {
  const size_t n = (size_t)T * E;
  const size_t bytes = n * (2 + 2 + 1 + 4);
  int l2 = 0;
  CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  const int sets = (int)std::max<size_t>(2, (4 * (size_t)l2 + bytes - 1) / bytes);
  std::vector<Buffers> bufs(sets);
  std::vector<bf16> host(n);
  srand(1234);
  for (auto& b : bufs) {
    for (size_t i = 0; i < n; ++i) host[i] = __float2bfloat16(((rand() & 0xffff) / 65536.0f - 0.5f) * 8.0f);
    CHECK(cudaMalloc(&b.x, n * 2));
    CHECK(cudaMalloc(&b.probs, n * 2));
    CHECK(cudaMalloc(&b.map, n));
    CHECK(cudaMalloc(&b.inter, n * 4));
    CHECK(cudaMalloc(&b.idx, (size_t)T * K * 4));
    CHECK(cudaMemcpy(b.x, host.data(), n * 2, cudaMemcpyHostToDevice));
  }
  auto args = [&](const Buffers& b) {
    ForwardArgs a{};
    a.logits = b.x;
    a.probs = b.probs;
    a.map = b.map;
    a.indices = b.idx;
    a.intermediate = b.inter;
    a.T = T;
    a.E = E;
    a.K = K;
    a.mode = kSoftmaxPost;
    a.map_kind = kMapBytes;
    a.vec = 1;
    a.scale = 1.0f;
    a.smem_words_per_team = 260;
    a.topk = kTopkDefault;
    a.packed = 1;  // bf16 softmax-post, as the library sets it
    return a;
  };
  const int threads = 128;
  const unsigned blocks = (unsigned)((T + 3) / 4);
  const size_t lib_smem = 4 * 260 * 4;
  // Reference outputs: the library's non-pipelined kernel.
  forward_warp_kernel<bf16, VEC, NC><<<blocks, threads, lib_smem>>>(args(bufs[0]));
  CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> ref_p(n), got_p(n);
  std::vector<uint8_t> ref_m(n), got_m(n);
  std::vector<int32_t> ref_i((size_t)T * K), got_i((size_t)T * K);
  CHECK(cudaMemcpy(ref_p.data(), bufs[0].probs, n * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(ref_m.data(), bufs[0].map, n, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(ref_i.data(), bufs[0].idx, (size_t)T * K * 4, cudaMemcpyDeviceToHost));
  auto same_as_library = [&](const char* name) {
    CHECK(cudaMemset(bufs[0].probs, 0xff, n * 2));
    CHECK(cudaMemset(bufs[0].map, 0xff, n));
    CHECK(cudaMemset(bufs[0].idx, 0xff, (size_t)T * K * 4));
    CHECK(cudaDeviceSynchronize());
    return [&, name](auto launch) {
      launch(0);
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaMemcpy(got_p.data(), bufs[0].probs, n * 2, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(got_m.data(), bufs[0].map, n, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(got_i.data(), bufs[0].idx, (size_t)T * K * 4, cudaMemcpyDeviceToHost));
      size_t prob_ulps = 0;  // bf16 probs more than one unit in the last place apart
      for (size_t i = 0; i < n; ++i) prob_ulps += std::abs((int)got_p[i] - (int)ref_p[i]) > 1;
      const bool ok = got_m == ref_m && got_i == ref_i && prob_ulps == 0;
      const bool bitwise = ok && got_p == ref_p;
      if (!ok) std::printf("  %-10s MISMATCH with the library kernel (probs off by > 1 ulp: %zu)\n", name, prob_ulps);
      else if (!bitwise) std::printf("  %-10s same selection; probs within 1 ulp of the library's\n", name);
      return ok;
    };
  };
  const double gb = bytes / 1e9;
  auto report = [&](const char* name, float us) {
    if (g_profile) return;
    std::printf("  %-10s %9.1f us  %7.0f GB/s  %5.1f%% of copy\n", name, us, gb / (us * 1e-6), 100.0 * gb / (us * 1e-6) / copy_gbs);
  };
  std::printf("T=%lld E=%d K=%d bf16 softmax-post bytemap+indices (%d sets of %.1f MB)\n", (long long)T, E, K, sets,
              bytes / 1e6);
  if (g_profile) {  // one launch of each, for ncu (no timing)
    copy_kernel<VEC, NC><<<blocks, threads>>>(args(bufs[0]));
    forward_warp_kernel<bf16, VEC, NC><<<blocks, threads, lib_smem>>>(args(bufs[0]));
    ForwardArgs f = args(bufs[0]);
    f.topk = kTopkFiltered;
    forward_warp_kernel<bf16, VEC, NC><<<blocks, threads, lib_smem>>>(f);
    CHECK(cudaDeviceSynchronize());
  }
  report("copy", time_us([&](int i) { copy_kernel<VEC, NC><<<blocks, threads>>>(args(bufs[i])); }, sets));
  report("library", time_us([&](int i) {
           forward_warp_kernel<bf16, VEC, NC><<<blocks, threads, lib_smem>>>(args(bufs[i]));
         }, sets));
  auto filtered = [&](int i) {
    ForwardArgs f = args(bufs[i]);
    f.topk = kTopkFiltered;
    forward_warp_kernel<bf16, VEC, NC><<<blocks, threads, lib_smem>>>(f);
  };
  if (same_as_library("filtered")(filtered)) report("filtered", time_us(filtered, sets));
  // the library's persistent cp.async kernel with the filter (two 16-byte padded stages per warp)
  const int stage_bytes = (E * 2 + 15) / 16 * 16;
  const size_t pipe_smem = lib_smem + (size_t)2 * stage_bytes * 4;
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, forward_warp_pipelined_kernel<bf16, VEC, NC>, threads,
                                                      pipe_smem));
  const unsigned pipe_blocks = std::min<unsigned>(blocks, (unsigned)per_sm * 132);
  auto pipelined = [&](int i) {
    ForwardArgs f = args(bufs[i]);
    f.topk = kTopkFiltered;
    f.stages = 2;
    f.stage_bytes = stage_bytes;
    forward_warp_pipelined_kernel<bf16, VEC, NC><<<pipe_blocks, threads, pipe_smem>>>(f);
  };
  if (same_as_library("pipelined")(pipelined)) report("pipelined", time_us(pipelined, sets));
  auto lean = [&](int i) { subwarp_kernel<32, VEC, NC><<<blocks, threads>>>(args(bufs[i])); };
  if (same_as_library("lean")(lean)) report("lean", time_us(lean, sets));
  // LANES lanes of 16 bytes (8 bf16) per row: E / 8 / NC_SUB lanes
  if constexpr (VEC * NC * 32 / 16 >= 8 && VEC * NC * 32 / 16 <= 32) {  // E = 128 .. 512
    constexpr int kLanes = VEC * NC * 32 / 16;
    const unsigned pk_blocks = (unsigned)((T + 4 * (32 / kLanes) - 1) / (4 * (32 / kLanes)));
    auto pk = [&](int i) { forward_team_kernel<bf16, kLanes, kTeamSoftmaxPostPacked, 2, false><<<pk_blocks, threads>>>(args(bufs[i])); };
    char name[32];
    std::snprintf(name, sizeof(name), "packed%d", kLanes);
    if (E == kLanes * 16 && same_as_library(name)(pk)) report(name, time_us(pk, sets));
  }
  if constexpr (VEC * NC * 32 >= 1024) {  // the library's wide packed rows (v4): one warp per row, keys only
    constexpr int kChunks = VEC * NC * 32 / 256;
    auto wide = [&](int i) { forward_wide_packed_kernel<bf16, kChunks><<<blocks, threads>>>(args(bufs[i])); };
    if (E == kChunks * 256 && same_as_library("wide")(wide)) report("wide", time_us(wide, sets));
  }
  if constexpr (VEC * NC * 32 / 16 >= 8) {
    constexpr int kNcSub = 2, kLanes = VEC * NC * 32 / (8 * kNcSub);
    if constexpr (kLanes >= 2 && kLanes <= 32) {
      const unsigned sub_blocks = (unsigned)((T + 4 * (32 / kLanes) - 1) / (4 * (32 / kLanes)));
      auto sub = [&](int i) { subwarp_kernel<kLanes, 8, kNcSub><<<sub_blocks, threads>>>(args(bufs[i])); };
      char name[32];
      std::snprintf(name, sizeof(name), "subwarp%d", kLanes);
      if (same_as_library(name)(sub)) report(name, time_us(sub, sets));
    }
  }
  for (auto& b : bufs) {
    cudaFree(b.x);
    cudaFree(b.probs);
    cudaFree(b.map);
    cudaFree(b.inter);
    cudaFree(b.idx);
  }
}

__global__ void copy_bytes(const uint4* src, uint4* dst, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = src[i];
}

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 65536;
  g_profile = argc > 2 && std::strcmp(argv[2], "profile") == 0;
  // copy ceiling: 1 GiB device-to-device, bytes read + written
  const size_t cbytes = (size_t)1 << 30;
  uint4 *src, *dst;
  CHECK(cudaMalloc(&src, cbytes));
  CHECK(cudaMalloc(&dst, cbytes));
  CHECK(cudaMemset(src, 1, cbytes));
  const float copy_us = time_us([&](int) { copy_bytes<<<132 * 8, 512>>>(src, dst, cbytes / 16); }, 1);
  const float copy_gbs = 2.0 * cbytes / 1e9 / (copy_us * 1e-6);
  std::printf("copy ceiling %.0f GB/s\n", copy_gbs);
  cudaFree(src);
  cudaFree(dst);
  run_case<4, 1>(T, 128, 2, copy_gbs);
  run_case<4, 1>(T, 128, 8, copy_gbs);
  run_case<8, 1>(T, 256, 8, copy_gbs);
  run_case<8, 2>(T, 512, 8, copy_gbs);
  run_case<8, 2>(T, 512, 22, copy_gbs);
  run_case<8, 4>(T, 1024, 8, copy_gbs);
  run_case<8, 4>(T, 1024, 22, copy_gbs);
  return 0;
}
