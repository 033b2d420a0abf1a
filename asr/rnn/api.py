"""The public loops: dynamic_rnn, static_rnn, bidirectional_dynamic_rnn, stack_bidirectional_dynamic_rnn.

Each public function prepares one `_Direction` per cell (dropout masks, the input projection of
all steps, the step weights, the kernel gradient's hook), runs the directions side by side through
one step function (`_step_function`) driven by `loop.loop` or, in static_rnn, `loop.unroll`, then
`_finish`es each direction (the kernel gradient's h's, padding, output dropout). A layer-norm LSTM
runs instead in one native op for all its steps where asr.rnn.native allows it (`_run_native`).
"""

from typing import NamedTuple

import tensorflow as tf

from asr.rnn.cells import RECURRENT_KERNEL, LayerNormLSTMCell, RecurrentCell
from asr.rnn.dropout import DropoutMasks, DropoutWrapper, apply_mask, drop_state, prepare
from asr.rnn.gradient import KernelGradient
from asr.rnn.loop import checked_lengths, forward_only_active, loop, num_steps, unroll
from asr.rnn.native import UNITS_MULTIPLE, layer_norm_lstm, native_enabled


class _Direction(NamedTuple):
    """One direction (or two stacked: see _fuse) ready to loop over time-major inputs."""

    cell: RecurrentCell
    projected: tf.Tensor  # [n, B, G] ([n, 2, B, G] fused), in step order
    weights: dict  # step_weights(): RECURRENT_KERNEL (frozen if additive), the others broadcast to [B, ...]
    states: list  # initial states [B, size] ([2, B, size] fused)
    masks: DropoutMasks  # [B, size] each, or None ([2, B, size] for the fused state mask)
    kernel_gradient: KernelGradient | None  # None: the loop's own backward pass computes it
    native: bool = False  # for _run_native: weights as step_weights() gives them, kernel not frozen


def _initial_states(cell, initial_state, batch_size):
    if initial_state is None:
        return cell.get_initial_state(batch_size)
    states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
    if len(states) != len(cell.state_size):
        raise ValueError(f"initial_state has {len(states)} tensors, {cell.name} needs {len(cell.state_size)}")
    return [tf.cast(s, cell.state_dtype) for s in states]


def _broadcast_batch(weight, batch_size):
    """weight [...] -> [B, ...]: in the loop, an elementwise op between equal shapes is several
    times faster on CPU than one that broadcasts, in its gradient especially."""
    return tf.broadcast_to(weight, tf.concat([[batch_size], tf.shape(weight)], axis=0))


def _native_cell(cell):
    """Whether an unwrapped cell can run in the native op now (asr.rnn.native says when)."""
    return (
        type(cell) is LayerNormLSTMCell
        and cell.num_units % UNITS_MULTIPLE == 0
        and not forward_only_active()
        and native_enabled(cell.matmul_dtype)
    )


def _native_applies(run):
    """Whether a prepared cell (dropout.prepare) runs in the native op: no state mask either."""
    return _native_cell(run.cell) and run.masks.state is None


def runs_native(cell):
    """Whether loops over cell (a cell, or one in DropoutWrappers) traced now run in the native op,
    in training too (where a state_keep_prob < 1 would keep the graph loop)."""
    state_dropout = False
    while isinstance(cell, DropoutWrapper):
        state_dropout = state_dropout or cell.state_keep_prob < 1.0
        cell = cell.cell
    return not state_dropout and _native_cell(cell)


def _direction(run, step_inputs, initial_state, use_native=False):
    """Prepares a cell's run (dropout.prepare) over step_inputs [n, B, D] (the inputs of the n steps
    to run, time-major, in step order): projection, weights, initial states."""
    batch_size = tf.shape(step_inputs)[1]
    weights = run.cell.step_weights()
    projected = run.cell.project_inputs(apply_mask(step_inputs, run.masks.inputs))
    states = _initial_states(run.cell, initial_state, batch_size)
    if use_native:
        return _Direction(run.cell, projected, weights, states, run.masks, None, native=True)
    kernel_gradient = None
    if run.cell.ADDITIVE_RECURRENCE:
        kernel_gradient = KernelGradient()
        projected, weights[RECURRENT_KERNEL] = kernel_gradient.attach(projected, weights[RECURRENT_KERNEL])
    for key in weights:
        if key != RECURRENT_KERNEL:
            weights[key] = _broadcast_batch(weights[key], batch_size)
    return _Direction(run.cell, projected, weights, states, run.masks, kernel_gradient)


def _fuse(fw, bw):
    """Two directions of equal fusion keys as one on stacked tensors: weights [2, B, ...] (the
    kernels a pair (fw, bw), see gradient.recurrent_matmul), states [2, B, U], projected [n, 2, B, G]."""
    weights = {key: tf.stack([fw.weights[key], bw.weights[key]]) for key in fw.weights if key != RECURRENT_KERNEL}
    weights[RECURRENT_KERNEL] = (fw.weights[RECURRENT_KERNEL], bw.weights[RECURRENT_KERNEL])
    states = [tf.stack(pair) for pair in zip(fw.states, bw.states)]
    projected = tf.stack([fw.projected, bw.projected], axis=1)
    masks = DropoutMasks(None, None, _stacked_mask(fw.masks.state, bw.masks.state))
    return _Direction(fw.cell, projected, weights, states, masks, None)


def _stacked_mask(mask_fw, mask_bw):
    if mask_fw is None and mask_bw is None:
        return None
    ones = tf.ones_like(mask_fw if mask_fw is not None else mask_bw)
    return tf.stack([ones if mask_fw is None else mask_fw, ones if mask_bw is None else mask_bw])


def _step_function(directions):
    """The step of directions run side by side: inputs_t one per direction, states theirs in turn."""

    def step(inputs_t, states):
        outputs, new_states = [], []
        for d, x, own_states in zip(directions, inputs_t, _split_states(directions, states)):
            output, new = d.cell.step_with(d.weights, x, own_states)
            outputs.append(output)
            new_states += drop_state(new, d.masks.state)
        return outputs, new_states

    return step


def _run(directions, lengths, steps):
    """directions side by side for `steps` steps in one tf.while_loop -> (outputs [steps, ..., B, U]
    and final states, one of each per direction)."""
    initial = [s for d in directions for s in d.states]
    output_shapes = [d.states[0].shape for d in directions]
    inputs = [d.projected for d in directions]
    outputs, final = loop(_step_function(directions), inputs, initial, output_shapes, lengths, steps)
    return outputs, _split_states(directions, final)


def _run_native(directions, lengths, steps):
    """_run for native directions (one, or two of equal fusion keys): one op for all steps ->
    (outputs [steps, B, U] and final states [h, c], one of each per direction)."""
    def stacked(key):
        return tf.stack([d.weights[key] for d in directions])

    projected = tf.stack([d.projected for d in directions])
    h0, c0 = (tf.stack(pair) for pair in zip(*(d.states for d in directions)))
    if lengths is None:
        lengths = tf.fill(tf.shape(projected)[2:3], steps)
    outputs, final_h, final_c = layer_norm_lstm(
        projected,
        stacked(RECURRENT_KERNEL),
        stacked("gate_gain"),
        stacked("gate_shift"),
        stacked("state_gain"),
        stacked("state_shift"),
        h0,
        c0,
        lengths,
    )
    count = len(directions)
    final = [list(pair) for pair in zip(tf.unstack(final_h, num=count), tf.unstack(final_c, num=count))]
    return tf.unstack(outputs, num=count), final


def _split_states(directions, states):
    """One list of all directions' states -> a list per direction."""
    split, start = [], 0
    for d in directions:
        split.append(states[start : start + len(d.states)])
        start += len(d.states)
    return split


def _finish(direction, outputs, time):
    """After the loop: the kernel gradient's h's; outputs [n, B, U] padded to time, dropped out."""
    if direction.kernel_gradient is not None:
        later_h = apply_mask(outputs[:-1], direction.masks.state)
        direction.kernel_gradient.set_carried(direction.states[0], later_h)
    return apply_mask(_pad_time(outputs, time), direction.masks.outputs)


def _pad_time(outputs, time):
    """Zero-pads time-major outputs [n, ...] to [time, ...]."""
    padding = [[0, time - tf.shape(outputs)[0]]] + [[0, 0]] * (outputs.shape.rank - 1)
    return tf.pad(outputs, padding)


def _reverse(x, lengths):
    """Reverses time-major x [T, B, ...] within each sequence's length (all of T without lengths)."""
    if lengths is None:
        return tf.reverse(x, axis=[0])
    return tf.reverse_sequence(x, lengths, seq_axis=0, batch_axis=1)


# --- unidirectional -------------------------------------------------------------------------------


def _rnn_time_major(cell, inputs, lengths, initial_state, training, dropout_seed):
    """dynamic_rnn on time-major inputs [T, B, D] -> (outputs [T, B, U], final states)."""
    time = tf.shape(inputs)[0]
    steps = num_steps(time, lengths)
    run = prepare(cell, inputs[:steps], training, dropout_seed)
    direction = _direction(run, inputs[:steps], initial_state, _native_applies(run))
    (outputs,), (final_states,) = (_run_native if direction.native else _run)([direction], lengths, steps)
    return _finish(direction, outputs, time), final_states


def dynamic_rnn(cell, inputs, sequence_length=None, initial_state=None, time_major=False, training=False, dropout_seed=None):
    """Runs cell over padded inputs.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length: [batch]
    valid steps per sequence (None: all). initial_state: list of [batch, size] (None: zeros).
    dropout_seed: None, or a [2] integer tensor that keys the DropoutWrappers' masks when
    training (stateless: the same seed, the same masks; e.g. (replica, optimizer step)).
    Returns (outputs [batch, max_time, units] (time-major if asked), zero at and past each
    length; final_state: list of [batch, size], the state after each sequence's last valid step,
    the initial state for a sequence of length 0).
    """
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = checked_lengths(sequence_length, tf.shape(x)[0])
    outputs, final_state = _rnn_time_major(cell, x, lengths, initial_state, training, dropout_seed)
    return (outputs if time_major else tf.transpose(outputs, [1, 0, 2])), final_state


def static_rnn(cell, inputs, initial_state=None, sequence_length=None, training=False, dropout_seed=None):
    """dynamic_rnn unrolled in Python: inputs a list of T tensors [B, D]; returns (list of T
    outputs [B, units], final_state), with the same masking as dynamic_rnn."""
    if not inputs:
        raise ValueError("static_rnn needs at least one time step")
    x = tf.stack(inputs)
    lengths = checked_lengths(sequence_length, len(inputs))
    d = _direction(prepare(cell, x, training, dropout_seed), x, initial_state)
    (outputs,), states = unroll(_step_function([d]), [d.projected], d.states, lengths)
    outputs = _finish(d, outputs, len(inputs))
    return tf.unstack(outputs, num=len(inputs)), states


# --- bidirectional --------------------------------------------------------------------------------


def _bidirectional_time_major(cell_fw, cell_bw, inputs, lengths, initial_state_fw, initial_state_bw, training, dropout_seed):
    """bidirectional_dynamic_rnn on time-major inputs [T, B, D]: both directions in one loop, fused
    on stacked tensors when their cells allow it (same type, size and dtypes), else side by side."""
    time = tf.shape(inputs)[0]
    steps = num_steps(time, lengths)
    fw_inputs, bw_inputs = inputs[:steps], _reverse(inputs, lengths)[:steps]
    fw_run = prepare(cell_fw, fw_inputs, training, dropout_seed)
    bw_run = prepare(cell_bw, bw_inputs, training, dropout_seed)
    fused = fw_run.cell.fusion_key() == bw_run.cell.fusion_key()
    use_native = fused and _native_applies(fw_run) and _native_applies(bw_run)
    fw = _direction(fw_run, fw_inputs, initial_state_fw, use_native)
    bw = _direction(bw_run, bw_inputs, initial_state_bw, use_native)
    if use_native:
        (out_fw, out_bw), final_states = _run_native([fw, bw], lengths, steps)
        final_states = tuple(final_states)
    elif fused:
        (outputs,), (final,) = _run([_fuse(fw, bw)], lengths, steps)
        out_fw, out_bw = tf.unstack(outputs, num=2, axis=1)
        final_states = ([s[0] for s in final], [s[1] for s in final])
    else:
        (out_fw, out_bw), final_states = _run([fw, bw], lengths, steps)
        final_states = tuple(final_states)
    out_fw = _finish(fw, out_fw, time)
    out_bw = _finish(bw, out_bw, time)  # still reversed: _reverse commutes with padding and dropout
    return (out_fw, _reverse(out_bw, lengths)), final_states


def bidirectional_dynamic_rnn(
    cell_fw,
    cell_bw,
    inputs,
    sequence_length=None,
    initial_state_fw=None,
    initial_state_bw=None,
    time_major=False,
    training=False,
    dropout_seed=None,
):
    """Runs cell_fw forward and cell_bw backward over padded inputs, both in one loop.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length [batch];
    dropout_seed as in dynamic_rnn.
    The backward direction reads each sequence reversed within its own length, so padding never
    enters it; its outputs come back in normal time order. Returns ((out_fw, out_bw) each
    [batch, max_time, units] (time-major if asked), zero at and past each length,
    (state_fw, state_bw)), the final states as in dynamic_rnn.
    """
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = checked_lengths(sequence_length, tf.shape(x)[0])
    outputs, states = _bidirectional_time_major(
        cell_fw, cell_bw, x, lengths, initial_state_fw, initial_state_bw, training, dropout_seed
    )
    if not time_major:
        outputs = tuple(tf.transpose(o, [1, 0, 2]) for o in outputs)
    return outputs, states


def stack_bidirectional_dynamic_rnn(
    cells_fw, cells_bw, inputs, sequence_length=None, time_major=False, training=False, dropout_seed=None
):
    """Layers of bidirectional_dynamic_rnn: each layer's two directions, concatenated on the last
    axis, feed the next layer.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length [batch];
    dropout_seed as in dynamic_rnn (each wrapper folds in its own seed).
    Returns (outputs [batch, max_time, units_fw + units_bw] of the last layer (time-major if asked),
    zero at and past each length; states_fw, states_bw: lists with each layer's final states).
    """
    if not cells_fw or len(cells_fw) != len(cells_bw):
        raise ValueError(
            f"need as many forward as backward cells, at least one; got {len(cells_fw)} and {len(cells_bw)}"
        )
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = checked_lengths(sequence_length, tf.shape(x)[0])
    states_fw, states_bw = [], []
    for cell_fw, cell_bw in zip(cells_fw, cells_bw):
        (out_fw, out_bw), (state_fw, state_bw) = _bidirectional_time_major(
            cell_fw, cell_bw, x, lengths, None, None, training, dropout_seed
        )
        x = tf.concat([out_fw, out_bw], axis=-1)
        states_fw.append(state_fw)
        states_bw.append(state_bw)
    return (x if time_major else tf.transpose(x, [1, 0, 2])), states_fw, states_bw
