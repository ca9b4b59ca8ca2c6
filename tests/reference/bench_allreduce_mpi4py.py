#!/usr/bin/python3
"""bvllm_bench's allreduce_cpu done through mpi4py: f32 sum all-reduce of 1, 4, 16, 64 and 256 MB
with comm.Allreduce(MPI.IN_PLACE, ...) on numpy float32 buffers (the buffer protocol: mpi4py calls
MPI_Allreduce on the array's memory, no copy), timed as allreduce_cpu times it: all ranks leave a
barrier, each times its call, and the slowest rank's time is the operation's. busbw follows
nccl-tests: algbw * 2(n-1)/n. One JSON line per size, printed by rank 0.

    mpirun -np 2 --oversubscribe --allow-run-as-root /usr/bin/python3 \\
        tests/reference/bench_allreduce_mpi4py.py --iters 10

Needs mpi4py (Debian: apt-get install -y python3-mpi4py; tools/setup.sh installs it).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
from mpi4py import MPI


def busbw_gbps(nbytes, ms, ranks):
    return nbytes / (ms * 1e6) * 2.0 * (ranks - 1) / ranks if ms > 0 else 0.0


def slowest_ms(comm, op):
    comm.Barrier()
    start = time.perf_counter()
    op()
    ms = (time.perf_counter() - start) * 1e3
    return comm.allreduce(ms, op=MPI.MAX)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes-mb", default="1,4,16,64,256")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    ranks = comm.Get_size()
    for mb in (int(s) for s in args.sizes_mb.split(",")):
        nbytes = mb << 20
        buf = np.full(nbytes // 4, comm.Get_rank() + 1, dtype=np.float32)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        expected = ranks * (ranks + 1) / 2
        assert buf[0] == expected and buf[-1] == expected, f"{mb} MB: sum {buf[0]}, expected {expected}"
        buf.fill(0.0)  # as allreduce_cpu: sums of zeros stay zeros however many iterations run
        op = lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # noqa: E731
        for _ in range(args.warmup):
            slowest_ms(comm, op)
        ms = [slowest_ms(comm, op) for _ in range(args.iters)]
        if comm.Get_rank() == 0:
            median, best = statistics.median(ms), min(ms)
            print(json.dumps({
                "case": "allreduce_cpu_mpi4py",
                "median_ms": median,
                "min_ms": best,
                "iters": len(ms),
                "mb": mb,
                "bytes": nbytes,
                "ranks": ranks,
                "algbw_GBps": nbytes / (median * 1e6),
                "busbw_GBps": busbw_gbps(nbytes, median, ranks),
                "best_busbw_GBps": busbw_gbps(nbytes, best, ranks),
                "load_avg": os.getloadavg()[0],
                "mpi4py": __import__("mpi4py").__version__,
                "mpi": MPI.Get_library_version().splitlines()[0].rstrip("\x00"),
            }), flush=True)


if __name__ == "__main__":
    main()
