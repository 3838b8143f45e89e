"""Fixtures for custom_impl tests: the native ChatML file, its DatasetItems, a small batch."""

from __future__ import annotations

import dataclasses

import pytest

from custom_impl import stages as S


@pytest.fixture(scope="session")
def native_path(records, tmp_path_factory):
    return S.write_native(records, tmp_path_factory.mktemp("custom_native"))


@pytest.fixture(scope="session")
def items(native_path, ctx):
    return S.dataset(native_path, ctx)


@pytest.fixture()
def with_faults(ctx):
    """ctx with the given faults switched on: with_faults("no-shift", ...)."""
    def make(*names):
        return dataclasses.replace(ctx, faults=frozenset(names))
    return make
