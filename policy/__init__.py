"""Who may do what at the hub: the three separated rights, decided by Casbin.

``model.conf`` and ``permissions.csv`` beside this file are the rules a
reviewer reads; ``engine.RightsPolicy`` applies them to the registry's role
assignments; ``rules`` holds the checks that are not a single permission
(which roles may not be held together, which drafts a caller may see).
"""

from policy.engine import HUB_WIDE, Action, Assignment, RightsPolicy, assignments_of
from policy.rules import CONFLICTS, require_compatible_roles, visible_department

__all__ = [
    "CONFLICTS",
    "HUB_WIDE",
    "Action",
    "Assignment",
    "RightsPolicy",
    "assignments_of",
    "require_compatible_roles",
    "visible_department",
]
