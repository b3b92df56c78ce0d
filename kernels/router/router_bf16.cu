// Router kernel instantiations for __nv_bfloat16 logits (see router_launch.cuh).
#include "router/router_launch.cuh"

namespace moekit {
namespace router {
MOEKIT_ROUTER_INSTANTIATE(__nv_bfloat16)
}  // namespace router
}  // namespace moekit
