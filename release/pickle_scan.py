"""What a checkpoint's pickles ask for, read without running them.

A zip checkpoint's records are checked against their CRC-32 first (a flipped bit is a damaged
file, never a released model); then every pickle in the file is read opcode by opcode
(pickletools: nothing is imported or called) for the globals it names. A file naming one that runs
commands or code is refused by that name, before torch.load sees it.
"""

from __future__ import annotations

from pathlib import Path

from release.errors import CheckpointError

# Globals no training run pickles: loading a file that names one runs a command, code or I/O.
# Module roots: every name in them is refused; builtins and a few others: the names listed.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "pty", "shutil", "socket", "_socket", "ssl",
    "runpy", "importlib", "imp", "ctypes", "_ctypes", "webbrowser", "commands", "popen2", "multiprocessing",
    "pdb", "bdb", "code", "codeop", "marshal", "pickle", "_pickle", "dill", "cloudpickle", "sys", "asyncio",
    "urllib", "urllib2", "http", "httplib", "ftplib", "smtplib", "telnetlib", "requests", "timeit", "cProfile",
    "profile", "trace", "pydoc", "signal", "operator", "_operator", "sysconfig", "distutils", "pip",
})
DANGEROUS_NAMES = frozenset(
    {f"{b}.{n}" for b in ("builtins", "__builtin__") for n in (
        "eval", "exec", "execfile", "compile", "__import__", "getattr", "setattr", "delattr", "open", "file",
        "input", "breakpoint", "globals", "locals", "vars", "reload", "apply", "exit", "quit", "help")}
    | {"io.open", "_io.open", "io.FileIO", "_io.FileIO", "numpy.testing._private.utils.runstring",
       "types.FunctionType", "types.CodeType", "types.LambdaType", "types.MethodType", "types.ModuleType",
       "torch.load", "torch.hub.load", "torch.hub.load_state_dict_from_url", "torch.serialization.load"})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                         "SHORT_BINSTRING"})
_NO_PUSH = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "PROTO", "FRAME", "STOP", "POP", "POP_MARK"})
HIDDEN = "(a callable whose name the file hides)"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def check_container(path: Path, head: bytes, trusted: bool = False) -> list[str]:
    """The globals the file's pickles name, after checking a zip's CRCs; refuses what runs commands."""
    import zipfile
    import zlib

    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every record and compares it with its stored CRC-32
                if bad is not None:
                    raise CheckpointError(
                        f"{path}: the file is damaged: the bytes of its record '{bad}' do not match the checksum "
                        f"stored with them (changed on disk or in transfer). Copy it again from where it was "
                        f"trained.")
                pickles = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: the file is truncated or damaged "
                                  f"({first_line(exc)}). Copy it again.") from None
        if not pickles:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: a zip file without the data.pkl "
                                  f"a torch.save archive holds. Check source.checkpoint.")
        names = []
        for data in pickles:
            found = _globals_of(data)
            if found is None:
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: its pickle is malformed. "
                                      f"The file may be damaged: copy it again.")
            names += found
    else:
        names = _legacy_globals(path)
    dangerous = [n for n in dict.fromkeys(names) if _is_dangerous(n, trusted)]
    if dangerous:
        shown = " and ".join(_display(n) for n in dangerous[:3]) + (
            f" (and {len(dangerous) - 3} more)" if len(dangerous) > 3 else "")
        raise CheckpointError(f"{path}: this file asks to run {shown} when loaded: it is not a checkpoint a training "
                              f"run writes; do not load it. It was not loaded. Get the checkpoint again from its "
                              f"training run.")
    return names


def _legacy_globals(path: Path) -> list[str]:
    """A non-zip file: a plain pickle, or torch's legacy format (five pickles, then raw storage bytes)."""
    names: list[str] = []
    with open(path, "rb") as handle:
        for index in range(5):
            found = _globals_of(handle)
            if found is None:
                if index == 0:
                    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: it starts like a pickle but "
                                          f"is malformed. The file may be damaged: copy it again.")
                break
            names += found
    return names


def _globals_of(data) -> list[str] | None:
    """'module.name' of every global a pickle asks for, read opcode by opcode (nothing is executed);
    None when it is not a well-formed pickle."""
    import pickletools

    found: list[str] = []
    memo: dict = {}
    pushed: list = []  # the last two values pushed: STACK_GLOBAL's module and name
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "PROTO" and arg > 5:
                return None
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                module, attr = ([None, None] + pushed)[-2:]
                found.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else HIDDEN)
            if name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name not in _NO_PUSH:
                pushed.append(arg if name in _STRING_OPS else None)
            del pushed[:-2]
    except Exception:  # pickletools raises ValueError and friends on malformed input
        return None
    return found


# Seen in pickles of real model objects (bound methods, enum members, functools.partial of an
# itemgetter): refused in a file that is not trusted, accepted in one that is.
TRUSTED_OK = frozenset({"builtins.getattr", "__builtin__.getattr", "types.MethodType"})
TRUSTED_OK_MODULES = frozenset({"operator", "_operator"})


def _is_dangerous(name: str, trusted: bool = False) -> bool:
    if trusted and (name in TRUSTED_OK or name.split(".")[0] in TRUSTED_OK_MODULES):
        return False
    return name == HIDDEN or name in DANGEROUS_NAMES or name.split(".")[0] in DANGEROUS_MODULES


def _display(name: str) -> str:
    module, _, attr = name.rpartition(".")
    # os.system pickles as posix.system (nt.system on Windows); builtins as __builtin__ in protocol 2
    return f"os.{attr}" if module in ("posix", "nt") else f"builtins.{attr}" if module == "__builtin__" else name
