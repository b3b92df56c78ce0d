// The router + aux-scores pair's launch switch (launch.cuh) instantiated for float logits: apart from
// the single ops' instantiations, so that the build compiles them in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_pair_forward<float>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                               cudaStream_t);
template cudaError_t launch_pair_backward<float>(const BackwardPlan&, const BackwardParams&, const BackwardParams&,
                                                cudaStream_t);
}  // namespace router
}  // namespace moekit
