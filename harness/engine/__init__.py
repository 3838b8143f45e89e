"""The comparison engine: sides (adapters), the stage runner, the diff, tolerances."""
