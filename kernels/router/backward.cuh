// Router backward (SPEC section 1), and the aux-loss scores' (AUX, section 2): one warp per row, or
// one block per row for long rows. The selection comes as a bytemap, a bitmap or indices; grad and
// intermediate are read only where the gradient needs them.
#pragma once

#include <cstdint>

#include "common/device.cuh"
#include "common/scores.cuh"
#include "common/team.cuh"
#include "router/params.h"

namespace moekit {
namespace router {

// The VEC elements at p as raw pieces (Chunk) when `want`, zero bits otherwise: a predicated load
// that nothing waits on until the pieces are converted.
template <typename T, int VEC>
__device__ __forceinline__ void load_pieces_if(bool want, const T* __restrict__ p,
                                               typename Chunk<T, VEC>::Piece (&out)[VEC / Chunk<T, VEC>::kPer]) {
  using C = Chunk<T, VEC>;
#pragma unroll
  for (int k = 0; k < VEC / C::kPer; ++k)
    out[k] = want ? *reinterpret_cast<const typename C::Piece*>(p + k * C::kPer) : typename C::Piece{};
}

// Bytemap rows with vector access and several chunks per lane: every chunk's map bytes first, then
// the grad and intermediate loads of every chunk that needs them, back to back as predicated loads,
// converted after. A row then waits for two memory latencies, not two per chunk (written per chunk,
// nvcc kept each chunk's map -> grad chain in order; bench/NOTES.md v6). `vec`: E % VEC == 0, so a
// chunk is whole or past the end. Returns the selection bits; g is grad * scale, y the intermediate
// (0 where unread).
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t backward_bytemap_loads(const BackwardParams& a, const Team& team, int64_t off,
                                                           bool dense, float (&g)[VEC * NC], float (&y)[VEC * NC]) {
  const int E = a.E;
  typename Chunk<uint8_t, VEC>::Piece map[NC][VEC / Chunk<uint8_t, VEC>::kPer];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    load_pieces_if<uint8_t, VEC>(e0 < E, a.map + off + e0, map[c]);
  }
  uint64_t m = 0;
  typename Chunk<T, VEC>::Piece graw[NC][VEC / Chunk<T, VEC>::kPer];
  typename Chunk<float, VEC>::Piece yraw[NC][VEC / Chunk<float, VEC>::kPer];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(map[c]);
    uint32_t bits = 0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) bits |= (uint32_t)(b[v] != 0) << v;
    m |= (uint64_t)bits << (c * VEC);
    const bool want = e0 < E && (dense || bits != 0);
    load_pieces_if<T, VEC>(want, static_cast<const T*>(a.grad) + off + e0, graw[c]);
    load_pieces_if<float, VEC>(want, a.intermediate + off + e0, yraw[c]);
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const T* ge = reinterpret_cast<const T*>(graw[c]);
    const float* ye = reinterpret_cast<const float*>(yraw[c]);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      g[c * VEC + v] = to_float(ge[v]) * a.scale;  // zero bits are 0.0 in every dtype
      y[c * VEC + v] = ye[v];
    }
  }
  return m;
}

// Step 1: the selection bits m of this thread's positions, and g = grad * scale and y = the
// intermediate where the gradient needs them (0 where unread).
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t backward_loads(const BackwardParams& a, Team& team, int64_t row, uint32_t* smem,
                                                  float (&g)[VEC * NC], float (&y)[VEC * NC]) {
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const bool vec = a.vec != 0;

  // Selection from indices: scatter into a per-team byte mask (out-of-range ids are ignored).
  uint8_t* mask_bytes = reinterpret_cast<uint8_t*>(smem);
  if (a.map_kind == kMapNone) {
    for (int i = team.rank; i < E; i += team.size()) mask_bytes[i] = 0;
    team.sync();
    for (int j = team.rank; j < a.K; j += team.size()) {
      int64_t id = a.idx64 ? static_cast<const int64_t*>(a.indices)[row * a.K + j]
                           : (int64_t) static_cast<const int32_t*>(a.indices)[row * a.K + j];
      if (id >= 0 && id < E) mask_bytes[id] = 1;
    }
    team.sync();
  }

  // Off the selection, only softmax-pre needs grad or intermediate: the other modes read them
  // only in chunks holding a selected expert (K of E), which is most of the traffic saved
  // (reading them everywhere, so that no load waits for the map, was slower: bench/NOTES.md v4).
  const bool dense = a.mode == kSoftmaxPre;
  uint64_t m = 0;
  if (NC > 1 && a.map_kind == kMapBytes && vec) {
    m = backward_bytemap_loads<T, VEC, NC>(a, team, off, dense, g, y);
  } else {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int e0 = elem_index<VEC>(team, c, 0);
      uint8_t mb[VEC];
      if (a.map_kind == kMapBytes) {
        load_bytes<VEC>(a.map + off, e0, E, vec, mb);
      } else if (a.map_kind == kMapBits) {
        // VEC divides 8 and e0 is a multiple of VEC, so the chunk's bits sit in one byte
        const uint8_t byte = e0 < E ? a.map[row * (int64_t)((E + 7) / 8) + (e0 >> 3)] : 0;
#pragma unroll
        for (int v = 0; v < VEC; ++v) mb[v] = (byte >> ((e0 + v) & 7)) & 1;
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) mb[v] = (e0 + v < E) ? mask_bytes[e0 + v] : 0;
      }
      uint32_t chunk_bits = 0;
#pragma unroll
      for (int v = 0; v < VEC; ++v) chunk_bits |= (uint32_t)(mb[v] != 0 && e0 + v < E) << v;
      m |= (uint64_t)chunk_bits << (c * VEC);
      float tg[VEC], ty[VEC];
      if ((dense || chunk_bits != 0) && vec && e0 + VEC <= E) {  // both loads in flight at once
        load_chunk_vec<T, VEC>(static_cast<const T*>(a.grad) + off, e0, tg);
        load_chunk_vec<float, VEC>(a.intermediate + off, e0, ty);
      } else if (dense || chunk_bits != 0) {
        load_chunk<T, VEC>(static_cast<const T*>(a.grad) + off, e0, E, false, 0.0f, tg);
        load_chunk<float, VEC>(a.intermediate + off, e0, E, false, 0.0f, ty);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) tg[v] = ty[v] = 0.0f;
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        g[c * VEC + v] = tg[v] * a.scale;
        y[c * VEC + v] = ty[v];
      }
    }
  }
  if (a.map_kind == kMapNone) team.sync();  // mask_bytes is rewritten by the next row
  return m;
}

// Step 1, aux-loss scores (SPEC section 2): f32 grad_scores and the intermediate everywhere; the
// "selection" is every expert of the row, so that step 2 differentiates the full-row normalization.
template <int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t aux_backward_loads(const BackwardParams& a, const Team& team, int64_t row,
                                                       float (&g)[VEC * NC], float (&y)[VEC * NC]) {
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const float* grad = static_cast<const float*>(a.grad) + off;
  uint64_t m = 0;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    float tg[VEC], ty[VEC];
    if (a.vec && e0 + VEC <= E) {  // both loads in flight at once
      load_chunk_vec<float, VEC>(grad, e0, tg);
      load_chunk_vec<float, VEC>(a.intermediate + off, e0, ty);
    } else {
      load_chunk<float, VEC>(grad, e0, E, false, 0.0f, tg);
      load_chunk<float, VEC>(a.intermediate + off, e0, E, false, 0.0f, ty);
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      g[c * VEC + v] = tg[v];
      y[c * VEC + v] = ty[v];
      m |= (uint64_t)(e0 + v < E) << (c * VEC + v);
    }
  }
  return m;
}

// Step 2: the gradient of SPEC section 1 (exactly 0 off the selection, softmax-pre aside). AUX:
// the sigmoid / sqrtsoftplus normalization applies at every K.
template <int VEC, int NC, bool AUX, class Team>
__device__ __forceinline__ void backward_grad(const BackwardParams& a, Team& team, uint64_t m,
                                              const float (&g)[VEC * NC], const float (&y)[VEC * NC],
                                              float (&dx)[VEC * NC]) {
  constexpr int VPT = VEC * NC;
  if (a.mode == kSoftmaxPre || a.mode == kSoftmaxPost) {
    float d = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if ((m >> p) & 1) d += g[p] * y[p];
    d = team.sum(d);
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      const bool on = (m >> p) & 1;
      if (a.mode == kSoftmaxPre) dx[p] = y[p] * ((on ? g[p] : 0.0f) - d);
      else dx[p] = on ? y[p] * (g[p] - d) : 0.0f;  // unselected p is -inf: never multiply it
    }
  } else {
    float v[VPT];
#pragma unroll
    for (int p = 0; p < VPT; ++p) v[p] = a.mode == kSigmoid ? y[p] : sqrtf(softplusf(y[p]));
    float h[VPT];
    if (AUX || a.K > 1) {
      float sv = 0.0f, d = 0.0f;
#pragma unroll
      for (int p = 0; p < VPT; ++p)
        if ((m >> p) & 1) {
          sv += v[p];
          d += g[p] * v[p];
        }
      const float denom = team.sum(sv) + kEps;
      d = team.sum(d);
      const float inv = 1.0f / denom;
#pragma unroll
      for (int p = 0; p < VPT; ++p) h[p] = ((m >> p) & 1) ? g[p] * inv - d * inv * inv : 0.0f;
    } else {
#pragma unroll
      for (int p = 0; p < VPT; ++p) h[p] = ((m >> p) & 1) ? g[p] : 0.0f;
    }
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      float d;
      if (a.mode == kSigmoid) {
        d = h[p] * y[p] * (1.0f - y[p]);
      } else {
        const float x = y[p];
        d = h[p] * (x > 20.0f ? 1.0f : sigmoidf(x)) / (2.0f * v[p] + kEps);
      }
      dx[p] = ((m >> p) & 1) ? d : 0.0f;  // exactly 0 off the selection, even where y is NaN or inf
    }
  }
}

// Steps 1 and 2 of one row: its gradient in dx.
template <typename T, int VEC, int NC, bool AUX, class Team>
__device__ __forceinline__ void backward_row_grad(const BackwardParams& a, Team& team, int64_t row, uint32_t* smem,
                                                  float (&dx)[VEC * NC]) {
  constexpr int VPT = VEC * NC;
  float g[VPT], y[VPT];
  uint64_t m;
  if constexpr (AUX) m = aux_backward_loads<VEC, NC>(a, team, row, g, y);
  else m = backward_loads<T, VEC, NC>(a, team, row, smem, g, y);
  backward_grad<VEC, NC, AUX>(a, team, m, g, y, dx);
}

// Step 3: every element of grad_logits
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ void backward_row_store(const BackwardParams& a, const Team& team, int64_t row,
                                                   const float (&dx)[VEC * NC]) {
  const int64_t off = row * (int64_t)a.E;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float t[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) t[v] = dx[c * VEC + v];
    store_chunk<T, VEC>(static_cast<T*>(a.grad_logits) + off, elem_index<VEC>(team, c, 0), a.E, a.vec != 0, t);
  }
}

template <typename T, int VEC, int NC, bool AUX, class Team>
__device__ __forceinline__ void backward_row(const BackwardParams& a, Team& team, int64_t row, uint32_t* smem) {
  float dx[VEC * NC];
  backward_row_grad<T, VEC, NC, AUX>(a, team, row, smem, dx);
  backward_row_store<T, VEC, NC>(a, team, row, dx);
}

// The router's and the aux-loss scores' gradients of one row, summed in fp32 and stored once
// (moekit_router_aux_backward; `a` names grad_logits).
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ void backward_pair_row(const BackwardParams& a, const BackwardParams& b, Team& team,
                                                  int64_t row, uint32_t* smem) {
  float dx[VEC * NC], dx_aux[VEC * NC];
  backward_row_grad<T, VEC, NC, false>(a, team, row, smem, dx);
  backward_row_grad<T, VEC, NC, true>(b, team, row, smem, dx_aux);
#pragma unroll
  for (int p = 0; p < VEC * NC; ++p) dx[p] += dx_aux[p];
  backward_row_store<T, VEC, NC>(a, team, row, dx);
}

// Warp rows: blockDim.x / 32 rows per block, each warp with its own slice of shared memory.
template <typename T, int VEC, int NC, bool AUX = false>
__global__ void backward_warp_kernel(BackwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  backward_row<T, VEC, NC, AUX>(a, team, row, smem + warp * a.smem_words_per_team);
}

template <typename T, int VEC, int NC, bool AUX = false>
__global__ void __launch_bounds__(kMaxBlockThreads) backward_block_kernel(BackwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  backward_row<T, VEC, NC, AUX>(a, team, (int64_t)blockIdx.x, smem + 128);
}

template <typename T, int VEC, int NC>
__global__ void backward_warp_pair_kernel(BackwardParams a, BackwardParams b) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  backward_pair_row<T, VEC, NC>(a, b, team, row, smem + warp * a.smem_words_per_team);
}

template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(kMaxBlockThreads) backward_block_pair_kernel(BackwardParams a, BackwardParams b) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  backward_pair_row<T, VEC, NC>(a, b, team, (int64_t)blockIdx.x, smem + 128);
}

}  // namespace router
}  // namespace moekit
