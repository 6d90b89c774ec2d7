"""``left_pad`` / ``right_pad`` (one definition of each) and the update's batch layout
built from them, against hand-written tensors."""

from __future__ import annotations

import torch

from rubricrl.engines.padding import left_pad, right_pad
from rubricrl.trainer.update import UpdateBatch, _collate


def test_right_pad_ids_and_floats():
    ids, mask = right_pad([[5, 6, 7], [], [8]], 0)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    vals, mask = right_pad([[-0.5], [-1.0, -2.0]], 0.0, dtype=torch.float32)
    assert vals.dtype == torch.float32 and vals.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert mask.tolist() == [[1, 0], [1, 1]]
    ids, mask = left_pad([[5, 6, 7], [8]], 9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_update_batch_layout_left_prompts_right_responses():
    batch = UpdateBatch()
    batch.add([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], 1.0)
    batch.add([6, 7, 8], [9], [-0.4], -1.0)
    batch.add([4], [2, 2], [-0.5, -0.6], 0.5)
    mb = _collate(batch, [0, 1], pad_id=0, device=torch.device("cpu"))
    assert mb["prompt_width"] == 3
    assert mb["input_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 0]]
    assert mb["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert mb["targets"].tolist() == [[3, 4, 5], [9, 0, 0]]
    assert mb["mask"].dtype == torch.float32 and mb["mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(mb["old_logprobs"], torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0]]))
    assert mb["advantages"].tolist() == [1.0, -1.0]
