"""The recurrent matmul h @ U, and U's gradient computed after the loop in one matmul, not per step.

A cell with an additive recurrence computes its gate pre-activations as z_t = projected_t + h_{t-1} U
(projected_t = W x_t + b, `RecurrentCell.project_inputs`). Left to autodiff, the backward loop would
compute and sum a small [U, G] product h_{t-1}^T dL/dz_t at every step: the costliest part of it.
Instead:
- inside the loop U is frozen (`FrozenKernel`: a stop_gradient and its transpose, made once), so
  the backward step only passes dL/dh = dL/dz U^T back, by a plain matmul with the pre-transposed
  kernel (a matmul with a transposed operand, as the automatic gradient uses, costs ~3x more on
  CPU here);
- the gradient reaching projected_t is dL/dz_t, so a hook on projected (`KernelGradient.attach`,
  before the loop) computes dL/dU = sum_t h_{t-1}^T dL/dz_t as ONE matmul [n*B, U]^T x [n*B, G],
  from the h's entering each step, which `KernelGradient.set_carried` gives after the loop.
Both directions of a bidirectional layer run in one loop on states [2, B, U]: their kernels are
then a pair (fw, bw): two MatMuls and a stack (`recurrent_matmul`). One BatchMatMul of the kernels stacked to
[2, U, G] is slower in both dtypes on this CPU: a B=16 product 223 us against 137 us for the pair
in float32, 164 against 87 us in bf16, and the bench/rnn.py step 0.79x float32's in bf16 with it
against 0.68x with the pair (2026-11-30; an earlier measurement had favoured it in bf16).
Mixed precision: the kernels are in the matmul (compute) dtype; h is cast to it for the product
and the product back to h's dtype, so only the matmul runs in bf16/f16.
"""

from typing import NamedTuple

import tensorflow as tf

class FrozenKernel(NamedTuple):
    """A recurrent kernel whose gradient a KernelGradient computes after the loop: in the loop,
    h @ kernel only passes dL/dh = dL/dz kernel^T back."""

    kernel: tf.Tensor  # [U, G], gradient stopped
    transposed: tf.Tensor  # [G, U]


def recurrent_matmul(h, kernel):
    """h @ kernel: h [B, U] and kernel [U, G] (a tensor or a FrozenKernel); or both directions
    at once, h [2, B, U] and the pair (fw, bw) of their kernels. h is cast to the kernel's dtype and the
    product back to h's (no-ops unless the cell runs in mixed precision). Returns [..., B, G]."""
    first = kernel[0] if isinstance(kernel, list | tuple) and not isinstance(kernel, FrozenKernel) else kernel
    matmul_dtype = (first.kernel if isinstance(first, FrozenKernel) else first).dtype
    return tf.cast(_matmul(tf.cast(h, matmul_dtype), kernel), h.dtype)


def _matmul(h, kernel):
    if isinstance(kernel, FrozenKernel):
        return _frozen_matmul(h, kernel)
    if isinstance(kernel, (list, tuple)):
        per_direction = zip(tf.unstack(h, num=len(kernel)), kernel)
        return tf.stack([_matmul(h_k, kernel_k) for h_k, kernel_k in per_direction])
    return tf.matmul(h, kernel)


def _frozen_matmul(h, frozen):
    @tf.custom_gradient
    def matmul(h):
        return tf.matmul(h, frozen.kernel), lambda d_z: tf.matmul(d_z, frozen.transposed)

    return matmul(h)


class KernelGradient:
    """The gradient of one direction's recurrent kernel, computed after its loop.

    Use it in this order, once per loop; anything else raises RuntimeError:
    1. `attach(projected, kernel)` before the loop: returns projected, now carrying the kernel's
       gradient, and the FrozenKernel that the loop's steps use in place of kernel;
    2. the loop runs its steps, each calling `recurrent_matmul(h, frozen)`;
    3. `set_carried(initial_h, later_h)` after the loop: the h entering each step;
    4. a gradient is taken (it needs the h's of step 3).
    """

    def __init__(self):
        self._stage = "new"  # -> "attached" -> "carried"
        self._carried = None  # [n, B, U]: h_{t-1} for each step t, in step order

    def _advance(self, expected, stage, what):
        if self._stage != expected:
            raise RuntimeError(
                f"KernelGradient.{what} out of order: the order is attach, the loop, set_carried, "
                f"then the gradient; this one is {self._stage!r}"
            )
        self._stage = stage

    def attach(self, projected, kernel):
        """projected [n, B, G] (in step order) and kernel [U, G] (matmul dtype) -> (projected
        unchanged but carrying kernel's gradient, the FrozenKernel for the loop's steps)."""
        self._advance("new", "attached", "attach")

        @tf.custom_gradient
        def hook(projected, kernel):
            def grad(d_projected):  # in the kernel's (matmul) dtype, as the loop's matmuls
                if self._carried is None:
                    raise RuntimeError(
                        "KernelGradient: a gradient was taken before set_carried gave the h entering "
                        "each step (the order is attach, the loop, set_carried, then the gradient)"
                    )
                flat_h = tf.cast(tf.reshape(self._carried, [-1, kernel.shape[0]]), kernel.dtype)
                flat_d_z = tf.cast(tf.reshape(d_projected, [-1, kernel.shape[1]]), kernel.dtype)
                d_kernel = tf.matmul(flat_h, flat_d_z, transpose_a=True)
                return d_projected, d_kernel

            return tf.identity(projected), grad

        frozen = tf.stop_gradient(kernel)
        return hook(projected, kernel), FrozenKernel(frozen, tf.transpose(frozen))

    def set_carried(self, initial_h, later_h):
        """The h entering each step: initial_h [B, U] (step 0), later_h [n - 1, B, U] (steps 1 to
        n - 1: the loop's outputs, with any state dropout; past a length, where dL/dz is zero, any
        value does)."""
        self._advance("attached", "carried", "set_carried")
        self._carried = tf.concat([tf.expand_dims(initial_h, 0), later_h], axis=0)
