"""Write ``cupy_api.json``: the names and keywords the installed CuPy exposes, read from the package itself.

    python tests/cupy_standin/make_snapshot.py            # in an environment with CuPy (no GPU needed)

The stand-in (``tests/cupy_standin/cupy``) exposes only what this snapshot lists, so code that passes on it uses no
name and no keyword that real CuPy lacks. ``tests/test_cupy_standin.py`` regenerates the snapshot wherever CuPy is
installed and compares it with the committed one.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("cupy_api.json")
SUBMODULES = ["lib.stride_tricks", "random", "linalg"]  # besides the top level


def parameters(obj: Any) -> dict[str, Any] | None:
    """{"params": [names], "var_keyword": bool} from the signature, or from a Cython docstring's first line
    ("ndarray.sum(self, axis=None, ...) -> ..."); None when neither says."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = [p.name for p in sig.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
        var_keyword = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        return {"params": params, "var_keyword": var_keyword}
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"^[\w.]+\((.*)\)", doc[0]) if doc else None
    if not match:
        return None
    params, var_keyword = [], False
    for part in (p.strip() for p in match[1].split(",") if p.strip()):
        if part.startswith("**"):
            var_keyword = True
        elif not part.startswith("*") and part.split("=")[0].strip() != "self" and part != "/":
            params.append(part.split("=")[0].strip())
    return {"params": params, "var_keyword": var_keyword}


def describe(obj: Any) -> dict[str, Any]:
    kind = type(obj).__name__
    if kind == "ufunc":
        return {"kind": "ufunc", "nin": obj.nin, "nout": obj.nout}
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if isinstance(obj, type):
        return {"kind": "type"}
    if callable(obj):
        return {"kind": "function", **(parameters(obj) or {"params": None, "var_keyword": True})}
    return {"kind": "value"}


def snapshot(cupy: Any) -> dict[str, Any]:
    def namespace(module: Any) -> dict[str, Any]:
        return {name: describe(getattr(module, name)) for name in sorted(dir(module)) if not name.startswith("_")}

    modules = {"": namespace(cupy)}
    for path in SUBMODULES:
        module = cupy
        for part in path.split("."):
            module = getattr(module, part)
        modules[path] = namespace(module)
    ndarray = {}
    for name in sorted(dir(cupy.ndarray)):
        if name.startswith("_") and name not in ("__array__", "__bool__", "__float__", "__int__", "__complex__",
                                                 "__len__", "__iter__", "__index__"):
            continue
        attribute = inspect.getattr_static(cupy.ndarray, name)
        is_method = callable(getattr(cupy.ndarray, name)) and not isinstance(attribute, property) and \
            type(attribute).__name__ not in ("getset_descriptor", "member_descriptor")
        ndarray[name] = ({"kind": "method", **(parameters(getattr(cupy.ndarray, name))
                                               or {"params": None, "var_keyword": True})}
                         if is_method else {"kind": "attribute"})
    return {"cupy_version": cupy.__version__, "modules": modules, "ndarray": ndarray,
            "ufunc_keywords": ["out", "dtype", "casting"]}


def main() -> int:
    import cupy  # the real one: run this where CuPy is installed

    SNAPSHOT.write_text(json.dumps(snapshot(cupy), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} (CuPy {cupy.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
