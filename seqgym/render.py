"""Draw an episode of a sequence environment as an RGB image (``render_mode="rgb_array"``), in numpy only.

A frame shows one cell per position of the observation (``max_length`` cells, wrapped into rows):

- the **prompt** on grey cells (it can never be deleted);
- the **generated** tokens, the part ``<backspace>`` can delete, on blue cells;
- ``eos`` (drawn as a filled square) on a green cell;
- the tokens deleted by the **last backspaces** (the trailing run of backspace actions of the history) on red
  cells, struck through, at the positions they were deleted from;
- above the cells, a status line: ``step s/max_steps  len n/max_length  bksp k`` (``k`` backspaces taken so far,
  no-ops included) and, once the episode is over, ``EOS`` (terminated) or ``LIMIT`` (truncated).

Token strings are drawn with a built-in 5x7 bitmap font (printable ASCII; a space shows as ``·``, a line break
as ``¶``, other characters as ``?``), scaled by 2 and cut to six characters (the cut marked by ``…``). The frame
size depends only on the vocabulary and ``max_length``, never on the episode, so frames of one environment can
be stacked into a video; both sides are multiples of 16 (what video encoders expect).

Example:
    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["(", ")"])                 # eos=2, backspace=3
    >>> draw = FrameRenderer(v, max_length=6, max_steps=18)
    >>> frame = draw([], [0, 1, 3])               # "(", ")", backspace: ")" shows struck through
    >>> frame.shape, frame.dtype
    ((80, 448, 3), dtype('uint8'))
    >>> bool((frame == DELETED).all(axis=-1).any())
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqgym.dynamics import replay
from seqgym.vocab import Vocabulary

__all__ = [
    "BACKGROUND",
    "DELETED",
    "EMPTY",
    "EOS",
    "GENERATED",
    "PROMPT",
    "FrameRenderer",
]

# Cell colours (RGB, uint8).
BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)
EMPTY = np.array([238, 238, 238], dtype=np.uint8)
"""An unused position."""
PROMPT = np.array([200, 200, 200], dtype=np.uint8)
"""A prompt token (never deletable)."""
GENERATED = np.array([170, 210, 255], dtype=np.uint8)
"""A generated token (deletable by ``<backspace>``)."""
EOS = np.array([160, 225, 160], dtype=np.uint8)
"""The ``eos`` token."""
DELETED = np.array([255, 190, 190], dtype=np.uint8)
"""A token deleted by the last backspaces."""
_INK = np.array([20, 20, 20], dtype=np.uint8)
_STRIKE = np.array([200, 0, 0], dtype=np.uint8)

# 5x7 font, printable ASCII 32..126: five column bytes per glyph, bit 0 = top row.
_ASCII_FONT = (
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000 "
    "001c224100 0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402 "
    "3e5149453e 00427f4000 4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503 "
    "3649494936 064949291e 0036360000 0056360000 0814224100 1414141414 0041221408 0201510906 "
    "324979413e 7e1111117e 7f49494936 3e41414122 7f4141221c 7f49494941 7f09090101 3e41415132 "
    "7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f0204027f 7f0408107f 3e4141413e "
    "7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f 1f2040201f 7f2018207f "
    "6314081463 0304780403 6151494543 007f414100 0204081020 0041417f00 0402010204 4040404040 "
    "0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 081454543c "
    "7f08040478 00447d4000 2040443d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438 "
    "7c14141408 081414187c 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c "
    "4428102844 0c5050503c 4464544c44 0008364100 00007f0000 0041360800 0804081008"
)
_EXTRA_GLYPHS = {
    "·": "0000080000",  # a visible space
    "¶": "067f017f01",  # a line break
    "…": "4000400040",  # a cut label
    "■": "1c3e3e3e1c",  # eos
}
_GLYPH_W, _GLYPH_H = 5, 7
_SCALE = 2  # screen pixels per font pixel
_ADVANCE = (_GLYPH_W + 1) * _SCALE  # horizontal pixels per character
_TEXT_H = _GLYPH_H * _SCALE
_MAX_CHARS = 6  # characters per cell at most
_PAD_X, _PAD_Y, _GAP, _MARGIN, _HEADER_GAP = 4, 5, 2, 8, 4
_MAX_WIDTH = 960  # cells wrap into rows below this width (pixels)


def _glyphs() -> dict[str, np.ndarray]:
    """Character -> ``(7 * _SCALE, 5 * _SCALE)`` bool bitmap."""
    codes = _ASCII_FONT.split()
    table = {chr(32 + i): code for i, code in enumerate(codes)}
    table.update(_EXTRA_GLYPHS)
    out: dict[str, np.ndarray] = {}
    for ch, code in table.items():
        cols = np.frombuffer(bytes.fromhex(code), dtype=np.uint8)  # (5,)
        bits = (cols[None, :] >> np.arange(_GLYPH_H)[:, None]) & 1  # (7, 5), row 0 = top
        out[ch] = np.kron(bits.astype(bool), np.ones((_SCALE, _SCALE), dtype=bool))
    return out


_GLYPHS = _glyphs()


def _label(token: str, n_chars: int) -> str:
    """The characters drawn for a token: visible whitespace, ``?`` for what the font lacks, cut to ``n_chars``."""
    shown = "".join(
        "·" if c == " " else "¶" if c == "\n" else c if c in _GLYPHS and c not in "·¶…■" else "?"
        for c in token
    )
    if len(shown) > n_chars:
        shown = shown[: n_chars - 1] + "…"
    return shown or "?"


def _text_bitmap(text: str) -> np.ndarray:
    """``(7 * _SCALE, len(text) * _ADVANCE)`` bool bitmap of a line of text (characters the font has)."""
    out = np.zeros((_TEXT_H, max(len(text), 1) * _ADVANCE), dtype=bool)
    for i, ch in enumerate(text):
        g = _GLYPHS.get(ch, _GLYPHS["?"])
        out[:, i * _ADVANCE : i * _ADVANCE + g.shape[1]] = g
    return out


def _round_up(x: int, k: int = 16) -> int:
    return -(-x // k) * k


class FrameRenderer:
    """Draws frames of one environment's episodes; the frame size is fixed by ``vocab`` and ``max_length``.

    Args:
        vocab: the environment's vocabulary (labels of the cells).
        max_length: number of positions (cells) of a frame, the observation length.
        max_steps: the step limit, shown in the status line and used to tell truncation.

    Attributes:
        shape: ``(H, W, 3)`` of every frame.
    """

    def __init__(self, vocab: Vocabulary, *, max_length: int, max_steps: int) -> None:
        self.vocab = vocab
        self.max_length = int(max_length)
        self.max_steps = int(max_steps)
        longest = max(len(_label(t, _MAX_CHARS)) for t in vocab.tokens[: vocab.n_tokens])
        self._chars = max(1, min(longest, _MAX_CHARS))
        self._cell_w = self._chars * _ADVANCE + 2 * _PAD_X
        self._cell_h = _TEXT_H + 2 * _PAD_Y
        self._status_chars = len(self._status(max_steps, max_length, max_steps, "LIMIT"))
        content_w = max(
            min(self.max_length, max(1, (_MAX_WIDTH - 2 * _MARGIN) // (self._cell_w + _GAP))), 1
        ) * (self._cell_w + _GAP)
        self._cols = content_w // (self._cell_w + _GAP)
        rows = -(-self.max_length // self._cols)
        width = max(content_w - _GAP, self._status_chars * _ADVANCE) + 2 * _MARGIN
        height = 2 * _MARGIN + self._cell_h + _HEADER_GAP + rows * (self._cell_h + _GAP) - _GAP
        self.shape = (_round_up(height), _round_up(width), 3)
        self._labels: dict[int, np.ndarray] = {}  # token id -> bitmap, filled lazily

    def __call__(self, prompt: Sequence[int], actions: Sequence[int]) -> np.ndarray:
        """The frame after ``actions`` from ``prompt``.

        Args:
            prompt: the episode's prompt ids.
            actions: every action taken since the reset, in order.

        Returns:
            ``(H, W, 3)`` uint8 image (:attr:`shape`).
        """
        v = self.vocab
        visible = replay(prompt, actions, v)
        k = 0
        while k < len(actions) and actions[len(actions) - 1 - k] == v.backspace_id:
            k += 1
        deleted = replay(prompt, actions[: len(actions) - k], v)[len(visible) :] if k else []
        terminated = bool(visible) and visible[-1] == v.eos_id and len(visible) > len(prompt)
        truncated = not terminated and (len(visible) >= self.max_length or len(actions) >= self.max_steps)
        end = "EOS" if terminated else "LIMIT" if truncated else ""

        img = np.empty(self.shape, dtype=np.uint8)
        img[:] = BACKGROUND
        status = self._status(len(actions), len(visible), actions.count(v.backspace_id), end)
        self._blit(img, _text_bitmap(status), _MARGIN, _MARGIN + _PAD_Y, _INK)
        for pos in range(self.max_length):
            x, y = self._cell_origin(pos)
            if pos < len(visible):
                tok = visible[pos]
                fill = PROMPT if pos < len(prompt) else EOS if tok == v.eos_id else GENERATED
            elif pos - len(visible) < len(deleted):
                tok, fill = deleted[pos - len(visible)], DELETED
            else:
                tok, fill = -1, EMPTY
            img[y : y + self._cell_h, x : x + self._cell_w] = fill
            if tok < 0:
                continue
            self._blit(img, self._token_bitmap(tok), x + _PAD_X, y + _PAD_Y, _INK)
            if fill is DELETED:
                mid = y + self._cell_h // 2
                img[mid - 1 : mid + 1, x + 1 : x + self._cell_w - 1] = _STRIKE
        return img

    # ----------------------------------------------------------------------------------------------------
    def _status(self, steps: int, length: int, n_backspaces: int, end: str) -> str:
        return f"step {steps}/{self.max_steps}  len {length}/{self.max_length}  bksp {n_backspaces}  {end}".rstrip()

    def _cell_origin(self, pos: int) -> tuple[int, int]:
        row, col = divmod(pos, self._cols)
        x = _MARGIN + col * (self._cell_w + _GAP)
        y = _MARGIN + self._cell_h + _HEADER_GAP + row * (self._cell_h + _GAP)
        return x, y

    def _token_bitmap(self, token: int) -> np.ndarray:
        bitmap = self._labels.get(token)
        if bitmap is None:
            text = "■" if token == self.vocab.eos_id else _label(self.vocab.tokens[token], self._chars)
            bitmap = self._labels[token] = _text_bitmap(text)
        return bitmap

    @staticmethod
    def _blit(img: np.ndarray, bitmap: np.ndarray, x: int, y: int, color: np.ndarray) -> None:
        h = min(bitmap.shape[0], img.shape[0] - y)
        w = min(bitmap.shape[1], img.shape[1] - x)
        region = img[y : y + h, x : x + w]
        region[bitmap[:h, :w]] = color
