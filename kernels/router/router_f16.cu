// Router kernel instantiations for __half logits (see router_launch.cuh).
#include "router/router_launch.cuh"

namespace moekit {
namespace router {
MOEKIT_ROUTER_INSTANTIATE(__half)
}  // namespace router
}  // namespace moekit
