"""The event-log pipeline: readers, validation, sessionization, splits, datasets."""
