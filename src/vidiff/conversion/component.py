"""The result of converting one official sub-model: what to build, its weights, and an account of every source key."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ConvertedComponent:
    """One converted component.

    ``consumed`` and ``ignored`` together must cover every source key, so that nothing in a checkpoint is dropped
    silently: a key is either used or listed with the reason why it is not.
    """

    config: dict  # JSON-serialisable config to build our module
    state_dict: dict[str, torch.Tensor]  # our key names
    consumed: set[str] = field(default_factory=set)  # source keys used
    ignored: dict[str, str] = field(default_factory=dict)  # source key -> why it is deliberately not used

    def accounted_keys(self) -> set[str]:
        """All source keys this conversion looked at (used or deliberately ignored)."""
        return set(self.consumed) | set(self.ignored)
