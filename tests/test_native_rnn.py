"""The native layer-norm LSTM loop (asr.rnn.native) against the graph loop it replaces: values and
gradients of every input and weight, in float32 and bfloat16, with padding; when it applies and
when the graph loop stays; a compiler that fails.

The graph loop is itself tested against a plain per-sequence reference (test_rnn.py,
test_mixed_precision.py), so agreement here ties the native op to that reference too. float32:
both compute the same operations in a different order (tiles against oneDNN, Eigen against
TensorFlow's ops): within 1e-4 of the largest entry (measured: at most 2.5e-6). bfloat16: as in
test_mixed_precision.py, the two round the same operands in different orders (VDPBF16PS against
oneDNN), and the graph loop also rounds each recurrent product to bf16 where the native op keeps
it in float32, so they agree to a few bf16 roundings: BF16_TOLERANCE of the largest entry (measured:
at most 1.2%, the stacked case).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr import rnn
from asr.rnn import native
from test_mixed_precision import BF16_TOLERANCE

UNITS = 32  # a multiple of native.UNITS_MULTIPLE
FEATURES = 7
LENGTHS = [9, 4, 0, 1, 7]  # one empty sequence, one of length 1, one full
TIME = max(LENGTHS)
NATIVE_OP = "AsrLayerNormLstm"
TOLERANCE = {"float32": 1e-4, "mixed_bfloat16": BF16_TOLERANCE}  # of the largest entry

@pytest.fixture(autouse=True)
def native_on():
    """Each test starts with the native loop on; one that cannot be built fails under CI (it has
    g++ and TensorFlow's headers), and skips elsewhere."""
    if not (native.native_enabled("float32") and native.native_enabled("bfloat16")):
        message = "asr.rnn's native loop is unavailable here (see the warning logged when it was built)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    previous = native.use_native(True)
    yield
    native.use_native(previous)


def make_cell(dtype, seed, features=FEATURES):
    """A built LayerNormLSTMCell with random (not initial) gains and shifts, so every weight matters."""
    keras.utils.set_random_seed(seed)
    cell = rnn.LayerNormLSTMCell(UNITS, dtype=dtype)
    cell.build((None, features))
    for weight in cell.trainable_variables:
        weight.assign(weight + tf.random.normal(weight.shape, stddev=0.3))
    return cell


def inputs(seed=0):
    """[B, T, F] with garbage past each length: the result must not depend on it."""
    return tf.constant(np.random.default_rng(seed).standard_normal((len(LENGTHS), TIME, FEATURES)), tf.float32)


def graph_ops(fn, *args):
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def weighted_loss(outputs, states):
    """A loss that reaches every output and final state with a different weight per entry."""
    total = 0.0
    for k, x in enumerate(tf.nest.flatten([outputs, states])):
        total += tf.reduce_sum(x * tf.random.stateless_normal(tf.shape(x), seed=[k, 7]))
    return total


def values_and_gradients(run, cells, x):
    """run(x) -> (outputs, states); returns every output and state, then the gradients of
    weighted_loss for x and each cell's weights, as numpy arrays."""
    weights = [w for cell in cells for w in cell.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, states = run(x)
        loss = weighted_loss(outputs, states)
    gradients = tape.gradient(loss, [x, *weights])
    return [np.asarray(v, np.float32) for v in tf.nest.flatten([outputs, states]) + gradients]


def both_loops(run, cells, x):
    native.use_native(False)
    graph = values_and_gradients(run, cells, x)
    native.use_native(True)
    return graph, values_and_gradients(run, cells, x)


def assert_close(expected, actual, dtype):
    assert len(expected) == len(actual)
    for k, (e, a) in enumerate(zip(expected, actual)):
        scale = max(float(np.abs(e).max()), 1e-6)
        assert float(np.abs(e - a).max()) <= TOLERANCE[dtype] * scale, (k, float(np.abs(e - a).max()), scale)


def initial_state(value):
    return [tf.fill([len(LENGTHS), UNITS], value), tf.fill([len(LENGTHS), UNITS], -value)]


def run_stacked(cells):
    def run(x):
        outputs, states_fw, states_bw = rnn.stack_bidirectional_dynamic_rnn(
            cells[:2], cells[2:], x, sequence_length=LENGTHS
        )
        return outputs, (states_fw, states_bw)

    return run


RUNS = {  # cells: two layers, forward cells first -> run(x) -> (outputs, states)
    "dynamic": lambda cells: lambda x: rnn.dynamic_rnn(cells[0], x, sequence_length=LENGTHS, initial_state=initial_state(0.3)),
    "bidirectional": lambda cells: lambda x: rnn.bidirectional_dynamic_rnn(
        cells[0], cells[2], x, sequence_length=LENGTHS, initial_state_bw=initial_state(-0.5)
    ),
    "stacked": run_stacked,
    "no_lengths": lambda cells: lambda x: rnn.bidirectional_dynamic_rnn(cells[0], cells[2], x),
}


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", sorted(RUNS))
def test_native_loop_equals_the_graph_loop_in_values_and_gradients(kind, dtype):
    cells = [make_cell(dtype, 0), make_cell(dtype, 1, 2 * UNITS), make_cell(dtype, 2), make_cell(dtype, 3, 2 * UNITS)]
    used = cells if kind == "stacked" else [cells[0]] if kind == "dynamic" else [cells[0], cells[2]]
    run = RUNS[kind](cells)
    x = inputs()
    assert NATIVE_OP in graph_ops(run, x)
    graph, ours = both_loops(run, used, x)
    assert_close(graph, ours, dtype)


def test_padding_never_reaches_the_native_outputs_or_gradients():
    fw, bw = make_cell("float32", 0), make_cell("float32", 1)

    def run(x):
        return rnn.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=LENGTHS)

    x = inputs(0)
    valid = tf.sequence_mask(LENGTHS, TIME, tf.float32)[..., None]
    other = x * valid + inputs(1) * (1.0 - valid)  # the same sequences, other padding
    first, second = values_and_gradients(run, [fw, bw], x), values_and_gradients(run, [fw, bw], other)
    outputs_fw, outputs_bw = first[0], first[1]
    assert np.all(outputs_fw * (1.0 - valid.numpy()) == 0.0) and np.all(outputs_bw * (1.0 - valid.numpy()) == 0.0)
    d_x = first[6]
    assert np.all(d_x * (1.0 - valid.numpy()) == 0.0)
    for k, (a, b) in enumerate(zip(first, second)):
        if k == 6:
            a, b = a * valid.numpy(), b * valid.numpy()
        np.testing.assert_array_equal(a, b)


def test_native_loop_is_deterministic():
    fw, bw = make_cell("mixed_bfloat16", 0), make_cell("mixed_bfloat16", 1)

    def run(x):
        return rnn.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=LENGTHS)

    first, second = values_and_gradients(run, [fw, bw], inputs()), values_and_gradients(run, [fw, bw], inputs())
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_input_and_output_dropout_run_native_and_equal_the_graph_loop():
    cells = [rnn.DropoutWrapper(make_cell("float32", k), input_keep_prob=0.7, output_keep_prob=0.8, seed=k) for k in range(2)]

    def run(x):
        return rnn.bidirectional_dynamic_rnn(
            cells[0], cells[1], x, sequence_length=LENGTHS, training=True, dropout_seed=tf.constant([3, 4])
        )

    x = inputs()
    assert NATIVE_OP in graph_ops(run, x)
    graph, ours = both_loops(run, [c.cell for c in cells], x)
    assert_close(graph, ours, "float32")


CASES_FOR_THE_GRAPH_LOOP = {
    "units not a multiple of 16": lambda: rnn.LayerNormLSTMCell(24),
    "another cell": lambda: rnn.LSTMCell(UNITS),
    "state dropout": lambda: rnn.DropoutWrapper(rnn.LayerNormLSTMCell(UNITS), state_keep_prob=0.8, seed=1),
    "float16 matmuls": lambda: rnn.LayerNormLSTMCell(UNITS, dtype="mixed_float16"),
}


@pytest.mark.parametrize("case", sorted(CASES_FOR_THE_GRAPH_LOOP))
def test_the_graph_loop_runs_where_the_native_op_does_not_apply(case):
    cell = CASES_FOR_THE_GRAPH_LOOP[case]()

    def run(x):
        return rnn.dynamic_rnn(cell, x, sequence_length=LENGTHS, training=True, dropout_seed=tf.constant([1, 2]))

    ops = graph_ops(run, inputs())
    assert NATIVE_OP not in ops and ("While" in ops or "StatelessWhile" in ops)


def test_a_cpu_without_the_tiles_instructions_keeps_the_graph_loop(monkeypatch):
    cell = make_cell("mixed_bfloat16", 0)

    def run(x):
        return rnn.dynamic_rnn(cell, x, sequence_length=LENGTHS)

    monkeypatch.setattr(native, "_cpu_flags", lambda: "flags : fpu sse2 avx2 avx512f")  # no avx512_bf16
    assert NATIVE_OP not in graph_ops(run, inputs())
    assert native.native_enabled("float32") and not native.native_enabled("bfloat16")
    monkeypatch.setattr(native, "_cpu_flags", lambda: "flags : fpu sse2 avx2")
    assert not native.native_enabled("float32")


def test_the_op_names_an_input_of_the_wrong_shape():
    d, n, b, u = 1, 3, 5, UNITS
    args = dict(
        projected=tf.zeros([d, n, b, 4 * u]), kernel=tf.zeros([d, u, 4 * u]), gate_gain=tf.ones([d, 4, u]),
        gate_shift=tf.zeros([d, 4, u]), state_gain=tf.ones([d, u]), state_shift=tf.zeros([d, u]),
        h0=tf.zeros([d, b, u]), c0=tf.zeros([d, 1, u]), lengths=tf.fill([b], n),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"c0 must be \[1,5,32\], got \[1,1,32\]"):
        native.layer_norm_lstm(**args)  # (an initial state of one row fails in the graph loop too)
    args["c0"] = tf.zeros([d, b, u])
    outputs, _, final_c = native.layer_norm_lstm(**args)
    assert outputs.shape == (d, n, b, u) and final_c.shape == (d, b, u)


def test_forward_only_and_use_native_false_keep_the_graph_loop():
    cell = make_cell("float32", 0)

    def run(x):
        return rnn.dynamic_rnn(cell, x, sequence_length=LENGTHS)

    x = inputs()
    with rnn.forward_only():
        assert NATIVE_OP not in graph_ops(run, x)
    native.use_native(False)
    assert NATIVE_OP not in graph_ops(run, x)
    native.use_native(True)
    assert NATIVE_OP in graph_ops(run, x)


def test_a_compiler_that_fails_leaves_the_graph_loop_with_a_warning(tmp_path):
    """A fresh cache and a compiler that cannot compile: dynamic_rnn still runs (graph loop)."""
    script = (
        "import numpy as np, tensorflow as tf\n"
        "from asr import rnn\n"
        "from asr.rnn import native\n"
        "cell = rnn.LayerNormLSTMCell(16)\n"
        "out, _ = rnn.dynamic_rnn(cell, tf.ones([2, 3, 4]), sequence_length=[3, 1])\n"
        "assert not native.native_enabled()\n"
        "print('ok', float(tf.reduce_sum(tf.abs(out))) > 0)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok True" in done.stdout
    assert "the native layer-norm LSTM is unavailable, using the graph loop" in done.stderr
    assert not list(tmp_path.rglob("*.so"))


def test_the_built_library_is_cached_per_source_and_machine():
    path = native._cache_path()
    assert native.library() is not None and path.is_file()
    assert path.name.startswith("layer_norm_lstm-") and native._cache_path() == path
