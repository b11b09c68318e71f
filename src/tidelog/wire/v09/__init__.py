"""Iggy 0.9 (SDK 0.11 crates) VSR framing, sans-IO (``shared/protocol/iggy-0.9-vsr.md``).

- :mod:`.codes`: header commands, operations, command codes, eviction reasons, 0.9 errors.
- :mod:`.header`: the 256-byte request, reply and eviction headers and request_checksum.
- :mod:`.frames`: the per-connection request decoder (and its client-side twin for replies
  and evictions), the one-port generation rule, result sections and the login bodies.
"""
