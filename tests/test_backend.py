"""The backend switch: one module decides NumPy or CuPy, asking for CuPy where it can't run is an error."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import tinymixer as tm
from tinymixer import backend


def test_environment_variable_chooses_numpy(monkeypatch):
    monkeypatch.setattr(backend, "_backend", None)  # as in a fresh process
    monkeypatch.setenv("TINYMIXER_BACKEND", "numpy")
    assert tm.get_backend() is np and tm.backend_name() == "numpy"


def no_gpu(monkeypatch) -> None:
    """As on a machine where CuPy does not import (whatever this one has: a GPU, or the stand-in)."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_load_cupy", lambda: (None, f"CuPy does not import (ImportError: no module named "
                                                             f"'cupy'). {backend.INSTALL_HINT}"))


def test_auto_without_gpu_is_numpy(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setattr(backend, "_backend", None)
    monkeypatch.setenv("TINYMIXER_BACKEND", "auto")
    assert tm.get_backend() is np


def test_unknown_backend_name_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="numpy, cupy, auto"):
        tm.set_backend("tensorflow")
    monkeypatch.setattr(backend, "_backend", None)
    monkeypatch.setenv("TINYMIXER_BACKEND", "jax")
    with pytest.raises(ValueError, match=r"\$TINYMIXER_BACKEND: unknown backend 'jax'"):  # where it came from
        tm.get_backend()
    with pytest.raises(ValueError, match="a backend is named by a string"):
        tm.set_backend(None)


def test_asking_for_cupy_without_gpu_is_a_clear_error(monkeypatch):
    no_gpu(monkeypatch)
    with pytest.raises(RuntimeError, match=r"backend 'cupy' was requested but .*set_backend\('numpy'\)"):
        tm.set_backend("cupy")


def test_host_device_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(tm.to_host(tm.to_device(x)), x)
    assert tm.to_device(x, dtype=np.float32).dtype == np.float32
    assert tm.array_module(x) is np
    tm.synchronize()  # a no-op on NumPy


def test_no_module_but_backend_imports_cupy():
    package = pathlib.Path(tm.__file__).parent
    offenders = [p.name for p in package.glob("*.py")
                 if p.name != "backend.py" and re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)]
    assert offenders == []


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=os.environ if env is None else env, capture_output=True,
                          text=True, timeout=120)


def test_import_changes_nothing_in_the_process():
    """Importing the package, its facade's names and its modules sets no environment variable and tunes nothing;
    ``import tinymixer`` alone does not even load NumPy (so that tune_host() can come before it)."""
    code = ("import os, sys; before = dict(os.environ)\n"
            "import tinymixer as tm\n"
            "print('numpy' in sys.modules)\n"
            "tm.MlpMixer, tm.SGD, tm.pretrained, tm.set_backend\n"
            "import tinymixer.training.train, tinymixer.trainer.setup, tinymixer.transfer.weights\n"
            "import tinymixer.tools.bench, tinymixer.tools.selfcheck\n"
            "print(dict(os.environ) == before, tm.host_tuning() == {'blas_threads_sleep': False, "
            "'keeps_freed_memory': False}, tm.KEEPS_FREED_MEMORY)\n")
    out = run_python(code)
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stdout + out.stderr


@pytest.mark.parametrize("name", ["OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME"])
def test_tune_host_asks_blas_threads_to_sleep_but_keeps_a_user_setting(name):
    def value_after_tuning(env):
        code = f"import os, tinymixer as tm; tm.tune_host(); import numpy; print(os.environ[{name!r}])"
        return run_python(code, env).stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != name}
    assert value_after_tuning(env) == tm.BLAS_THREADS_SLEEP_AT_ONCE[name]
    assert value_after_tuning(env | {name: "20"}) == "20"


def test_tune_host_after_numpy_says_the_blas_settings_came_too_late():
    env = {k: v for k, v in os.environ.items() if k not in tm.BLAS_THREADS_SLEEP_AT_ONCE}
    code = ("import os, numpy, tinymixer as tm; done = tm.tune_host()\n"
            "print(done['blas_threads_sleep'], 'OPENBLAS_THREAD_TIMEOUT' in os.environ)")
    out = run_python(code, env)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
    child = tm.util.host.tuned_environment(env)  # what the benchmarks give their workers instead
    assert all(child[k] == v for k, v in tm.BLAS_THREADS_SLEEP_AT_ONCE.items())


PROGRAMS = ["examples/cifar10.py", "examples/predict.py", "examples/fewshot.py", "experiments/compute.py",
            "experiments/data_size.py", "experiments/permutations.py", "experiments/token_weights.py"]


@pytest.mark.parametrize("program", ["import tinymixer as tm; tm.tune_host(); import numpy", *PROGRAMS])
def test_programs_tune_the_host_before_numpy_loads(program):
    """The BLAS settings only work if set before NumPy loads its BLAS: every program calls tm.tune_host() before
    anything imports NumPy (a spy on the import of NumPy reads the environment at that moment)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    if program.endswith(".py"):
        path = root / program
        program = (f"import sys; sys.path.insert(0, {str(path.parent)!r}); import runpy; "
                   f"runpy.run_path({str(path)!r}, run_name='imported')")
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'numpy' and 'numpy' not in sys.modules:\n"
            "        import os; print('KMP_BLOCKTIME' in os.environ and 'OPENBLAS_THREAD_TIMEOUT' in os.environ)\n"
            "    return real(name, *a, **k)\n"
            f"builtins.__import__ = spy\n{program}\n")
    env = {k: v for k, v in os.environ.items() if k not in tm.BLAS_THREADS_SLEEP_AT_ONCE}
    out = run_python(code, env)
    assert out.stdout.split() == ["True"], out.stdout + out.stderr


def test_every_program_is_checked_for_tuning():
    root = pathlib.Path(__file__).resolve().parents[1]
    calling = sorted(str(p.relative_to(root)) for folder in ("examples", "experiments")
                     for p in (root / folder).glob("*.py") if "tm.tune_host()" in p.read_text())
    assert calling == sorted(PROGRAMS)


def test_keep_freed_host_memory_on_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert tm.keep_freed_host_memory() is True


@pytest.mark.parametrize(("env", "kept"), [({}, True), ({"TINYMIXER_KEEP_FREED_MEMORY": "0"}, False),
                                           ({"TINYMIXER_KEEP_FREED_MEMORY": "1"}, True),
                                           ({"TINYMIXER_KEEP_MALLOC": "1"}, False)])  # the old, backwards name
def test_keep_freed_memory_variable_says_what_it_does(env, kept):
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYMIXER_KEEP")}
    out = run_python("import tinymixer as tm; tm.tune_host(); print(tm.KEEPS_FREED_MEMORY)", {**clean, **env})
    assert out.stdout.split() == [str(kept)], out.stdout + out.stderr
    assert ("renamed" in out.stderr) == ("TINYMIXER_KEEP_MALLOC" in env)


def test_every_module_is_reachable_as_an_attribute_after_import_tinymixer():
    """With the lazy facade, `tm.nn.layers`, `tm.training.train` (...) still work after a plain `import tinymixer`:
    each subpackage gives its modules on first use; an unknown name is an AttributeError."""
    code = ("import tinymixer as tm\n"
            "print(tm.nn.layers.dense_forward.__name__, tm.training.train.train_step.__name__, "
            "tm.transfer.weights.pretrained.__name__, tm.data.pipeline.training_batch.__name__, "
            "tm.util.host.tune_host.__name__, tm.trainer.options.parse_args.__name__)\n"
            "try:\n    tm.nn.no_such_module\nexcept AttributeError as error:\n    print('AttributeError', error)\n")
    out = run_python(code)
    assert out.stdout.splitlines() == ["dense_forward train_step pretrained training_batch tune_host parse_args",
                                       "AttributeError module 'tinymixer.nn' has no attribute 'no_such_module'"], \
        out.stdout + out.stderr


def test_a_module_whose_own_import_fails_says_so_rather_than_being_missing(tmp_path, monkeypatch):
    """tinymixer/_lazy.py: a module that exists but fails to import raises its own error, not an AttributeError
    that would hide it."""
    package = tmp_path / "lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from tinymixer._lazy import submodules\n__getattr__ = submodules(__name__)\n")
    (package / "good.py").write_text("VALUE = 1\n")
    (package / "broken.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazy_pkg

    assert lazy_pkg.good.VALUE == 1
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        lazy_pkg.broken  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'absent'"):
        lazy_pkg.absent  # noqa: B018
    with pytest.raises(AttributeError):
        lazy_pkg.__wrapped__  # noqa: B018 - dunder look-ups are never modules
