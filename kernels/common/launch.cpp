// The host parts of launch.h.
#include "common/launch.h"

#include <cstdlib>

#include "common/hooks.h"

namespace moekit {

bool pdl_switch() {
  // The one environment switch of the library: it changes when a kernel may start, never a result.
  static const bool from_env = [] {
    const char* v = std::getenv("MOEKIT_PDL");
    if (v == nullptr || *v == '\0') return true;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    return end == v || *end != '\0' || x != 0;  // only a number 0 turns it off
  }();
  int64_t forced = 0;
  if (tuning_overrides().get("pdl", &forced)) return forced != 0;
  return from_env;
}

moekit_status_t check_fits(const char* op, const LaunchShape& s, const DeviceInfo& dev) {
  if (s.smem_bytes > (size_t)dev.max_smem_per_block_optin)
    return fail(MOEKIT_NOT_SUPPORTED, "%s: needs %zu bytes of shared memory per block, device %d allows %d", op,
                s.smem_bytes, dev.device, dev.max_smem_per_block_optin);
  return MOEKIT_SUCCESS;
}

}  // namespace moekit
