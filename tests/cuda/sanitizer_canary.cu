// One planted defect per compute-sanitizer tool, so that the gate (scripts/gpu-check.sh) can show
// each tool reports what it exists to find before it calls the library's kernels clean:
//   memcheck   a store one element past the end of a cudaMalloc'd buffer
//   racecheck  two warps' unordered shared-memory accesses to one word (no barrier between them)
//   synccheck  __syncthreads() reached by every other thread of a warp
//   initcheck  a read of device memory that nothing wrote
// Each kernel is correct except for its one defect; run without the sanitizer it completes.
//
//   nvcc -std=c++17 -arch=sm_90a tests/cuda/sanitizer_canary.cu -o sanitizer_canary
//   compute-sanitizer --tool racecheck ./sanitizer_canary racecheck      (must report a hazard)
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

__global__ void past_the_end(int* p, int n) { p[n] = 1; }  // memcheck

__global__ void shared_race(int* out) {  // racecheck: warp 0 writes what warp 1 reads, no barrier
  __shared__ volatile int word;
  if (threadIdx.x == 0) word = 42;
  if (threadIdx.x == 32) out[0] = word;
}

__global__ void divergent_barrier(int* out) {  // synccheck
  __shared__ int s[64];
  s[threadIdx.x] = threadIdx.x;
  if (threadIdx.x % 2 == 0) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void read_unwritten(const int* in, int* out) { out[threadIdx.x] = in[threadIdx.x] + 1; }  // initcheck

int main(int argc, char** argv) {
  const char* tool = argc > 1 ? argv[1] : "";
  int *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, 64 * sizeof(int)) != cudaSuccess || cudaMalloc(&b, 64 * sizeof(int)) != cudaSuccess) return 2;
  cudaMemset(b, 0, 64 * sizeof(int));
  if (!std::strcmp(tool, "memcheck")) past_the_end<<<1, 1>>>(a, 64);
  else if (!std::strcmp(tool, "racecheck")) shared_race<<<1, 64>>>(b);
  else if (!std::strcmp(tool, "synccheck")) divergent_barrier<<<1, 64>>>(b);
  else if (!std::strcmp(tool, "initcheck")) read_unwritten<<<1, 64>>>(a, b);
  else {
    std::fprintf(stderr, "usage: sanitizer_canary memcheck|racecheck|synccheck|initcheck\n");
    return 2;
  }
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("sanitizer_canary %s: %s\n", tool, cudaGetErrorString(err));
  cudaFree(a);
  cudaFree(b);
  return 0;
}
