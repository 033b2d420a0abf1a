"""The layer-norm LSTM's whole loop as one native op, forward and backward (kernels/layer_norm_lstm.cc).

Why: asr.rnn's tf.while_loop runs ~1,040 graph nodes per time step of a 3-layer bidirectional
layer-norm LSTM (forward and backward), each costing the executor about a microsecond whatever
the dtype; that overhead is most of a bf16 training step's non-matmul time. The native op runs
the n steps of one layer, both directions at once on two threads, in C++: the recurrent matmul
with AVX-512 register tiles (float32 FMA, or bfloat16 pairs by AVX512-BF16's dot product), the
layer norms and gates with Eigen's vectorised tanh and logistic (those of TensorFlow's own ops).
The input projection of all steps stays before the loop and the recurrent kernel's gradient
after it, as one TensorFlow matmul each (oneDNN), as in the graph loop (gradient.py).

When it runs: `asr.rnn`'s loops use it for a LayerNormLSTMCell (exactly that class) with
num_units a multiple of 16, float32 matmuls on a CPU with AVX-512F or bfloat16 ones on a CPU
with AVX512-BF16 (CPU_FLAG_FOR), no state dropout, no GPU visible, in dynamic_rnn, bidirectional_dynamic_rnn and
stack_bidirectional_dynamic_rnn, unless `use_native(False)` (or ASR_NATIVE_RNN=0 in the
environment) turns it off or the library cannot be built; static_rnn, the other cells and
`forward_only` graphs keep the graph loop. asr's inference function (asr.export.make_forward:
`asr transcribe`, `asr evaluate`, exported SavedModels and TFLite files, the trace cache) is
traced under forward_only, so that what it saves loads without this library. Both compute the same function (the
tests hold them to each other, values and gradients, in float32 and bfloat16); their float
rounding differs, so a run is exactly repeatable only on the same loop. In bfloat16 the native
op keeps each recurrent product h U (and dz U^T) in float32 where the graph loop's bf16 MatMul
rounds it to bf16: slightly more precise. The op has no second-order gradient (a gradient of its
gradient raises LookupError); the graph loop has one.

Building: the source is compiled on first use with the C++ compiler (`CXX`, default g++) against
the installed TensorFlow's headers, for this machine's CPU (-march=native; without AVX-512 the
matmul falls back to plain loops), into ~/.cache/asr/kernels (XDG_CACHE_HOME), keyed by the
source, TensorFlow's version, the flags and the CPU; about 10 s once per machine.
"""

import functools
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import tensorflow as tf

SOURCE = Path(__file__).with_name("kernels") / "layer_norm_lstm.cc"
ENV_SWITCH = "ASR_NATIVE_RNN"  # "0": the graph loop everywhere
UNITS_MULTIPLE = 16  # the matmul tiles' column width (16 float32 lanes)
# The matmul dtypes the op has register tiles for, and the CPU flag (/proc/cpuinfo) each needs:
# elsewhere (no AVX-512, bfloat16 without AVX512-BF16, float16) the graph loop runs.
CPU_FLAG_FOR = {"float32": "avx512f", "bfloat16": "avx512_bf16"}
BUILD_TIMEOUT_S = 600
OPTIMIZE_FLAGS = ("-shared", "-fPIC", "-O3", "-march=native", "-w")

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state = {"library": None, "error": None, "enabled": os.environ.get(ENV_SWITCH, "1") != "0"}


def use_native(enabled):
    """Turns the native loop on or off for loops traced from now on; returns the previous setting."""
    previous = _state["enabled"]
    _state["enabled"] = bool(enabled)
    return previous


def native_enabled(matmul_dtype="float32"):
    """Whether loops traced now would use the native op for a cell whose matmuls run in
    matmul_dtype (when the cell allows it): it is on, the CPU has the tiles' instructions, no GPU
    is visible (the op has a CPU kernel only) and the library loads."""
    return (
        _state["enabled"]
        and CPU_FLAG_FOR.get(matmul_dtype, "-") in _cpu_flags().split()
        and not tf.config.list_logical_devices("GPU")
        and library() is not None
    )


@functools.cache
def _cpu_flags():
    """The CPU's flags line of /proc/cpuinfo (elsewhere: platform.processor(), which names no flag);
    read once, as every loop traced asks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _command(output):
    compiler = shlex.split(os.environ.get("CXX", "g++"))
    return [*compiler, *OPTIMIZE_FLAGS, *tf.sysconfig.get_compile_flags(), str(SOURCE), "-o", str(output),
            *tf.sysconfig.get_link_flags()]


def _cache_path():
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), " ".join(_command("x")).encode(), _cpu_flags().encode()):
        key.update(part)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asr" / "kernels"
    return root / f"layer_norm_lstm-{key.hexdigest()[:16]}.so"


def _build(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        partial = Path(tmp) / path.name
        done = subprocess.run(
            _command(partial), capture_output=True, text=True, errors="replace", timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE} failed:\n{done.stderr[-2000:]}")
        os.replace(partial, path)  # atomic: another process sees all of it or none


def library():
    """The loaded op library, built if needed; None (logged once) if it cannot be built."""
    with _lock:
        if _state["library"] is None and _state["error"] is None:
            try:
                path = _cache_path()
                if not path.exists():
                    _build(path)
                _state["library"] = tf.load_op_library(str(path))
            except Exception as error:  # noqa: BLE001 - any failure to build or load: the graph loop runs
                _state["error"] = error
                _log.warning("asr.rnn: the native layer-norm LSTM is unavailable, using the graph loop (%s)", error)
        return _state["library"]


def layer_norm_lstm(projected, kernel, gate_gain, gate_shift, state_gain, state_shift, h0, c0, lengths):
    """Runs D directions of the layer-norm LSTM over n steps (LayerNormLSTMCell's step_with).

    projected [D, n, B, 4U] float32 (W x plus the input bias, in step order); kernel [D, U, 4U]
    float32 or bfloat16 (the matmul dtype); gate_gain, gate_shift [D, 4, U] (gate_shift with the
    forget bias added); state_gain, state_shift [D, U]; h0, c0 [D, B, U]; lengths [B] int32
    (steps past a length give zero outputs and carry the state). Returns (outputs [D, n, B, U],
    final h [D, B, U], final c [D, B, U]), differentiable in every input but lengths.
    """
    outputs = library().asr_layer_norm_lstm(
        projected, kernel, gate_gain, gate_shift, state_gain, state_shift, h0, c0, lengths
    )
    return outputs[0], outputs[1], outputs[2]


@tf.RegisterGradient("AsrLayerNormLstm")
def _layer_norm_lstm_grad(op, d_h, d_final_h, d_final_c, *unused_saved):
    """The backward loop (the grad op), then the kernel's gradient sum_t h_{t-1}^T dz_t as one
    batched matmul in the kernel's dtype (bf16 under mixed precision, as gradient.KernelGradient)."""
    projected, kernel, gate_gain, gate_shift, state_gain, state_shift, h0, c0, lengths = op.inputs
    h = op.outputs[0]
    d_h = tf.zeros_like(h) if d_h is None else d_h
    d_final_h = tf.zeros_like(h0) if d_final_h is None else d_final_h
    d_final_c = tf.zeros_like(c0) if d_final_c is None else d_final_c
    d_projected, d_h0, d_c0, d_gate_gain, d_gate_shift, d_state_gain, d_state_shift = (
        library().asr_layer_norm_lstm_grad(
            d_h, d_final_h, d_final_c, kernel, gate_gain, gate_shift, state_gain, state_shift, c0, lengths,
            *op.outputs[3:],
        )
    )
    units, gates = kernel.shape[1], kernel.shape[2]
    directions = tf.shape(h)[0]
    h_prev = tf.concat([tf.expand_dims(h0, 1), h[:, :-1]], axis=1)  # past a length dz is 0: any h does
    flat_h = tf.cast(tf.reshape(h_prev, [directions, -1, units]), kernel.dtype)
    flat_d_z = tf.cast(tf.reshape(d_projected, [directions, -1, gates]), kernel.dtype)
    d_kernel = tf.matmul(flat_h, flat_d_z, transpose_a=True)
    return [d_projected, d_kernel, d_gate_gain, d_gate_shift, d_state_gain, d_state_shift, d_h0, d_c0, None]
