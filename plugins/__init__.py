"""First-party Aurelis plugins."""
