// moekit device helpers for row-streaming kernels: a cp.async multi-buffered row loader, the host
// choices that go with it (1 or 2 buffers from per-SM shared memory; persistent-grid size from
// occupancy), and vectorized global store / fill helpers.
//
// Pattern (one team = the threads that own a row; here a warp):
//
//   RowPipeline pipe(stage_smem, stage_bytes, stages);
//   if (row < T) pipe.fetch(0, src(row), bytes, lane, 32);
//   for (int s = 0; row < T; row += step) {
//     const bool ahead = pipe.prefetches() && row + step < T;
//     if (ahead) pipe.fetch(s ^ 1, src(row + step), bytes, lane, 32);   // overlaps this row's work
//     pipe.wait(ahead); __syncwarp();
//     work(pipe.stage(s));
//     __syncwarp();                                                        // every lane is done reading
//     if (!pipe.prefetches() && row + step < T) pipe.fetch(0, src(row + step), bytes, lane, 32);
//     else s ^= 1;
//   }
//
// With one buffer the loader never prefetches: the next row is fetched only after the team has
// finished reading the current one, so a fetch can never overwrite data still being read.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moekit {
namespace async {

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define MOEKIT_ASYNC_COPY 1
#else
#define MOEKIT_ASYNC_COPY 0
#endif

// 16 bytes global -> shared, asynchronous on sm_80+; bytes [valid, 16) are zero-filled and
// never read from global memory. Both addresses 16-byte aligned.
__device__ __forceinline__ void copy16(void* dst_smem, const void* src, int valid) {
#if MOEKIT_ASYNC_COPY
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid) : "memory");
#else
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (valid >= 16) {
    v = *static_cast<const uint4*>(src);
  } else {
    uint8_t* b = reinterpret_cast<uint8_t*>(&v);
    for (int i = 0; i < valid; ++i) b[i] = static_cast<const uint8_t*>(src)[i];
  }
  *static_cast<uint4*>(dst_smem) = v;
#endif
}

__device__ __forceinline__ void commit() {
#if MOEKIT_ASYNC_COPY
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void wait_pending() {
#if MOEKIT_ASYNC_COPY
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Rows staged through `stages` (1 or 2) shared-memory buffers of `stage_bytes` each (a multiple of 16).
struct RowPipeline {
  uint8_t* base;
  int stage_bytes;
  int stages;

  __device__ RowPipeline(void* smem, int stage_bytes_, int stages_)
      : base(static_cast<uint8_t*>(smem)), stage_bytes(stage_bytes_), stages(stages_) {}

  __device__ __forceinline__ bool prefetches() const { return stages > 1; }
  __device__ __forceinline__ uint8_t* stage(int s) const { return base + s * stage_bytes; }

  // Team-cooperative copy of `bytes` from `src` (16-byte aligned) into buffer `s`, then one commit.
  __device__ __forceinline__ void fetch(int s, const void* src, int bytes, int rank, int team_size) const {
    const uint8_t* g = static_cast<const uint8_t*>(src);
    for (int off = rank * 16; off < bytes; off += team_size * 16) {
      const int valid = bytes - off < 16 ? bytes - off : 16;
      copy16(stage(s) + off, g + off, valid);
    }
    commit();
  }
  // After a prefetch of the next row was issued, the current one is complete once at most one
  // group is pending; otherwise wait for everything.
  __device__ __forceinline__ void wait(bool next_in_flight) const {
    if (next_in_flight) wait_pending<1>();
    else wait_pending<0>();
  }
};

// ---- vectorized global stores -------------------------------------------------------------------
// Streaming 16-byte store (evict-first): outputs written once and read by a later kernel.
__device__ __forceinline__ void store16_streaming(void* dst, uint4 v) { __stcs(static_cast<uint4*>(dst), v); }

// Team-cooperative fill of `bytes` at `dst` with the 32-bit pattern `word` (byte i of the region is
// byte i % 4 of `word`, little-endian, whatever dst's alignment): 16-byte stores from the first
// 16-byte boundary on, a bytewise head and tail.
__device__ __forceinline__ void fill(void* dst, int64_t bytes, uint32_t word, int rank, int team_size) {
  uint8_t* d = static_cast<uint8_t*>(dst);
  const int64_t head = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
  const int64_t h = head < bytes ? head : bytes;
  for (int64_t i = rank; i < h; i += team_size) d[i] = static_cast<uint8_t>(word >> (8 * (i & 3)));
  const int64_t body = (bytes - h) / 16;
  const uint32_t phase = 8u * static_cast<uint32_t>(h & 3);  // the pattern continues across the head
  const uint32_t w = phase == 0 ? word : (word >> phase) | (word << (32u - phase));
  const uint4 v = make_uint4(w, w, w, w);
  for (int64_t i = rank; i < body; i += team_size) reinterpret_cast<uint4*>(d + h)[i] = v;
  for (int64_t i = h + body * 16 + rank; i < bytes; i += team_size) d[i] = static_cast<uint8_t>(word >> (8 * (i & 3)));
}

// ---- host-side choices --------------------------------------------------------------------------
// 2 buffers when they fit `teams_per_block * min_blocks_per_sm` teams in the per-SM shared memory
// (with `other_bytes_per_block` of other shared memory per block), else 1.
inline int choose_stages(int stage_bytes, int teams_per_block, int min_blocks_per_sm, int other_bytes_per_block,
                         int smem_per_sm, int smem_per_block_optin) {
  const long long per_block_two = 2LL * stage_bytes * teams_per_block + other_bytes_per_block;
  const bool fits_block = per_block_two <= smem_per_block_optin;
  const bool fits_sm = per_block_two * min_blocks_per_sm + 1024LL * min_blocks_per_sm <= smem_per_sm;
  return (fits_block && fits_sm) ? 2 : 1;
}

// Persistent grid: as many blocks as can be resident at once (occupancy x SMs), never more than
// there is work for. Host call, no synchronization.
template <typename Kernel>
inline cudaError_t persistent_blocks(Kernel kernel, int threads, size_t smem_bytes, int sm_count, long long work_blocks,
                                     long long* blocks) {
  int per_sm = 0;
  cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes);
  if (err != cudaSuccess) return err;
  long long resident = static_cast<long long>(per_sm > 0 ? per_sm : 1) * sm_count;
  *blocks = work_blocks < resident ? work_blocks : resident;
  if (*blocks < 1) *blocks = 1;
  return cudaSuccess;
}

}  // namespace async
}  // namespace moekit
