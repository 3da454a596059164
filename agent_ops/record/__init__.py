"""What a run leaves behind for every reader: the SQLite journal and the status built from it."""
