"""Model versions as the node manages them: cards, the intended-use guard, the repository.

- :mod:`node.models.card`: the machine-readable model card (pydantic) and its template.
- :mod:`node.models.guard`: a series checked against a card before inference.
- :mod:`node.models.repository`: models, versions, cards and promotion state on disk.
"""

from node.models.card import CARD_FILE, ModelCard, ModelCardError, card_template, load_card
from node.models.guard import check_intended_use
from node.models.repository import FOLLOW_PROMOTED, ModelRepository, PromotionState

__all__ = [
    "CARD_FILE",
    "FOLLOW_PROMOTED",
    "ModelCard",
    "ModelCardError",
    "ModelRepository",
    "PromotionState",
    "card_template",
    "check_intended_use",
    "load_card",
]
