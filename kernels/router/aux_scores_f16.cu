// The aux-loss scores' launch switch (launch.cuh) instantiated for __half logits: apart from the
// router's instantiations, so that the build compiles them in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_aux_forward<__half>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_aux_backward<__half>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
