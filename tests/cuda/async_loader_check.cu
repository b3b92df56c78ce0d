// include/moekit/async_loader.cuh as a consumer uses it: rows staged through RowPipeline (1 and 2
// buffers) on a persistent grid sized by persistent_blocks, in the pattern of the header's comment;
// fill() at every alignment; choose_stages on both sides of its bound. Rows of odd byte lengths:
// the copy of each row must equal the row, and the staged bytes past its end must be zero.
//
//   nvcc -std=c++17 -arch=sm_90a -Iinclude tests/cuda/async_loader_check.cu -o async_loader_check
//   ./async_loader_check     exit status 1 on any mismatch
// tests/test_cuda_sources.py builds it (compile only without a GPU) and runs it.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check.h"

#include "moekit/async_loader.cuh"

using namespace moekit::async;

// Each warp walks rows gridDim.x * warps apart; a row of `bytes` (stride: bytes rounded up to 16) is
// staged, then copied out lane by lane, with the stage's 16-byte-rounded tail into `tail`.
__global__ void copy_rows(const uint8_t* src, uint8_t* dst, uint8_t* tail, int rows, int bytes, int stages) {
  extern __shared__ uint8_t smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int stride = (bytes + 15) / 16 * 16;
  RowPipeline pipe(smem + (size_t)warp * stages * stride, stride, stages);
  const int step = gridDim.x * warps;
  int row = blockIdx.x * warps + warp;
  if (row < rows) pipe.fetch(0, src + (size_t)row * stride, bytes, lane, 32);
  for (int s = 0; row < rows; row += step) {
    const bool ahead = pipe.prefetches() && row + step < rows;
    if (ahead) pipe.fetch(s ^ 1, src + (size_t)(row + step) * stride, bytes, lane, 32);
    pipe.wait(ahead);
    __syncwarp();
    const uint8_t* staged = pipe.stage(s);
    for (int i = lane; i < stride; i += 32) {
      if (i < bytes) dst[(size_t)row * stride + i] = staged[i];
      else tail[(size_t)row * 16 + (i - bytes)] = staged[i];
    }
    __syncwarp();  // every lane has read the buffer before it is refilled
    if (!pipe.prefetches()) {
      if (row + step < rows) pipe.fetch(0, src + (size_t)(row + step) * stride, bytes, lane, 32);
    } else {
      s ^= 1;
    }
  }
}

__global__ void fill_kernel(uint8_t* dst, int64_t bytes, uint32_t word) { fill(dst, bytes, word, threadIdx.x, blockDim.x); }

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("MISMATCH: %s\n", what);
    ++failures;
  }
}

int main() {
  int dev = 0, sms = 0, smem_sm = 0, smem_optin = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CHECK(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
  CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  expect(choose_stages(1024, 4, 4, 0, smem_sm, smem_optin) == 2, "choose_stages: small rows get 2 buffers");
  expect(choose_stages(smem_optin / 4, 4, 4, 0, smem_sm, smem_optin) == 1, "choose_stages: large rows get 1 buffer");

  for (int bytes : {1, 15, 16, 17, 100, 1000, 4099})
    for (int stages : {1, 2}) {
      const int rows = 3000, stride = (bytes + 15) / 16 * 16, threads = 128;
      std::vector<uint8_t> src((size_t)rows * stride);
      for (size_t i = 0; i < src.size(); ++i) src[i] = (uint8_t)(i * 131 + 7);
      uint8_t *dsrc, *ddst, *dtail;
      CHECK(cudaMalloc(&dsrc, src.size()));
      CHECK(cudaMalloc(&ddst, src.size()));
      CHECK(cudaMalloc(&dtail, (size_t)rows * 16));
      CHECK(cudaMemcpy(dsrc, src.data(), src.size(), cudaMemcpyHostToDevice));
      CHECK(cudaMemset(ddst, 0xab, src.size()));
      CHECK(cudaMemset(dtail, 0xcd, (size_t)rows * 16));
      const size_t smem = (size_t)stages * stride * (threads / 32);
      long long blocks = 0;
      CHECK(persistent_blocks(copy_rows, threads, smem, sms, (rows + 3) / 4, &blocks));
      expect(blocks >= 1 && blocks <= (rows + 3) / 4, "persistent_blocks: within [1, work]");
      copy_rows<<<(unsigned)blocks, threads, smem>>>(dsrc, ddst, dtail, rows, bytes, stages);
      CHECK(cudaGetLastError());
      std::vector<uint8_t> dst(src.size()), tail((size_t)rows * 16);
      CHECK(cudaMemcpy(dst.data(), ddst, dst.size(), cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(tail.data(), dtail, tail.size(), cudaMemcpyDeviceToHost));
      bool same = true, zero = true;
      for (int r = 0; r < rows; ++r) {
        for (int i = 0; i < bytes; ++i) same = same && dst[(size_t)r * stride + i] == src[(size_t)r * stride + i];
        for (int i = 0; i < stride - bytes; ++i) zero = zero && tail[(size_t)r * 16 + i] == 0;
      }
      char what[96];
      std::snprintf(what, sizeof what, "RowPipeline rows of %d bytes, %d buffer(s): copy", bytes, stages);
      expect(same, what);
      std::snprintf(what, sizeof what, "RowPipeline rows of %d bytes, %d buffer(s): zero-filled tail", bytes, stages);
      expect(zero, what);
      std::printf("RowPipeline: %d rows of %d bytes, %d buffer(s), %lld blocks: %s\n", rows, bytes, stages, blocks,
                  same && zero ? "ok" : "MISMATCH");
      CHECK(cudaFree(dsrc));
      CHECK(cudaFree(ddst));
      CHECK(cudaFree(dtail));
    }

  // fill: every start alignment and a few lengths, the bytes around left untouched
  uint8_t* buf;
  const int n = 4096;
  CHECK(cudaMalloc(&buf, n));
  for (int start = 0; start < 16; ++start)
    for (int bytes : {0, 1, 7, 16, 33, 1000}) {
      CHECK(cudaMemset(buf, 0x5a, n));
      fill_kernel<<<1, 64>>>(buf + start, bytes, 0x04030201u);
      CHECK(cudaGetLastError());
      std::vector<uint8_t> h(n);
      CHECK(cudaMemcpy(h.data(), buf, n, cudaMemcpyDeviceToHost));
      bool ok = true;
      for (int i = 0; i < n; ++i) {
        const int j = i - start;
        const uint8_t want = j >= 0 && j < bytes ? (uint8_t)((j & 3) + 1) : 0x5a;  // byte j % 4 of the word
        ok = ok && h[i] == want;
      }
      char what[64];
      std::snprintf(what, sizeof what, "fill at offset %d, %d bytes", start, bytes);
      expect(ok, what);
    }
  std::printf("fill: 16 offsets x 6 lengths %s\n", failures ? "(see mismatches)" : "ok");
  CHECK(cudaFree(buf));
  CHECK(cudaDeviceSynchronize());
  std::printf(failures ? "async_loader_check: %d FAILURES\n" : "async_loader_check: all checks pass\n", failures);
  return failures ? 1 : 0;
}
