"""The protocol between coordinator and institutions: every message as a typed, validated dataclass."""
