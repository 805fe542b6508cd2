"""Addition and subtraction in a chosen base: prompt ``a+b=`` / ``a-b=``, completion = the answer digits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqgym._options import OPERATORS, Operator, check_option
from seqgym.vocab import Vocabulary

__all__ = ["Arithmetic"]

_DIGITS = "0123456789abcdef"
_OPS = OPERATORS
_MAX_OPERANDS = 2**62  # operand values are drawn with numpy int64 and their sum must fit too


def _sum_clipped(x0: int, x1: int, width: int) -> int:
    """``sum(min(max(x, 0), width) for x in range(x0, x1 + 1))`` in closed form (exact integers)."""

    def cumulative(x: int) -> int:  # sum over all integers <= x
        if x <= 0:
            return 0
        if x <= width:
            return x * (x + 1) // 2
        return width * (width + 1) // 2 + (x - width) * width

    return cumulative(x1) - cumulative(x0 - 1) if x1 >= x0 else 0


class Arithmetic:
    """Addition and subtraction of ``n_digits``-digit numbers in base ``base``: a point mass given the prompt.

    Tokens: the digits ``0 .. base-1`` (strings ``"0"-"9"``, then ``"a"-"f"``; digit ``d`` has id ``d``), then
    ``"+"``, ``"-"``, ``"="`` (both operator tokens are always in the vocabulary, whatever ``ops`` is), then
    ``eos``. A sequence reads ``a op b = c <eos>``, e.g. ``"07+35=42<eos>"`` in base 10 with ``n_digits=2``:

    - the operands ``a`` and ``b`` are written with exactly ``n_digits`` digits, zero-padded, most
      significant first, so the prompt always has ``2 * n_digits + 2`` tokens;
    - the answer ``c`` is written without leading zeros (``"0"`` for zero), most significant first;
    - for ``"-"`` the operands satisfy ``a >= b``, so every answer is non-negative.

    Prompt distribution: the operator is uniform over ``ops``; given ``"+"``, ``(a, b)`` is uniform over all
    ``base**n_digits`` squared pairs; given ``"-"``, uniform over the pairs with ``a >= b``.

    Exact probabilities: :meth:`next_token_logprobs` is exact everywhere. After a complete prompt it is a
    point mass (``0`` for the next answer digit or ``eos``, ``-inf`` elsewhere); inside the prompt it gives
    the prompt distribution's conditional probabilities. A prefix outside the support (a malformed prompt,
    ``a < b`` with ``"-"``, a wrong answer digit, anything after ``eos``) gets all ``-inf``. :meth:`is_valid`
    accepts exactly the well-formed prompts of the distribution followed by their correct answer and ``eos``.

    Args:
        base: the number base, ``2 .. 16``.
        n_digits: digits of each operand (>= 1, and ``base**n_digits <= 2**62``: 62 in base 2, 18 in base 10).
        ops: the operators to draw from, a non-empty subset of ``("+", "-")``.

    Attributes:
        vocab: the :class:`~seqgym.vocab.Vocabulary` (``n_actions = base + 5``).
        plus_id, minus_id, equals_id: ids of ``"+"``, ``"-"``, ``"="``.
        prompt_tokens: ``2 * n_digits + 2``, the length of every prompt.
        max_sequence_length: longest prompt + answer + ``eos``.
        name: ``"arithmetic"``.

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.arithmetic import Arithmetic
        >>> src = Arithmetic(base=10, n_digits=2)
        >>> src
        Arithmetic(base=10, n_digits=2, ops=('+', '-'))
        >>> seq = src.encode_problem(7, "+", 35)
        >>> src.vocab.decode(seq), src.prompt_length(seq), src.is_valid(seq)
        ('07+35=42<eos>', 6, True)
        >>> src.is_valid(src.vocab.encode(list("07+35=43")) + [src.vocab.eos_id])
        False
        >>> lp = src.next_token_logprobs(seq[:6])  # after the prompt: a point mass on "4"
        >>> int(np.argmax(lp)), float(lp.max())
        (4, 0.0)
        >>> prompt, completion = src.sample(np.random.default_rng(0))
        >>> len(prompt), src.is_valid(prompt + completion)
        (6, True)
    """

    name = "arithmetic"

    def __init__(self, *, base: int = 10, n_digits: int = 2, ops: Sequence[Operator] = _OPS) -> None:
        for arg, value in (("base", base), ("n_digits", n_digits)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Arithmetic {arg} must be an int, got {type(value).__name__}: {value!r}.")
        if not 2 <= base <= 16:
            raise ValueError(f"Arithmetic base must be in 2..16, got {base}.")
        if n_digits < 1:
            raise ValueError(f"Arithmetic n_digits must be >= 1, got {n_digits}.")
        most = max(d for d in range(1, 64) if int(base) ** d <= _MAX_OPERANDS)  # without computing base**n
        if n_digits > most:
            raise ValueError(
                f"Arithmetic n_digits={n_digits} in base {base} gives operands beyond what int64 sampling holds "
                f"(base**n_digits must be <= 2**62); use n_digits <= {most} in base {base}."
            )
        if isinstance(ops, str):
            raise TypeError(
                f"Arithmetic ops must be a sequence of operators such as ('+', '-'), got {ops!r}."
            )
        ops = tuple(check_option("Arithmetic ops entry", o, _OPS) for o in ops)
        if not ops or len(set(ops)) != len(ops):
            raise ValueError(
                f"Arithmetic ops must be a non-empty subset of {_OPS} without repeats, got {ops!r}."
            )
        self.base = int(base)
        self.n_digits = int(n_digits)
        self.ops: tuple[Operator, ...] = ops
        self.vocab = Vocabulary([*_DIGITS[: self.base], "+", "-", "="])
        self.plus_id = self.base
        self.minus_id = self.base + 1
        self.equals_id = self.base + 2
        self._op_ids = {"+": self.plus_id, "-": self.minus_id}
        self._n = self.base**self.n_digits  # number of operand values
        self.prompt_tokens = 2 * self.n_digits + 2
        largest = 2 * (self._n - 1) if "+" in self.ops else self._n - 1
        self.max_sequence_length = self.prompt_tokens + len(self._digits(largest)) + 1

    def __repr__(self) -> str:
        return f"Arithmetic(base={self.base}, n_digits={self.n_digits}, ops={self.ops!r})"

    # ----------------------------------------------------------------------------------------------------
    def _digits(self, value: int, width: int = 0) -> list[int]:
        """Digit ids of ``value`` (most significant first), zero-padded to ``width``."""
        out = []
        while value > 0:
            value, d = divmod(value, self.base)
            out.append(d)
        out.reverse()
        return [0] * max(width - len(out), 0) + (out or ([] if width else [0]))

    def answer(self, a: int, op: Operator, b: int) -> int:
        """The value of ``a op b``."""
        return a + b if op == "+" else a - b

    def encode_problem(self, a: int, op: Operator, b: int, *, with_answer: bool = True) -> list[int]:
        """Token ids of ``a op b =`` (and, by default, the answer and ``eos``).

        Raises:
            ValueError: if an operand is out of range, ``op`` is not in ``ops``, or ``a < b`` for ``"-"``.
        """
        if op not in self.ops:
            raise ValueError(f"Operator {op!r} is not one of this source's ops {self.ops}.")
        for name, v in (("a", a), ("b", b)):
            if not 0 <= v < self._n:
                raise ValueError(
                    f"Operand {name}={v} is out of range 0..{self._n - 1} for {self.n_digits} digits."
                )
        if op == "-" and a < b:
            raise ValueError(f"Subtraction needs a >= b (non-negative answers), got a={a}, b={b}.")
        ids = [
            *self._digits(a, self.n_digits),
            self._op_ids[op],
            *self._digits(b, self.n_digits),
            self.equals_id,
        ]
        if with_answer:
            ids += [*self._digits(self.answer(a, op, b)), self.vocab.eos_id]
        return ids

    def _prompt_weight(self, ids: Sequence[int]) -> float:
        """Probability that a sampled prompt starts with ``ids`` (``len(ids) <= prompt_tokens``)."""
        n, nd, base = self._n, self.n_digits, self.base
        a_part = ids[:nd]
        if any(not 0 <= t < base for t in a_part):
            return 0.0
        op_id = ids[nd] if len(ids) > nd else None
        b_part = ids[nd + 1 : 2 * nd + 1]
        if any(not 0 <= t < base for t in b_part):
            return 0.0
        if len(ids) == self.prompt_tokens and ids[-1] != self.equals_id:
            return 0.0

        def interval(part: Sequence[int]) -> tuple[int, int]:  # values whose leading digits are ``part``
            value = 0
            for t in part:
                value = value * base + t
            scale = base ** (nd - len(part))
            return value * scale, (value + 1) * scale

        a_lo, a_hi = interval(a_part)
        b_lo, b_hi = interval(b_part)
        weight = 0.0
        for op in self.ops:
            if op_id is not None and op_id != self._op_ids[op]:
                continue
            if op == "+":
                weight += (a_hi - a_lo) * (b_hi - b_lo) / (n * n)
            else:  # pairs with a in [a_lo, a_hi), b in [b_lo, b_hi), b <= a
                count = _sum_clipped(a_lo + 1 - b_lo, a_hi - b_lo, b_hi - b_lo)
                weight += count / (n * (n + 1) // 2)
        return weight / len(self.ops)

    def _target(self, prompt: Sequence[int]) -> list[int] | None:
        """Answer digits + ``eos`` for a complete prompt, or ``None`` if the prompt has probability zero."""
        if len(prompt) != self.prompt_tokens or self._prompt_weight(prompt) <= 0.0:
            return None
        nd = self.n_digits
        a = int("".join(_DIGITS[t] for t in prompt[:nd]), self.base)
        b = int("".join(_DIGITS[t] for t in prompt[nd + 1 : 2 * nd + 1]), self.base)
        op: Operator = "+" if prompt[nd] == self.plus_id else "-"
        return [*self._digits(self.answer(a, op, b)), self.vocab.eos_id]

    # ----------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Draw one problem: ``(prompt "a op b =", answer digits + [eos])``."""
        op = self.ops[int(rng.integers(len(self.ops)))]
        while True:
            a, b = (int(v) for v in rng.integers(self._n, size=2))
            if op == "+" or a >= b:
                break
        ids = self.encode_problem(a, op, b)
        return ids[: self.prompt_tokens], ids[self.prompt_tokens :]

    def prompt_length(self, sequence: Sequence[int]) -> int:
        """Index just after the first ``"="`` (the prompt length, ``2 * n_digits + 2`` for well-formed input).

        Raises:
            ValueError: if ``sequence`` holds no ``"="``.
        """
        ids = [int(t) for t in sequence]
        if self.equals_id not in ids:
            raise ValueError(f"Sequence {self.vocab.decode(ids)!r} holds no '='; it has no complete prompt.")
        return ids.index(self.equals_id) + 1

    def next_token_logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """Exact next-token log-probabilities after ``prefix`` (prompt and answer so far).

        Args:
            prefix: token ids, starting at the beginning of the prompt.

        Returns:
            ``float64`` array of shape ``(n_actions,)``, natural log; ``backspace`` and impossible tokens get
            ``-inf``. After a complete prompt it is ``0`` on the one correct next token. All entries are
            ``-inf`` when ``prefix`` itself has probability zero.

        Raises:
            ValueError: if ``prefix`` holds a backspace, pad or unknown id.
        """
        self.vocab.check_ids(prefix, what="Arithmetic prefix")
        ids = [int(t) for t in prefix]
        out = np.full(self.vocab.n_actions, -np.inf)
        p = self.prompt_tokens
        if len(ids) < p:
            w = self._prompt_weight(ids)
            if w > 0.0:
                for t in range(self.equals_id + 1):
                    wt = self._prompt_weight([*ids, t])
                    if wt > 0.0:
                        out[t] = np.log(wt / w)
            return out
        target = self._target(ids[:p])
        if target is None:
            return out
        done = ids[p:]
        if len(done) < len(target) and done == target[: len(done)]:
            out[target[len(done)]] = 0.0
        return out

    def is_valid(self, sequence: Sequence[int]) -> bool:
        """Whether ``sequence`` is a prompt of the distribution, then its correct answer and ``eos``."""
        ids = [int(t) for t in sequence]
        p = self.prompt_tokens
        if len(ids) <= p or any(not 0 <= t < self.vocab.n_actions for t in ids):
            return False
        return ids[p:] == self._target(ids[:p])
