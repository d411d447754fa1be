"""
nanoGPT's configurator, made strict. A script keeps its settings as module-level globals and calls

    configure(globals(), sys.argv[1:])

Each argument is either a config file (plain Python assignments, run in a scratch namespace) or
--key=value (value parsed as a Python literal, else taken as a string). Every key, from a file or
from the command line, must already be a global of the script and keep its type (an int may stand
for a float); anything else stops the run with a one-line error naming the key.
"""
import sys
import types
from ast import literal_eval

_NOT_SETTINGS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def _coerce(key, value, default, source):
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and value is not None and type(value) is not type(default):
        sys.exit(f"error: config key {key!r} from {source} must be {type(default).__name__}, "
                 f"got {type(value).__name__} {value!r}")
    return value


def _is_setting(config, key):
    return key in config and not key.startswith("_") and not isinstance(config[key], _NOT_SETTINGS)


def _set(config, key, value, source):
    if not _is_setting(config, key):
        sys.exit(f"error: unknown config key {key!r} from {source}")
    config[key] = _coerce(key, value, config[key], source)


def configure(config, argv):
    for arg in argv:
        if not arg.startswith("--"):
            try:
                code = open(arg).read()
            except OSError:
                sys.exit(f"error: config file {arg!r} not found")
            scratch = {}
            exec(compile(code, arg, "exec"), scratch)
            for key, value in scratch.items():
                if not key.startswith("_") and not isinstance(value, _NOT_SETTINGS):
                    _set(config, key, value, arg)
            continue
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            sys.exit(f"error: expected --key=value, got {arg!r}")
        try:
            value = literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw
        _set(config, key, value, "the command line")


def check_choices(config, choices):
    """A one-line error for the first setting whose value is not among its choices {name: allowed}."""
    for name, allowed in choices.items():
        if config[name] not in allowed:
            sys.exit(f"error: {name}={config[name]!r} is not one of {', '.join(allowed)}")
