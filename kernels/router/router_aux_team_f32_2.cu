// The router + aux-scores pair's team-rows kernels (launch_pair_team.cuh) for float logits, router kinds
// kSqrtSoftplus kTeamSoftmaxPostF32Packed: a unit of its own so that the build compiles the kinds in parallel.
#include "router/launch_pair_team.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_pair_team<float, kSqrtSoftplus>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
template cudaError_t launch_pair_team<float, kTeamSoftmaxPostF32Packed>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                                  cudaStream_t);
}  // namespace router
}  // namespace moekit
