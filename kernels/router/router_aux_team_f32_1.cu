// The router + aux-scores pair's team-rows kernels (launch_pair_team.cuh) for float logits, router kinds
// kSoftmaxPre kSoftmaxPost kSigmoid: a unit of its own so that the build compiles the kinds in parallel.
#include "router/launch_pair_team.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_pair_team<float, kSoftmaxPre>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
template cudaError_t launch_pair_team<float, kSoftmaxPost>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
template cudaError_t launch_pair_team<float, kSigmoid>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
}  // namespace router
}  // namespace moekit
