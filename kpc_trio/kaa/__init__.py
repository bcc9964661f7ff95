"""Pure Kaa conventions: 1/KP topics, 3/ISM subjects, Avro records."""
