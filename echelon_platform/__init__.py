"""echelon-verify's shared kernel: envelope, topics, config, bus, event store, read models, API gateway."""
