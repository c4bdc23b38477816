"""``eosfed distill``, ``eosfed evaluate`` and ``eosfed prune``: fusion on saved specialists, without Flower."""
