"""Who may do what at the hub.

For now the rules of the foundation: operators register members, an owner
department's stewards change its catalog entries, and every registered
principal may read the registry and the published catalog. The three
separated rights (ownership, use, share management) with Casbin build on
this package.
"""

from policy.rules import require_compatible_roles, require_operator, require_steward_of, visible_department

__all__ = ["require_compatible_roles", "require_operator", "require_steward_of", "visible_department"]
