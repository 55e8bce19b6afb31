"""Phase two's first half: find every handler the config can name.

A handler is any function whose name ends in ``handler`` (any case) in a module listed
under ``import:`` or in a ``.py`` file of the ``handlers/`` folder beside config.yaml.
The standard handlers are always there; the Node package names in ``import:`` map to
them so a Node config.yaml loads unchanged. Later sources win over earlier ones.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigIssue
from .config import ApiConfig, ImportSpec
from .stdhandlers import standard_handlers

__all__ = ["NODE_PACKAGES", "discover_handlers", "handlers_of"]

#: Node handler packages whose standard handlers this package provides itself.
NODE_PACKAGES = frozenset(
    {"configurapi-handler-http", "configurapi-handler-json", "configurapi-handler-ws"}
)
_generation = itertools.count()

Handler = Callable[..., Any]


def handlers_of(module: ModuleType) -> dict[str, Handler]:
    """The module's public functions whose names end in 'handler'."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    found: dict[str, Handler] = {}
    for name in names:
        obj = getattr(module, name, None)
        if name.lower().endswith("handler") and (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            found[name] = obj
    return found


def _load_file(path: Path, generation: int) -> ModuleType:
    """Executes a handler file as a fresh module, so a reload sees its new code.

    Compiled from the source every time: Python's ``__pycache__`` trusts a file whose
    size and mtime second did not change, so a quick same-size edit would be missed.
    """
    target = path / "__init__.py" if path.is_dir() else path
    if target.suffix != ".py" and not target.exists():
        target = target.with_name(target.name + ".py")
    name = f"tornado_ws_runner_handlers_{generation}_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, target)
    if spec is None:
        raise ImportError(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(compile(target.read_bytes(), str(target), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(spec: ImportSpec, generation: int, reload: bool) -> ModuleType:
    if spec.is_path:
        return _load_file(Path(spec.target), generation)
    module = importlib.import_module(spec.target)
    return importlib.reload(module) if reload else module


#: Where Python's own modules live: a frame there is no place in the developer's code.
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _failure(exc: BaseException) -> str:
    """The one line that says why a module failed: the exception and its place.

    The place is the last frame in the developer's code, not in this package, the
    import machinery or the standard library (a missing file fails inside pathlib).
    """
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<")
        and frame.filename != __file__
        and not Path(frame.filename).resolve().is_relative_to(_STDLIB)
    ]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def discover_handlers(
    config: ApiConfig, reload: bool = False
) -> tuple[dict[str, Handler], list[ConfigIssue]]:
    """Every handler the config can use, and the issues met while importing modules."""
    generation = next(_generation)
    handlers: dict[str, Handler] = dict(standard_handlers(config.directory))
    issues: list[ConfigIssue] = []
    for spec in config.imports:
        if spec.target in NODE_PACKAGES:
            continue
        try:
            handlers.update(handlers_of(_import(spec, generation, reload)))
        except Exception as exc:
            issues.append(
                ConfigIssue(spec.key, f"cannot import '{spec.target}': {_failure(exc)}", spec.line)
            )
    folder = config.directory / "handlers"
    if folder.is_dir():
        with _importable(folder):
            for file in sorted(folder.glob("*.py")):
                if file.name.startswith("_"):
                    continue
                try:
                    handlers.update(handlers_of(_load_file(file, generation)))
                except Exception as exc:
                    issue = ConfigIssue(f"handlers/{file.name}", f"cannot load: {_failure(exc)}")
                    issues.append(issue)
    return handlers, issues


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """Handler files may import the other modules of their folder (``import _shared``;
    a name starting with ``_`` is not itself loaded as a handler file). Those modules
    are imported afresh on every load, so a reload sees their new code too."""
    resolved = folder.resolve()
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).resolve().parent == resolved:
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))
