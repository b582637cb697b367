"""Vocabulary shared by the modules: plain aliases, no behaviour."""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor
# (expert_layer, target_layer): an intervention pair chosen in step 2.
LayerPair = tuple[int, int]
# Where a hidden state is read in each text: last prompt token, mean over tokens (first excluded),
# or explicit token indices per text.
ReadPosition = Literal["last", "mean"] | list[list[int]]

# Fewest examples per class: below this neither a hold-out split nor a direction means anything.
MIN_PER_CLASS = 4
