// The router + aux-scores pair's launch switch (launch.cuh) instantiated for __nv_bfloat16 logits: apart from
// the single ops' instantiations, so that the build compiles them in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_pair_forward<__nv_bfloat16>(const PairForwardPlan&, const ForwardParams&, const ForwardParams&,
                                               cudaStream_t);
template cudaError_t launch_pair_backward<__nv_bfloat16>(const BackwardPlan&, const BackwardParams&, const BackwardParams&,
                                                cudaStream_t);
}  // namespace router
}  // namespace moekit
