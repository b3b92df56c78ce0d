// The router's launch switch (launch.cuh) instantiated for __nv_bfloat16 logits: one source per dtype, so
// that the build compiles the dtypes in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_forward<__nv_bfloat16>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_backward<__nv_bfloat16>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
