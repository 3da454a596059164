"""Fleets: the boxes one run spans (who they are, how work is placed on them, whose failure came first)."""
