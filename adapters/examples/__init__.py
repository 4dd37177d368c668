"""Runnable example providers: how a department serves its catalog resources with the provider kit."""
