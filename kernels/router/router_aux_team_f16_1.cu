// The router + aux-scores pair's team-rows kernels (launch_pair_team.cuh) for __half logits, router kinds
// kSoftmaxPre kSigmoid: a unit of its own so that the build compiles the kinds in parallel.
#include "router/launch_pair_team.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_pair_team<__half, kSoftmaxPre>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
template cudaError_t launch_pair_team<__half, kSigmoid>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
}  // namespace router
}  // namespace moekit
