"""Memory helpers for Numba kernels: `prefetch` for random reads, `borrow` for arrays that
helpers are handed many times per record.

`prefetch` asks for a cache line before it is needed, so a loop can start the next rows' loads
while it works on this one.

A kernel that reads a random row per record waits on each read in turn when the address of
the next one depends on what it is doing now; issuing `prefetch` for the row a fixed distance
ahead (the address is known from the input alone) keeps several reads in flight. It is only a
hint: it never faults, and an address past the end is not touched (the caller checks bounds).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch", "borrow"]


@intrinsic
def prefetch(typingctx, arr, idx):  # noqa: ANN001, ANN201 (Numba intrinsic)
    """Hint that arr[idx] (1-d, C-contiguous) will be read and written soon (LLVM's
    `llvm.prefetch`, write intent, highest locality). No bounds check: the caller keeps
    0 <= idx < len(arr)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"):
        return None
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, rw = 1 write, locality = 3 keep in all levels, cache type = 1 data)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def borrow(typingctx, arr):  # noqa: ANN001, ANN201 (Numba intrinsic)
    """`arr` without its owner: the same data, shape and strides, no memory-info pointer.

    Numba counts references on an array each time an inlined helper takes it (an atomic
    increment and decrement around the call, which its reference-count pruning does not
    remove inside loops): in the NDJSON scanner that was about 45% of the time (perf: the
    atomics in NRT_incref/NRT_decref). On a borrowed array those calls find no owner and
    return at once. Safe only while something else owns the array: a kernel's *argument* (the
    caller keeps it alive for the call), or an array the kernel allocates and uses again after
    the last borrowed use (the output buffer it returns, say); Numba frees an allocated array
    right after its own last use, so a borrow of it alone would dangle. A borrowed array is
    never returned or stored."""
    if not isinstance(arr, types.Array):
        return None
    sig = arr(arr)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.return_type)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        dst.parent = cgutils.get_null_value(dst.parent.type)
        return dst._getvalue()

    return sig, codegen
