"""The two step drivers, a tf.while_loop (`loop`) and its Python unrolling (`unroll`); forward_only.

A step function `step(inputs_t, states) -> (outputs_t, new_states)` takes lists of tensors; batch
is the second-to-last axis of every state and output (so states [B, U] and [2, B, U] alike), and
lengths [B] (or None) masks them: at a step t >= length a sequence's outputs are zero and its
states are carried unchanged. Inputs come in step order (step 0 first); `loop` owns the order in
which its TensorLists hold them.
"""

import contextlib
import threading

import tensorflow as tf

_FORWARD_ONLY = threading.local()  # .active: loops traced now read their inputs without popping (forward_only)


@contextlib.contextmanager
def forward_only():
    """Loops traced inside read each step's input with TensorListGetItem instead of popping it
    off the list: the same values, as fast forward, but a gradient taken through them is O(T^2)
    (see loop). For inference graphs only (asr.export): TFLite's converter lowers GetItem to
    builtin ops and cannot lower TensorListPopBack, which would need the Flex delegate."""
    previous = getattr(_FORWARD_ONLY, "active", False)
    _FORWARD_ONLY.active = True
    try:
        yield
    finally:
        _FORWARD_ONLY.active = previous


def forward_only_active():
    """Whether loops traced now are inside forward_only."""
    return getattr(_FORWARD_ONLY, "active", False)


def num_steps(time, lengths):
    """How many steps to run: the longest sequence (at least 1), or all the padded time."""
    if lengths is None:
        return time
    return tf.minimum(tf.maximum(tf.reduce_max(lengths), 1), time)


def checked_lengths(sequence_length, time):
    """sequence_length as int32 [B], checked against the padded time; None stays None."""
    if sequence_length is None:
        return None
    lengths = tf.cast(sequence_length, tf.int32)
    tf.debugging.assert_less_equal(lengths, time, message="sequence_length exceeds the padded time axis")
    return lengths


def _masked(t, lengths, outputs, new_states, old_states):
    """At step t, where t >= lengths [B]: the outputs are zero and the old states are kept."""
    if lengths is None:
        return outputs, new_states
    valid = tf.expand_dims(t < lengths, -1)
    outputs = [tf.where(valid, output, tf.zeros([], output.dtype)) for output in outputs]
    return outputs, [tf.where(valid, new, old) for new, old in zip(new_states, old_states)]


def _element_shape(shape):
    """A static shape as a TensorList element_shape argument (-1 where unknown)."""
    return tf.constant([-1 if d is None else d for d in shape.as_list()], tf.int32)


def loop(step, inputs, initial_states, output_shapes, lengths, num_steps):
    """Runs step for num_steps steps in one tf.while_loop.

    inputs: list of tensors [num_steps, ...] in step order; output_shapes: the static shape of
    each of step's outputs; initial_states: list of tensors. Returns (list of outputs
    [num_steps, ...] in step order, final states).
    Each step pops its input off the back of a TensorList, whose gradient is an O(1) push (reading
    a TensorArray or a TensorList item costs O(T) per step in the backward loop, O(T^2) in all):
    so the list holds the inputs last step first, scattered there in the copy that making any
    TensorList costs anyway (TensorListScatterV2; its gradient gathers them back in step order).
    """
    shapes = [_element_shape(x.shape[1:]) for x in inputs]
    pop = not forward_only_active()
    if pop:
        last_first = tf.range(num_steps - 1, -1, -1)
        input_lists = [
            tf.raw_ops.TensorListScatterV2(tensor=x, indices=last_first, element_shape=shape, num_elements=num_steps)
            for x, shape in zip(inputs, shapes)
        ]
    else:
        input_lists = [tf.raw_ops.TensorListFromTensor(tensor=x, element_shape=s) for x, s in zip(inputs, shapes)]
    outputs_ta = [
        tf.TensorArray(x.dtype, size=num_steps, element_shape=shape) for x, shape in zip(inputs, output_shapes)
    ]

    def body(t, states, outputs_ta, input_lists):
        inputs_t, remaining = [], []
        for x, shape, input_list in zip(inputs, shapes, input_lists):
            if pop:
                input_list, item = tf.raw_ops.TensorListPopBack(
                    input_handle=input_list, element_shape=shape, element_dtype=x.dtype
                )
            else:
                item = tf.raw_ops.TensorListGetItem(
                    input_handle=input_list, index=t, element_shape=shape, element_dtype=x.dtype
                )
            item.set_shape(x.shape[1:])
            inputs_t.append(item)
            remaining.append(input_list)
        outputs, new_states = _masked(t, lengths, *step(inputs_t, states), states)
        return t + 1, new_states, [ta.write(t, output) for ta, output in zip(outputs_ta, outputs)], remaining

    _, final_states, outputs_ta, _ = tf.while_loop(
        lambda t, *_: t < num_steps, body, (tf.constant(0), list(initial_states), outputs_ta, input_lists)
    )
    return [ta.stack() for ta in outputs_ta], final_states


def unroll(step, inputs, initial_states, lengths):
    """loop unrolled in Python: inputs a list of tensors [T, ...] with T static; the same result."""
    num = inputs[0].shape[0]
    states, outputs = list(initial_states), []
    for t, inputs_t in enumerate(zip(*(tf.unstack(x, num=num) for x in inputs))):
        outputs_t, states = _masked(t, lengths, *step(list(inputs_t), states), states)
        outputs.append(outputs_t)
    return [tf.stack(column) for column in zip(*outputs)], states
