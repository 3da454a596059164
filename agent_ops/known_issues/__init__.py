"""The known-issue catalog (entries as YAML data beside their loader) and diagnosis of a log against it."""
