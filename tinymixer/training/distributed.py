"""Data-parallel training over processes: MPI (mpi4py) between them, NCCL for GPU arrays. The only module that
imports mpi4py, as ``backend.py`` is the only one that imports CuPy.

The idea, as in ChainerMN, Horovod and PyTorch's DDP: every process (a *rank*) holds the whole model, takes its
share of each global batch, and computes the gradient of its share; the ranks then add their gradients up
(``Allreduce``) so that every rank applies the same update to the same weights. Why this is the one-process
gradient: the loss of a batch of B images is a mean, L = (1/B) sum_i l_i. Split the batch into shards b_r (one per
rank); rank r computes g_r = d/dw [(1/B) sum_{i in b_r} l_i], i.e. the mean over its shard times |b_r| / B, and

    sum_r g_r = d/dw (1/B) sum_r sum_{i in b_r} l_i = dL/dw

exactly, for any split (even shards of unequal size). ``train.run_step`` gets the factor |b_r| / B folded into
dL/dlogits, so the all-reduce is a plain sum and no division pass is needed. The gradients already live in one
contiguous buffer (``MlpMixer.grad_buffer``): one in-place ``Allreduce`` per step, nothing packed or unpacked.

Launch with any MPI launcher: ``mpiexec -n 4 python examples/cifar10.py ...`` (or ``srun``). Without a launcher,
or with one process, ``init()`` returns a ``SingleProcess`` whose operations do nothing, and mpi4py is not even
imported: a run without MPI behaves exactly as before. Started by a launcher with N > 1 processes but without
mpi4py, ``init()`` refuses (N independent runs would write over each other's files).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backend

Array = Any

# Environment variables by which launchers announce the number of processes: MPICH/Hydra and Intel MPI (PMI_SIZE),
# Open MPI (OMPI_COMM_WORLD_SIZE), PMIx-based launchers (PMIX_SIZE isn't standard: PMIX_RANK is), Slurm's srun.
# Before a failing rank aborts the job, the time it leaves the launcher to forward what it just wrote (its error and
# traceback): an abort kills every process, and output still in the launcher's pipes was seen lost on a busy machine.
ABORT_GRACE_SECONDS = 0.5

_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")
_LAUNCHER_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                             "SLURM_LOCALID", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """Data-parallel training cannot start as asked; the message says why and what to do."""


def library_version(text: str) -> str:
    """The MPI library's version line, with its padding squeezed ("MPICH Version:      5.0.2" -> "MPICH 5.0.2")."""
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else "unknown version"
    return line.replace(" Version: ", " ").replace(" version: ", " ")


def launched_size() -> int:
    """How many processes the launcher (mpiexec, srun) started, read from its environment; 1 without one."""
    for name in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            if name == "SLURM_NTASKS" and "PMI_RANK" not in os.environ and "PMIX_RANK" not in os.environ:
                continue  # an sbatch allocation, but this process was not started by srun as one of its tasks
            return int(value)
    return 1


_LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


def launched_rank() -> int:
    """This process's rank as the launcher set it in the environment (0 without one): known before MPI starts,
    so that an error found while the options are read is said by rank 0 alone."""
    if launched_size() == 1:
        return 0
    for name in _LAUNCHER_RANK_VARS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class SingleProcess:
    """One process, nothing to communicate: every operation is the identity. The default."""

    rank, size, local_rank, local_size = 0, 1, 0, 1
    name = "single process"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum_(self, buffer: Array) -> Array:
        """Sum ``buffer`` over the ranks, in place, on its device (host or GPU). Returns it."""
        return buffer

    def sum(self, values: Any) -> Any:
        """The sum over ranks of a few numbers (a host scalar or small array): every rank gets it."""
        return values

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a Ctrl-C that reached only some of them)."""
        return flag

    def broadcast_(self, arrays: dict[str, Array]) -> None:
        """Overwrite every rank's arrays with rank 0's, in place."""

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        return obj

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """The ranks' host arrays concatenated in rank order, on every rank."""
        return rows

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int = 1) -> None:
        """End the whole job (every rank) with ``code``."""
        raise SystemExit(code)


class MpiCommunicator(SingleProcess):
    """MPI's COMM_WORLD through mpi4py: host (NumPy) buffers go straight to MPI; GPU buffers go through NCCL
    when ``nccl`` is on, else through the host (a copy each way, correct but slow)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI  # the one import of mpi4py in the project
        except ImportError as exc:
            raise DistributedError(
                f"this process was started by an MPI launcher with {launched_size()} processes, but mpi4py does not "
                f"import ({exc}). Install it (pip install 'tinymixer[mpi]'), or run without mpiexec") from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # The ranks on this machine, numbered from 0: which GPU a rank takes, and a name for the machine's share.
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        self.name = f"MPI, {self.size} processes ({library_version(MPI.Get_library_version())})"
        self.nccl = None
        self.threads = share_the_cores(self.local_size)

    def choose_gpu_allreduce(self) -> str:
        """How GPU buffers will be all-reduced, decided by every rank together; returns a line that says which.

        NCCL when every rank has a GPU of its own (on every machine, no more ranks than GPUs: NCCL refuses two
        ranks on one GPU) and every rank has NCCL; otherwise MPI through a host copy of the buffer (a copy each
        way per step: correct, slower)."""
        gpus = backend.device_count()
        own_gpu = self.comm.allreduce(int(self.local_size <= gpus), op=self.MPI.MIN)
        if not own_gpu:
            return (f"{self.local_size} processes on {gpus} GPU(s) here: NCCL needs a GPU per process, so the "
                    f"gradients are all-reduced with MPI through the host")
        try:
            backend.nccl_module()
            have = 1
        except RuntimeError as exc:
            have, why = 0, str(exc)
        if not self.comm.allreduce(have, op=self.MPI.MIN):
            return f"NCCL is not usable on every rank ({why if not have else 'on another rank'}): MPI through the host"
        self.use_nccl()
        return "NCCL for the gradients (one GPU per process)"

    def use_nccl(self) -> None:
        """All-reduce GPU buffers with NCCL (one communicator, set up once from an id that rank 0 broadcasts)."""
        nccl = backend.nccl_module()
        uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.name += f", NCCL {nccl.get_version()} for GPU arrays"

    def allreduce_sum_(self, buffer: Array) -> Array:
        if isinstance(buffer, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        elif self.nccl is not None:
            backend.nccl_allreduce_sum_(self.nccl, buffer)
        else:  # a GPU array without NCCL: through the host
            host = backend.to_host(buffer)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buffer[...] = backend.to_device(host)
        return buffer

    def sum(self, values: Any) -> Any:
        return self.comm.allreduce(values, op=self.MPI.SUM)

    def any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def broadcast_(self, arrays: dict[str, Array]) -> None:
        for name in sorted(arrays):  # the same order on every rank
            value = arrays[name]
            host = backend.to_host(value) if not isinstance(value, np.ndarray) else value
            host = np.ascontiguousarray(host)
            self.comm.Bcast(host, root=0)
            if host is not value:
                value[...] = backend.to_device(host) if not isinstance(value, np.ndarray) else host

    def broadcast_object(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate(self.comm.allgather(rows))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def share_the_cores(processes_here: int) -> int:
    """Threads per process when ``processes_here`` processes share this machine: the usable cores divided among
    them (at least 1), unless the user set a thread count (TINYMIXER_THREADS, OMP_NUM_THREADS, ...). Sets
    TINYMIXER_THREADS (the batch's shards, ``chunks.num_threads``) and the BLAS library's threads to it, so that
    N processes of T threads never ask for more than the cores there are."""
    from ..chunks import THREADS_ENV, num_threads

    if any(os.environ.get(name) for name in (THREADS_ENV, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS")):
        return num_threads()
    threads = max(1, num_threads() // processes_here)
    os.environ[THREADS_ENV] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # stays in force: not used as a context manager
    except ImportError:
        pass
    return threads


_world: SingleProcess | None = None


def init() -> SingleProcess:
    """The communicator of this process (made once): MPI when a launcher started more than one process, else a
    ``SingleProcess`` (mpi4py is then not imported)."""
    global _world
    if _world is None:
        _world = MpiCommunicator() if launched_size() > 1 else SingleProcess()
    return _world


def world() -> SingleProcess:
    """The communicator ``init()`` made (a SingleProcess before that)."""
    return _world if _world is not None else SingleProcess()


def status() -> str:
    """One line for ``python -m tinymixer``: how many processes the launcher started, and whether mpi4py and an
    ``mpiexec`` are there (found without importing mpi4py, which would start MPI)."""
    import importlib.util
    import shutil

    size = launched_size()
    has_mpi4py = importlib.util.find_spec("mpi4py") is not None
    where = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    launcher = shutil.which("mpiexec", path=where)
    return (f"{size} process{'es' * (size != 1)} ({'started by an MPI launcher' if size > 1 else 'no MPI launcher'});"
            f" mpi4py {'installed' if has_mpi4py else 'not installed (pip install tinymixer[mpi])'}, mpiexec "
            f"{launcher or 'not found'}")


def shard_of(batch_size: int, comm: SingleProcess) -> slice:
    """This rank's rows of a global batch: contiguous, as equal as possible, in rank order (so that the ranks'
    rows, concatenated, are the one-process batch)."""
    bounds = np.linspace(0, batch_size, comm.size + 1).astype(int)
    return slice(int(bounds[comm.rank]), int(bounds[comm.rank + 1]))


def run(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a program's ``main`` on every rank and exit with its code.

    An exception of the ``expected`` kinds (errors whose message says it all) ends the program with "error:
    message"; any other prints its traceback. With several ranks, either one also aborts the whole job (MPI_Abort,
    as mpi4py's ``python -m mpi4py`` runner does), because the other ranks may be waiting for this one in an
    all-reduce and would hang forever. ``main`` returning, or raising SystemExit, ends this rank normally: the
    program's exit codes are decisions every rank takes together (a bad option, Ctrl-C, a NaN loss)."""
    try:
        comm = init()  # made here, before main runs: an error anywhere in main must reach every rank
    except DistributedError as error:
        sys.exit(f"error: {error}")
    try:
        code = main()
    except SystemExit:
        raise
    except expected as error:
        if comm.size == 1:
            sys.exit(f"error: {error}")
        print(f"error (rank {comm.rank} of {comm.size}; ending the job): {error}", file=sys.stderr)
        _abort_after_last_words(comm)
        code = 1  # abort ends the job; should it return (a communicator whose abort cannot), this rank fails
    except BaseException:
        if comm.size == 1:
            raise
        print(f"rank {comm.rank} of {comm.size} failed; ending the job:", file=sys.stderr)
        traceback.print_exc()
        _abort_after_last_words(comm)
        code = 1
    sys.exit(code)


def _abort_after_last_words(comm: Any) -> None:
    """Flush this rank's output and give the launcher a moment to forward it, then abort the whole job."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    time.sleep(ABORT_GRACE_SECONDS)
    comm.abort(1)
