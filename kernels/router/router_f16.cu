// The router's launch switch (launch.cuh) instantiated for __half logits: one source per dtype, so
// that the build compiles the dtypes in parallel.
#include "router/launch.cuh"

namespace moekit {
namespace router {
template cudaError_t launch_forward<__half>(const ForwardPlan&, const ForwardParams&, cudaStream_t);
template cudaError_t launch_backward<__half>(const BackwardPlan&, const BackwardParams&, cudaStream_t);
}  // namespace router
}  // namespace moekit
