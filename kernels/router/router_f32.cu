// The router's launch switch (launch.cuh) instantiated for float logits: one source per dtype, so
// that the build compiles the dtypes in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_forward<float>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_backward<float>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
