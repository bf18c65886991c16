"""A pure-Python unpickler whose allocations are charged against a budget: the base of our restricted unpicklers.

Two readers in mll_tf accept pickles from files a user downloads: PyTorch
state dicts (:mod:`mll_tf.backbones.torch_state_dict`) and the OpenImages
MID lists of the LESA release (:mod:`mll_tf.data.datasets.openimages`).
Each allows only the few globals its format needs; this base class adds
what both need beyond that:

* a **budget**: every object the allowed calls and opcodes build is charged
  (an estimate in bytes) against ``ALLOCATION_FACTOR`` x the pickle's size
  + ``ALLOCATION_SLACK``, so a small file cannot make the reader allocate
  gigabytes (``list(b)`` repeated over one large ``bytes`` object, say);
* a **strict readline**: the pure-Python ``pickle._Unpickler`` trusts a
  text line to end in a newline; a truncated file then raises ``EOFError``
  instead of misparsing;
* ``BYTEARRAY8`` (protocol 5) reads at most the bytes present and is
  charged.

Subclasses set ``find_class`` (the allowed globals) and may override
:meth:`refusal` to raise their own exception type.
"""

import pickle
import struct

__all__ = ["BudgetedUnpickler"]


def _strict_readline(readline):
    """``readline`` that raises EOFError on a line cut short (pure-Python pickle trusts it)."""
    def strict():
        line = readline()
        if not line.endswith(b"\n"):
            raise EOFError("pickle data was truncated")
        return line
    return strict


class BudgetedUnpickler(pickle._Unpickler):
    """``pickle._Unpickler`` with an allocation budget, a strict readline and a charged ``BYTEARRAY8``.

    Args:
        file: binary file object positioned at the pickle (in memory, or a
            file whose remaining bytes are ``size``).
        size: int, the bytes of pickle data (the budget is proportional).
        where: str, prefix of the refusal messages (e.g. ``"refusing 'x.pth'"``).
        **kwargs: ``pickle.Unpickler``'s ``fix_imports``, ``encoding``, ``errors``.

    Raises (from :meth:`load`):
        the exception of :meth:`refusal` (default ``pickle.UnpicklingError``)
        when the budget is exceeded; ``pickle.UnpicklingError`` on a
        truncated ``BYTEARRAY8``; ``EOFError`` on a truncated text line.
    """

    #: budget = ALLOCATION_FACTOR x the pickle's size + ALLOCATION_SLACK bytes
    ALLOCATION_FACTOR = 8
    ALLOCATION_SLACK = 1 << 20

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, size, where="refused", **kwargs):
        super().__init__(file, **kwargs)
        self.file_size = int(size)
        self.where = where
        self.budget = self.ALLOCATION_FACTOR * self.file_size + self.ALLOCATION_SLACK
        self.allocated = 0
        self._file_readline = _strict_readline(self._file_readline)

    def refusal(self, message):
        """The exception raised for a refused pickle (``message`` is complete)."""
        return pickle.UnpicklingError(message)

    def _charge(self, nbytes, what):
        """Add ``nbytes`` to the allocated total; refuse the pickle past the budget."""
        self.allocated += int(nbytes)
        if self.allocated > self.budget:
            raise self.refusal(
                f"{self.where}: {what} would allocate {int(nbytes)} bytes, past the budget of this "
                f"{self.file_size}-byte pickle ({self.budget} bytes in all = {self.ALLOCATION_FACTOR} x its "
                f"size + {self.ALLOCATION_SLACK})")

    def load_bytearray8(self):
        size, = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(f"{self.where}: truncated: BYTEARRAY8 of {size} bytes, "
                                         f"{len(data)} present")
        self._charge(len(data), "BYTEARRAY8")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
