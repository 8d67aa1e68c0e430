"""Pure domain logic: event payloads and topics, the run lifecycle, projections, certificate math. No I/O."""
