"""Command line: `python -m moekit info` (works without a GPU and without a loadable library)."""

import argparse
import sys

from . import __version__, get_cmake_dir, get_include_dir, get_library_path


def _cuda_devices():
    """One line per visible CUDA device, via cuda.bindings' driver API; a reason when none."""
    try:
        from cuda.bindings import driver
    except ImportError as error:
        return [f"no CUDA device (cuda.bindings is not installed: {error})"]
    try:
        (error,) = driver.cuInit(0)
        if error != driver.CUresult.CUDA_SUCCESS:
            return [f"no CUDA device ({error.name})"]
        error, driver_version = driver.cuDriverGetVersion()
        error, count = driver.cuDeviceGetCount()
        if error != driver.CUresult.CUDA_SUCCESS or count == 0:
            return ["no CUDA device"]
        major, minor = driver_version // 1000, driver_version % 1000 // 10
        lines = [f"driver: CUDA {major}.{minor}, {count} device(s)"]
        attribute = driver.CUdevice_attribute
        for index in range(count):
            _, device = driver.cuDeviceGet(index)
            _, name = driver.cuDeviceGetName(256, device)
            _, cc_major = driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
            _, cc_minor = driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
            _, memory = driver.cuDeviceTotalMem(device)
            name = name.split(b"\0", 1)[0].decode(errors="replace")
            lines.append(f"  {index}: {name}, sm_{cc_major}{cc_minor}, {memory / 2**30:.1f} GiB")
        return lines
    except Exception as error:  # no driver library at all raises from inside cuda.bindings
        return [f"no CUDA device ({type(error).__name__}: {error})"]


def _info():
    print(f"moekit {__version__}")
    try:
        from . import _lib

        print(f"library: {_lib.library_path}")
        print(f"  version {_lib.lib.moekit_version()}, ABI {_lib.lib.moekit_abi_version()}")
        status = 0
    except ImportError as error:
        print(f"library: not loadable: {error}")
        status = 1
    print(f"include: {get_include_dir()}")
    print(f"cmake:   {get_cmake_dir()}")
    print("CUDA:    " + "\n".join(_cuda_devices()))
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moekit", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("info", help="version, library path, ABI, visible CUDA devices")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
