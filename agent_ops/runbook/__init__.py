"""Runbooks: the schema (pydantic models), YAML loading with FILE:LINE problems, templates and the plan."""
