"""IFD's second pass: each response scored without its prompt, on the very same token ids.

IFD (Li et al. 2023, "From Quantity to Quality") = s(A|Q) / s(A): the mean NLL of the response tokens
with the prompt (the row's ``loss``) over the mean NLL of the same tokens without it. The reading side
lays out each assistant turn (:class:`hardfocus.chat.IfdTurn`: the header or BOS ids it is scored behind,
and the token range of its scored tokens in ``input_ids``); this module carries that layout through
the unit's Arrow table, builds the unconditioned sequences and sums their NLL per row, over turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from hardfocus.chat import IfdTurn

IFD_TURNS_COLUMN = "ifd_turns"  # in the tokenised unit only, never in a part file
IFD_TURNS_TYPE = pa.list_(
    pa.struct([pa.field("prefix", pa.list_(pa.int32())), pa.field("start", pa.int32()), pa.field("stop", pa.int32())])
)

Score = Callable[[list[np.ndarray], list[np.ndarray]], tuple[np.ndarray, np.ndarray]]  # Scorer.score


def ifd_turns_array(turns: Sequence[list[IfdTurn] | None]) -> pa.Array:
    """The ``ifd_turns`` column of a tokenised unit (null for a row that is not scored)."""
    return pa.array(
        [None if row is None else [{"prefix": t.prefix, "start": t.start, "stop": t.stop} for t in row] for row in turns],
        IFD_TURNS_TYPE,
    )


def unconditioned_inputs(
    input_ids: Sequence[Sequence[int]], turns: Sequence[list[dict] | None], rows: Sequence[int]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(sequences, target masks, row of each) of the unconditioned pass over ``rows``: one sequence per turn,
    ``prefix + input_ids[start:stop]``, whose every token after the prefix is a target."""
    sequences, masks, owner = [], [], []
    for i in rows:
        ids = np.asarray(input_ids[i], dtype=np.int32)
        for turn in turns[i] or ():
            prefix = np.asarray(turn["prefix"], dtype=np.int32)
            response = ids[turn["start"] : turn["stop"]]
            sequences.append(np.concatenate([prefix, response]))
            masks.append(np.concatenate([np.zeros(len(prefix), bool), np.ones(len(response), bool)]))
            owner.append(i)
    return sequences, masks, np.asarray(owner, dtype=np.int64)


def unconditioned_nll(
    score: Score, input_ids: Sequence[Sequence[int]], turns: Sequence[list[dict] | None], rows: Sequence[int], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(nll_sum float64, n_tokens int64) of the unconditioned pass per row of a unit of ``n`` rows, summed
    over each row's turns; rows not in ``rows`` get NaN and 0."""
    nll_sum, n_tokens = np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    sequences, masks, owner = unconditioned_inputs(input_ids, turns, rows)
    nll_sum[list(rows)] = 0.0
    if sequences:
        sums, counts = score(sequences, masks)
        np.add.at(nll_sum, owner, sums)
        np.add.at(n_tokens, owner, counts)
    return nll_sum, n_tokens


def ifd_ratio(nll_sum: np.ndarray, n_tokens: np.ndarray, u_nll_sum: np.ndarray, u_n_tokens: np.ndarray) -> np.ndarray:
    """s(A|Q) / s(A): mean NLL with the prompt over mean NLL without it (NaN where either count is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        conditioned = nll_sum / np.where(n_tokens > 0, n_tokens, np.nan)
        unconditioned = u_nll_sum / np.where(u_n_tokens > 0, u_n_tokens, np.nan)
        return conditioned / unconditioned
