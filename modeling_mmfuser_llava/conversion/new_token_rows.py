"""Rows for the tokens the converted tokenizer adds (`<image>`, and `<pad>` where the original had none).

Each new row of `embed_tokens` and `lm_head` is the mean of the existing rows as converted (LLaVA's own choice when
it adds tokens), accumulated in float64 over blocks of rows so that it is deterministic and needs no full-size copy. In
`lm_head` a mean row scores the mean of the other logits, which never exceeds their maximum: greedy decoding never
picks a new token, and the logits of the original vocabulary are unchanged. The `<image>` embedding is never looked
up (image features replace it).
"""

import torch

ROWS_PER_BLOCK = 1024


def mean_row(weight: torch.Tensor) -> torch.Tensor:
    """The float64 mean of `weight`'s rows, summed block by block (bounded extra memory, fixed summation order)."""
    total = torch.zeros(weight.shape[1:], dtype=torch.float64)
    for start in range(0, weight.shape[0], ROWS_PER_BLOCK):
        total += weight[start : start + ROWS_PER_BLOCK].to(torch.float64).sum(0)
    return total / weight.shape[0]


def fill_mean_rows(matrix: torch.Tensor, existing_rows: int) -> None:
    """Set every row of `matrix` after the first `existing_rows` to the mean of those rows."""
    matrix[existing_rows:] = mean_row(matrix[:existing_rows]).to(matrix.dtype)


__all__ = ["fill_mean_rows", "mean_row"]
