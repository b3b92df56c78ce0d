"""The `moekit` command (also `python -m moekit`).

  moekit info                       version, library, ABI, CUDA architectures, GPUs, frameworks
                                    (works without a GPU and without a loadable library)
  moekit check [--ops NAME ...]     every op on random inputs on the GPU against moekit.reference
  moekit bench [--ops NAME ...] [--quick] [--out DIR]
                                    moekit vs torch eager vs torch.compile vs the copy ceiling:
                                    a table, DIR/moekit-bench.json and DIR/moekit-bench.png
"""

import argparse
import ctypes
import importlib.metadata
import importlib.util
import sys

from . import __version__, get_cmake_dir, get_include_dir

FRAMEWORKS = ("torch", "cupy", "jax")


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


def _build_info(lib):
    """The library's moekit_build_info() string ("cuda_archs=90a cuda_runtime=13000"), None if it has none."""
    function = getattr(lib, "moekit_build_info", None)
    if function is None:
        return None
    function.restype, function.argtypes = ctypes.c_char_p, ()
    text = function()
    return text.decode("utf-8", "replace") if text else ""


def _framework_versions():
    """{module: version or 'not installed'}, from the installed distributions' metadata: no import."""
    owners = None
    versions = {}
    for module in FRAMEWORKS:
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "installed")
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            versions[module] = "not installed"
            continue
        if owners is None:
            owners = importlib.metadata.packages_distributions()
        versions[module] = "installed"
        for dist in owners.get(module, ()):
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            versions[module] = version if dist == module else f"{version} ({dist})"
            break
    return versions


def _info():
    print(f"moekit {__version__}")
    try:
        from . import _lib

        print(f"library: {_lib.library_path}")
        version = _lib.lib.moekit_version()
        print(f"  version {version // 10000}.{version // 100 % 100}.{version % 100} ({version}), "
              f"ABI {_lib.lib.moekit_abi_version()}")
        build = _build_info(_lib.lib)
        if build is None:
            print("  CUDA architectures: unknown (this library has no moekit_build_info)")
        else:
            fields = dict(item.split("=", 1) for item in build.split() if "=" in item)
            print(f"  CUDA architectures: {fields.get('cuda_archs', 'unknown')}")
            print(f"  build: {build}")
        status = 0
    except ImportError as error:
        print(f"library: not loadable: {error}")
        status = 1
    print(f"include: {get_include_dir()}")
    print(f"cmake:   {get_cmake_dir()}")
    print("CUDA:    " + "\n".join(_cuda_devices()))
    print("frameworks: " + ", ".join(f"{name} {version}" for name, version in _framework_versions().items()))
    return status


def _no_gpu(command):
    """The reason this machine cannot run `command` on a GPU (one line), None when a device is there."""
    first = _cuda_devices()[0]
    if first.startswith("no CUDA device"):
        return f"moekit {command}: {first}; it runs the ops on a CUDA GPU and cannot run here"
    return None


def _selection(parser, values):
    """--ops values (space or comma separated family or op names), checked against the registry."""
    names = [name for value in values or () for name in value.split(",") if name]
    if names:
        from .bench import families

        try:
            families(names)
        except ValueError as error:
            parser.error(str(error))
    return names


def _run(command, function, *args, **kwargs):
    from .bench.runner import CannotRun

    reason = _no_gpu(command)
    if reason is None:
        try:
            return function(*args, **kwargs)
        except CannotRun as error:
            reason = str(error)
    print(reason, file=sys.stderr)
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="moekit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("info", help="version, library, ABI, CUDA architectures, GPUs, frameworks")
    ops_help = ("families (router, aux_loss, quant, epilogue) or op names, space or comma separated; "
                "default: all")
    check = commands.add_parser("check", help="every op on random inputs on the GPU against moekit.reference",
                                description="Runs every op on small random inputs on the GPU and compares it with "
                                            "moekit.reference: one PASS / FAIL / SKIP line per op. Needs a CUDA "
                                            "GPU and PyTorch; exits 1 if an op fails or there is no GPU.")
    check.add_argument("--ops", nargs="+", metavar="NAME", help=ops_help)
    check.add_argument("--seed", type=int, help="seed of the random inputs (default: a new one, printed)")
    bench = commands.add_parser(
        "bench", help="benchmark: moekit vs torch eager vs torch.compile vs the copy ceiling",
        description="Times every op at several sizes for moekit, torch eager and torch.compile (CUDA-graph "
                    "replay over inputs rotated past L2, median) against the device-to-device copy bandwidth of "
                    "the same run. Prints the table and writes OUT/moekit-bench.json and OUT/moekit-bench.png. "
                    "Needs a CUDA GPU and PyTorch; the plot and the progress bar need the extra "
                    "pip install 'moekit[bench]' (matplotlib, tqdm).")
    bench.add_argument("--ops", nargs="+", metavar="NAME", help=ops_help)
    bench.add_argument("--quick", action="store_true", help="a few cells per family (under 2 minutes on an H100)")
    bench.add_argument("--out", default="moekit-bench", metavar="DIR",
                       help="directory for moekit-bench.json and moekit-bench.png (default: ./moekit-bench)")
    bench.add_argument("--no-compile", action="store_true", help="leave torch.compile out (no compile time)")
    bench.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "check":
        from .bench import runner

        return _run("check", runner.run_check, _selection(check, args.ops), seed=args.seed)
    if args.command == "bench":
        from .bench import runner

        return _run("bench", runner.run_bench, _selection(bench, args.ops), quick=args.quick, out_dir=args.out,
                    compile_=not args.no_compile, draw=not args.no_plot)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
