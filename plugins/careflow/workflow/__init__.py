"""The workflow as the builder exports it: models, validation, the published JSON Schema."""
