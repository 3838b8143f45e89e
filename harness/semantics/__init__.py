"""Conventions and projections: what each field means on each side, and which differences are expected."""
