// Uses libmoekit through its C header: prints the version, shows how a bad argument is reported,
// and, when a CUDA device is present, routes 4 tokens over 16 experts (top-2, softmax) and checks
// the result against a few lines of host code. Exit code 0 means everything behaved as documented.
#include <moekit/moekit.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#ifdef MOEKIT_EXAMPLE_WITH_CUDA
#include <cuda_runtime.h>  // the typed cudaMalloc overloads
#endif

namespace {

// topk = 0 must be rejected on the host, before anything touches the buffers.
bool invalid_topk_is_rejected() {
  const int64_t T = 4, E = 16;
  std::vector<float> logits(T * E), probs(T * E), intermediate(T * E);
  std::vector<uint8_t> routing_map(T * E);
  moekit_status_t status = moekit_router_topk_forward(
      logits.data(), MOEKIT_DTYPE_F32, T, E, /*topk=*/0, MOEKIT_SCORE_SOFTMAX, /*use_pre_softmax=*/0,
      /*num_groups=*/0, /*group_topk=*/0, /*scaling_factor=*/1.0f, /*expert_bias=*/nullptr, MOEKIT_DTYPE_F32,
      probs.data(), routing_map.data(), MOEKIT_MAP_BYTEMAP, /*topk_indices=*/nullptr, MOEKIT_DTYPE_I32,
      intermediate.data(), /*stream=*/nullptr);
  std::printf("topk=0 -> %s: %s\n", moekit_status_string(status), moekit_last_error());
  return status == MOEKIT_INVALID_ARGUMENT;
}

#ifdef MOEKIT_EXAMPLE_WITH_CUDA
bool cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) std::printf("%s failed: %s\n", what, cudaGetErrorString(err));
  return err == cudaSuccess;
}

// T=4 tokens, E=16 experts, top-2, softmax after selection, float32.
bool small_forward_matches_host() {
  constexpr int T = 4, E = 16, K = 2;
  std::vector<float> logits(T * E);
  for (int i = 0; i < T * E; ++i) logits[i] = std::sin(0.7f * i) * 3.0f;

  float *d_logits = nullptr, *d_probs = nullptr, *d_intermediate = nullptr;
  uint8_t* d_map = nullptr;
  int32_t* d_indices = nullptr;
  bool ok = cuda_ok(cudaMalloc(&d_logits, sizeof(float) * T * E), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&d_probs, sizeof(float) * T * E), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&d_intermediate, sizeof(float) * T * E), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&d_map, T * E), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&d_indices, sizeof(int32_t) * T * K), "cudaMalloc") &&
            cuda_ok(cudaMemcpy(d_logits, logits.data(), sizeof(float) * T * E, cudaMemcpyHostToDevice), "cudaMemcpy");

  std::vector<float> probs(T * E);
  std::vector<int32_t> indices(T * K);
  if (ok) {
    moekit_status_t status = moekit_router_topk_forward(
        d_logits, MOEKIT_DTYPE_F32, T, E, K, MOEKIT_SCORE_SOFTMAX, 0, 0, 0, 1.0f, nullptr, MOEKIT_DTYPE_F32,
        d_probs, d_map, MOEKIT_MAP_BYTEMAP, d_indices, MOEKIT_DTYPE_I32, d_intermediate, nullptr);
    std::printf("forward -> %s %s\n", moekit_status_string(status), moekit_last_error());
    ok = status == MOEKIT_SUCCESS &&
         cuda_ok(cudaMemcpy(probs.data(), d_probs, sizeof(float) * T * E, cudaMemcpyDeviceToHost), "cudaMemcpy") &&
         cuda_ok(cudaMemcpy(indices.data(), d_indices, sizeof(int32_t) * T * K, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  cudaFree(d_logits); cudaFree(d_probs); cudaFree(d_intermediate); cudaFree(d_map); cudaFree(d_indices);
  if (!ok) return false;

  for (int t = 0; t < T; ++t) {
    const float* x = &logits[t * E];
    // Host reference: the two largest logits (lower index first on ties), softmax over the two.
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [x](int a, int b) { return x[a] > x[b]; });
    const float w1 = 1.0f / (1.0f + std::exp(x[order[1]] - x[order[0]]));
    const float expected[K] = {w1, 1.0f - w1};

    std::printf("token %d: probs", t);
    for (int e = 0; e < E; ++e) std::printf(" %.4f", probs[t * E + e]);
    std::printf("\n         experts %d %d\n", indices[t * K], indices[t * K + 1]);
    for (int k = 0; k < K; ++k) {
      const int e = order[k];
      if (indices[t * K + k] != e || std::fabs(probs[t * E + e] - expected[k]) > 1e-5f) {
        std::printf("token %d: expected expert %d with weight %.6f\n", t, e, expected[k]);
        ok = false;
      }
    }
  }
  return ok;
}
#endif

}  // namespace

int main() {
  std::printf("moekit version %d, ABI %d\n", moekit_version(), moekit_abi_version());
  bool ok = invalid_topk_is_rejected();

#ifdef MOEKIT_EXAMPLE_WITH_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipping the real forward\n");
  } else {
    ok = small_forward_matches_host() && ok;
  }
#else
  std::printf("built without the CUDA runtime: skipping the real forward\n");
#endif

  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
