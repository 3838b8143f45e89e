"""Explanation: decoding indices into meaning, relations between diverged values, causes."""
