// Router kernel instantiations for float logits (see router_launch.cuh).
#include "router/router_launch.cuh"

namespace moekit {
namespace router {
MOEKIT_ROUTER_INSTANTIATE(float)
}  // namespace router
}  // namespace moekit
