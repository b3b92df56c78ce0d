// The aux-loss scores' launch switch (launch.cuh) instantiated for __nv_bfloat16 logits: apart from the
// router's instantiations, so that the build compiles them in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_aux_forward<__nv_bfloat16>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_aux_backward<__nv_bfloat16>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
