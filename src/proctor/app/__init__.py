"""Use cases that wire the core to its ports.

The gateway (submit → route → execute) and the human actions around it live here. Nothing
here imports an adapter; ``bootstrap`` supplies them.
"""
