"""
nanoGPT's configurator, made strict. A script keeps its settings as module-level globals and calls

    configure(globals(), sys.argv[1:])

Each argument is either a config file or --key=value (value parsed as a Python literal, else taken as a
string). A config file holds settings, NAME = value, one per line; a name starting with _ is the file's
own arithmetic (config/maze.py's _iters_per_epoch), and exec(open("config/other.py").read()) includes
another config file first. Any other statement (an annotation such as `max_iters: 7`, an import, a
comparison, a syntax error) stops the run with a one-line error naming the file and the line. Every key, from a file or
from the command line, must already be a global of the script and keep its type (an int may stand
for a float); anything else stops the run with a one-line error naming the key. --help (or -h)
prints the first paragraph of the script's docstring and its settings with their defaults.

Bad input (a wrong key, a missing file, a vocabulary mismatch) raises InputError with a one-line
message, in the scripts and in every function they share; a script's entry point, run(main), prints
it as `error: ...` and exits with status 1. So a notebook or a fork calling those functions gets an
exception it can catch, never a SystemExit.
"""
import ast
import dataclasses
import io
import os
import signal
import sys
import time
import tokenize
import types
from ast import literal_eval

_NOT_SETTINGS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


class InputError(Exception):
    """Bad input from the user; the message is one line naming the problem."""


def _interrupted_at_start(signum, frame):
    """Ctrl-C before a script's run(main) has started (while it imports torch): one line and status 130, as
    run() gives. It exits at once rather than raising KeyboardInterrupt, which torch's import may meet inside
    C++ code that cannot pass it on (the process would abort)."""
    sys.stderr.write("interrupted: nothing was written; run the command again\n")
    os._exit(130)


# Set when a script (here or in scripts/) imports this module, which each script does first, before torch;
# run() hands Ctrl-C back to Python. A program that merely imports the library (pytest, a notebook) keeps its own.
_here = os.path.dirname(os.path.abspath(__file__))
_main_file = getattr(sys.modules["__main__"], "__file__", None)
if (_main_file and os.path.dirname(os.path.abspath(_main_file)) in (_here, os.path.join(_here, "scripts"))
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # not where the shell ignores it
    signal.signal(signal.SIGINT, _interrupted_at_start)


def run(main, interrupted="nothing was written; run the command again"):
    """A script's entry point: main() (an int it returns is the exit status), with one line on stderr instead
    of a traceback for what the user can mend: an InputError (`error: ...`, status 1) and Ctrl-C
    (`interrupted: ...`, status 130; `interrupted` says what was kept and how to go on). Under torchrun only
    rank 0 prints the line; every rank exits with the status."""
    if signal.getsignal(signal.SIGINT) is _interrupted_at_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = main()
    except InputError as e:
        status, line = 1, f"error: {e}"
    except KeyboardInterrupt:
        status, line = 130, f"interrupted: {interrupted}"
    else:
        sys.exit(status if isinstance(status, int) else 0)
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    else:  # the other ranks meet the same error: leave rank 0 the time to print it before torchrun stops it
        time.sleep(2)
    sys.exit(status)


def _coerce(key, value, default, source):
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and value is not None and type(value) is not type(default):
        raise InputError(f"config key {key!r} from {source} must be {type(default).__name__}, "
                         f"got {type(value).__name__} {value!r}")
    return value


def _is_setting(config, key):
    """A global the user may set: not private, not a module, function or class, and not a constant
    (ALL_CAPS names of two or more letters, like SAMPLERS; a one-letter name like K is a setting)."""
    constant = key.isupper() and len(key) > 1
    return key in config and not key.startswith("_") and not constant and not isinstance(config[key], _NOT_SETTINGS)


def _set(config, key, value, source):
    if not _is_setting(config, key):
        raise InputError(f"unknown config key {key!r} from {source} (--help lists the keys)")
    config[key] = _coerce(key, value, config[key], source)


def _comments(path):
    """{name: the comment beside its module-level assignment in the source file at path, with the indented comment
    lines that follow it}: what a setting means, as the script says it."""
    try:
        source = open(path).read()
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    comments = {t.start[0]: t.string.lstrip("# ") for t in tokens if t.type == tokenize.COMMENT}
    lines, found = source.splitlines(), {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.lineno in comments:
            text, after = [comments[node.lineno]], node.end_lineno
            while after < len(lines) and lines[after][:1].isspace() and lines[after].lstrip().startswith("#"):
                text.append(comments[after + 1])
                after += 1
            found[node.targets[0].id] = " ".join(text)
    return found


def usage(config):
    """The first paragraph of the script's docstring, then every setting with its current value and, below it,
    the comment beside it in the script (what it means)."""
    about = (config.get("__doc__") or "").strip().split("\n\n")[0]
    meaning = _comments(config.get("__file__"))
    keys = "\n".join(f"  --{key}={config[key]!r}" + (f"\n      {meaning[key]}" if key in meaning else "")
                     for key in config if _is_setting(config, key))
    return f"{about}\n\nSettings: config files (python assignments), then --key=value, in order:\n{keys}"


def _included(node):
    """The path P of a statement exec(open(P).read()), the one way a config file includes another; else None."""
    match node:
        case ast.Expr(ast.Call(ast.Name("exec"), [ast.Call(ast.Attribute(ast.Call(ast.Name("open"), [ast.Constant(str(path))]),
                                                                         "read"), [])])):
            return path
    return None


def _check_config_file(path, lines, seen=()):
    """Every statement of a config file (and of the files it includes) must be a setting (NAME = value), a
    docstring or an include; lines collects where each name is set: {name: "file:line"}."""
    try:
        source = open(path).read()
    except OSError:
        raise InputError(f"config file {path!r} not found") from None
    try:
        tree = ast.parse(source, path)
    except SyntaxError as e:
        raise InputError(f"{path}:{e.lineno}: {e.msg} (a config file holds NAME = value lines)") from None
    for node in tree.body:
        where = f"{path}:{node.lineno}"
        if (include := _included(node)) is not None:
            if include in seen:
                raise InputError(f"{where}: {include} includes itself")
            _check_config_file(include, lines, (*seen, path))
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            lines.update({t.id: where for t in node.targets})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            raise InputError(f"{where}: {ast.unparse(node)!r} is an annotation, not a setting: write {node.target.id} = ...")
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            raise InputError(f"{where}: {ast.unparse(node).splitlines()[0]!r} is not a setting (NAME = value)")


def _read_config_file(config, path):
    lines = {}
    _check_config_file(path, lines)
    scratch = {}
    try:
        exec(compile(open(path).read(), path, "exec"), scratch)
    except Exception as e:  # a value that does not compute: 1 / 0, an unknown name
        raise InputError(f"{path}: {type(e).__name__}: {e}") from None
    settings = {key: value for key, value in scratch.items() if not key.startswith("_") and not isinstance(value, _NOT_SETTINGS)}
    for key, value in settings.items():
        _set(config, key, value, lines.get(key, path))
    return set(settings)


def configure(config, argv):
    """Apply argv (config files and --key=value, in order) to the settings in config; returns the names set."""
    given = set()
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage(config))
            sys.exit(0)
        if not arg.startswith("--"):
            given |= _read_config_file(config, arg)
            continue
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            raise InputError(f"expected --key=value, got {arg!r} (--help lists the keys)")
        try:
            value = literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw
        if isinstance(config.get(key), str) and not isinstance(value, str):  # a text setting keeps the text
            value = raw                                                      # as typed: --prompt=[...], --name=42
        _set(config, key, value, "the command line")
        given.add(key)
    return given


def pick(cls, settings, **given):
    """The dataclass cls (model.ModelConfig, interpolant.LossConfig, sampler.SamplerConfig) from a script's
    settings: each field from the setting of its name, unless given; a field the settings lack keeps its
    default (the config of an older checkpoint). One list of fields, so every script that builds a model,
    a loss or a sampler from its settings builds the same one."""
    names = {f.name for f in dataclasses.fields(cls)} - set(given)
    return cls(**{k: settings[k] for k in names if k in settings}, **given)


RANGES = {">0": (lambda v: v > 0, "> 0"), ">=0": (lambda v: v >= 0, ">= 0"),
          "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"), "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def check_ranges(config, rules):
    """An InputError for the first setting outside its range, rules {name: one of RANGES}, naming the key, its
    value and the rule."""
    for name, rule in rules.items():
        within, says = RANGES[rule]
        if not within(config[name]):
            raise InputError(f"{name}={config[name]!r} must be {says}")


def check_choices(config, choices):
    """An InputError for the first setting whose value is not among its choices {name: allowed}."""
    for name, allowed in choices.items():
        if config[name] not in allowed:
            raise InputError(f"{name}={config[name]!r} is not one of {', '.join(allowed)}")


def check_device(device):
    """An InputError unless this torch build can run on device ('cpu', 'cuda', 'cuda:1', 'mps')."""
    import torch
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        built = "has no GPU visible" if torch.backends.cuda.is_built() else "was built without CUDA (a CPU build)"
        raise InputError(f"device {device!r} is not available: this torch {torch.__version__} {built}; use --device=cpu")
    index = device.partition(":")[2]
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise InputError(f"device {device!r} is not one of cpu, cuda, cuda:N, mps")
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r} is not available on this machine; use --device=cpu")


def init_distributed(device):
    """Under torchrun, join the process group (nccl on CUDA, gloo on CPU) and take this process's
    GPU. Returns (ddp, rank, local_rank, world, device of this process)."""
    import torch
    import torch.distributed as dist
    # torch.distributed.nn.functional's collectives take `group=group.WORLD` as a default argument, evaluated
    # when the module is first imported. DDP's constructor imports it (through torch._dynamo); imported after
    # init_process_group, it kept the live default group for good, so destroy_process_group could not free it:
    # its gloo threads lived on into interpreter exit, where their teardown now and then aborted a run that had
    # finished ("terminate called without an active exception", SIGABRT, the whole torchrun job failed).
    # Imported before the group exists, those defaults hold None.
    import torch.distributed.nn  # noqa: F401
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, device
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, local_rank, world = dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()
    dev = f"cuda:{local_rank}" if device.startswith("cuda") else device
    if device.startswith("cuda"):
        torch.cuda.set_device(dev)
    return True, rank, local_rank, world, dev
