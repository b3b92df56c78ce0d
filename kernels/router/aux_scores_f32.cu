// The aux-loss scores' launch switch (launch.cuh) instantiated for float logits: apart from the
// router's instantiations, so that the build compiles them in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_aux_forward<float>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_aux_backward<float>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
