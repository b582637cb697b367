"""types: the shared vocabulary means what the modules that use it assume."""

from __future__ import annotations

import typing

import torch

from expertsteer import types


def test_read_positions_are_the_ones_extraction_accepts():
    named, explicit = typing.get_args(types.ReadPosition)
    assert typing.get_args(named) == ("last", "mean")
    assert typing.get_origin(explicit) is list


def test_aliases():
    assert types.Tensor is torch.Tensor
    assert types.LayerPair == tuple[int, int]


def test_one_minimum_per_class_for_data_and_estimators():
    from expertsteer import data, estimators

    assert types.MIN_PER_CLASS == 4
    assert data.MIN_PER_CLASS is types.MIN_PER_CLASS
    assert estimators.MIN_PER_CLASS is types.MIN_PER_CLASS
